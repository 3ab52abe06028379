//! `voxlm._core` tensor ops: thin argument unpacking around `crate::ops`, GIL released.

use pyo3::prelude::*;
use tch::Tensor;

use crate::bridge;
use crate::error::Error;
use crate::ops::lora::{self, LoraLinear, LoraWeights};

fn lora_pair(
    a: Option<Tensor>,
    b: Option<Tensor>,
    scaling: f64,
    dropout: f64,
) -> PyResult<Option<LoraWeights>> {
    match (a, b) {
        (Some(a), Some(b)) => Ok(Some(LoraWeights {
            a,
            b,
            scaling,
            dropout,
        })),
        (None, None) => Ok(None),
        _ => Err(Error::config("lora_a and lora_b: pass both or neither").into()),
    }
}

/// `x W^T + b + scaling * dropout(x) A^T B^T`; see `voxlm.ops.lora_linear`.
#[pyfunction]
#[pyo3(signature = (x, weight, bias=None, lora_a=None, lora_b=None, scaling=1.0, dropout=0.0, training=false))]
#[allow(clippy::too_many_arguments)]
pub fn lora_linear<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    lora_a: Option<&Bound<'py, PyAny>>,
    lora_b: Option<&Bound<'py, PyAny>>,
    scaling: f64,
    dropout: f64,
    training: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let x = bridge::tensor(x, "x")?;
    let w = bridge::tensor(weight, "weight")?;
    let b = bridge::opt_tensor(bias, "bias")?;
    let pair = lora_pair(
        bridge::opt_tensor(lora_a, "lora_a")?,
        bridge::opt_tensor(lora_b, "lora_b")?,
        scaling,
        dropout,
    )?;
    let y = py.detach(move || lora::lora_linear(&x, &w, b.as_ref(), pair.as_ref(), training))?;
    bridge::to_py(py, &y)
}

/// A LoRA linear whose tensors are bound by reference to Python-owned `nn.Parameter`s.
/// Parameter updates (optimizer steps, `load_state_dict`, `.to(dtype)`) are seen by the next
/// forward without re-binding; call `bind` again after replacing a Parameter object.
#[pyclass(module = "voxlm._core", name = "LoraLinearCore")]
pub struct PyLoraLinear {
    inner: crate::py::Core<LoraLinear>,
}

#[pymethods]
impl PyLoraLinear {
    #[new]
    #[pyo3(signature = (weight, bias=None, lora_a=None, lora_b=None, scaling=1.0, dropout=0.0))]
    fn new(
        weight: &Bound<'_, PyAny>,
        bias: Option<&Bound<'_, PyAny>>,
        lora_a: Option<&Bound<'_, PyAny>>,
        lora_b: Option<&Bound<'_, PyAny>>,
        scaling: f64,
        dropout: f64,
    ) -> PyResult<Self> {
        let layer = build(weight, bias, lora_a, lora_b, scaling, dropout)?;
        Ok(PyLoraLinear {
            inner: crate::py::Core::new(layer),
        })
    }

    /// Re-bind to (possibly new) parameter tensors; shapes are checked again.
    #[pyo3(signature = (weight, bias=None, lora_a=None, lora_b=None, scaling=1.0, dropout=0.0))]
    fn bind(
        &self,
        weight: &Bound<'_, PyAny>,
        bias: Option<&Bound<'_, PyAny>>,
        lora_a: Option<&Bound<'_, PyAny>>,
        lora_b: Option<&Bound<'_, PyAny>>,
        scaling: f64,
        dropout: f64,
    ) -> PyResult<()> {
        let layer = build(weight, bias, lora_a, lora_b, scaling, dropout)?;
        *self.lock()? = layer;
        Ok(())
    }

    /// `x [..., in_features] -> [..., out_features]`.
    #[pyo3(signature = (x, training=false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        training: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let x = bridge::tensor(x, "x")?;
        let inner = &self.inner;
        let y = py.detach(move || {
            let layer = inner.lock("LoraLinearCore")?;
            layer.forward(&x, training)
        })?;
        bridge::to_py(py, &y)
    }
}

impl PyLoraLinear {
    fn lock(&self) -> PyResult<crate::py::CoreGuard<'_, LoraLinear>> {
        self.inner.lock("LoraLinearCore").map_err(Into::into)
    }
}

fn build(
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    lora_a: Option<&Bound<'_, PyAny>>,
    lora_b: Option<&Bound<'_, PyAny>>,
    scaling: f64,
    dropout: f64,
) -> PyResult<LoraLinear> {
    let pair = lora_pair(
        bridge::opt_tensor(lora_a, "lora_a")?,
        bridge::opt_tensor(lora_b, "lora_b")?,
        scaling,
        dropout,
    )?;
    Ok(LoraLinear::new(
        bridge::tensor(weight, "weight")?,
        bridge::opt_tensor(bias, "bias")?,
        pair,
    )?)
}
