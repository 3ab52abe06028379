//! The tensor bridge between Python and the Rust core.
//!
//! * `torch.Tensor` <-> `tch::Tensor`: zero-copy. [`tensor`] takes a new reference to the same
//!   `at::Tensor` (same storage, same autograd metadata), so a Rust op on a Python tensor builds the
//!   autograd graph Python sees, and [`to_py`] hands a Rust result back as a `torch.Tensor` with its
//!   `grad_fn`. Any device and dtype libtorch has (CPU, CUDA; float32/64, bfloat16, float16, ints).
//! * numpy <-> ndarray: [`array_view`] borrows a numpy array's buffer (no copy, any strides);
//!   [`array_to_py`] moves an `ndarray::Array` into numpy without copying (`torch.from_numpy`
//!   then shares that buffer with a tensor).
//!
//! `torch` must have been imported before any of these run (`voxlm/__init__.py` does that).

use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;
use pyo3::types::PyDictMethods;
use tch::python::CPyObject;
use tch::Tensor;

use crate::error::Error;

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "<unknown>".into())
}

/// Borrow a `torch.Tensor` as a `tch::Tensor` (a new reference to the same tensor, no copy).
/// Anything else is a `VoxlmTypeError` naming the argument.
pub fn tensor(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Tensor> {
    // SAFETY: `obj` is a live Python object for the duration of the call (we hold the GIL and a
    // reference); `pyobject_unpack` checks that it is a THPVariable before reading it.
    let unpacked = unsafe { Tensor::pyobject_unpack(obj.as_ptr() as *mut CPyObject) };
    match unpacked {
        Ok(Some(t)) => {
            // voxlm computes on CPU and CUDA; tch cannot even name other devices (meta, xpu).
            let dev = obj.getattr("device")?.getattr("type")?;
            let dev: String = dev.extract()?;
            if dev != "cpu" && dev != "cuda" {
                return Err(Error::device(format!(
                    "{name}: voxlm computes on cpu and cuda tensors, got a tensor on {dev}"
                ))
                .into());
            }
            Ok(t)
        }
        Ok(None) => Err(Error::Type(format!(
            "{name}: expected a torch.Tensor, got {}",
            type_name(obj)
        ))
        .into()),
        Err(e) => Err(Error::from(e).into()),
    }
}

/// Like [`tensor`], for an argument that may be `None`.
pub fn opt_tensor(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<Tensor>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => tensor(o, name).map(Some),
    }
}

/// Borrow every tensor of a `{name: torch.Tensor}` dict (parameters bound by reference).
pub fn tensor_dict(
    params: &Bound<'_, pyo3::types::PyDict>,
) -> PyResult<std::collections::HashMap<String, Tensor>> {
    let mut w = std::collections::HashMap::with_capacity(params.len());
    for (k, v) in params.iter() {
        let name: String = k.extract()?;
        let t = tensor(&v, &name)?;
        w.insert(name, t);
    }
    Ok(w)
}

/// Hand a Rust tensor to Python as a `torch.Tensor` (no copy; autograd history kept).
pub fn to_py<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
    let ptr = t.pyobject_wrap().map_err(Error::from)?;
    // SAFETY: THPVariable_Wrap returns a new (owned) reference, or NULL with a Python error set.
    unsafe { Bound::from_owned_ptr_or_err(py, ptr as *mut pyo3::ffi::PyObject) }
}

/// Borrow a numpy array of element type `T` (read-only, no copy). A wrong dtype or a
/// non-array is a voxlm error naming the argument.
pub fn array_view<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    match obj.cast::<PyArrayDyn<T>>() {
        Ok(a) => Ok(a.readonly()),
        Err(_) => {
            if let Ok(dt) = obj.getattr("dtype") {
                Err(Error::dtype(format!(
                    "{name}: expected a numpy array of dtype {}, got dtype {}",
                    std::any::type_name::<T>(),
                    dt.str().map(|s| s.to_string()).unwrap_or_default()
                ))
                .into())
            } else {
                Err(Error::Type(format!(
                    "{name}: expected a numpy array, got {}",
                    type_name(obj)
                ))
                .into())
            }
        }
    }
}

/// Move an `ndarray::Array` into numpy without copying its buffer.
pub fn array_to_py<'py, T: Element, D: ndarray::Dimension>(
    py: Python<'py>,
    a: ndarray::Array<T, D>,
) -> Bound<'py, PyArrayDyn<T>> {
    numpy::PyArray::from_owned_array(py, a.into_dyn())
}
