//! `voxlm._core` losses: autograd through libtorch, GIL released.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::bridge;
use crate::losses::{self, PrototypeBank, Reduce};

#[pyfunction]
#[pyo3(signature = (logits, target, alpha=None, gamma=2.0, reduction="mean"))]
pub fn focal_loss<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    alpha: Option<&Bound<'py, PyAny>>,
    gamma: f64,
    reduction: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let (l, t, a) = (
        bridge::tensor(logits, "logits")?,
        bridge::tensor(target, "target")?,
        bridge::opt_tensor(alpha, "alpha")?,
    );
    let r = Reduce::parse(reduction)?;
    let y = py.detach(move || losses::focal_loss(&l, &t, a.as_ref(), gamma, r))?;
    bridge::to_py(py, &y)
}

#[pyfunction]
#[pyo3(signature = (student, teacher, temperature=1.0))]
pub fn kl_distill<'py>(
    py: Python<'py>,
    student: &Bound<'py, PyAny>,
    teacher: &Bound<'py, PyAny>,
    temperature: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let (s, t) = (
        bridge::tensor(student, "student")?,
        bridge::tensor(teacher, "teacher")?,
    );
    let y = py.detach(move || losses::kl_distill(&s, &t, temperature))?;
    bridge::to_py(py, &y)
}

#[pyfunction]
#[pyo3(signature = (logits, labels, ignore_index=-100))]
pub fn lm_loss<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    ignore_index: i64,
) -> PyResult<Bound<'py, PyAny>> {
    let (l, t) = (
        bridge::tensor(logits, "logits")?,
        bridge::tensor(labels, "labels")?,
    );
    let y = py.detach(move || losses::lm_loss(&l, &t, ignore_index))?;
    bridge::to_py(py, &y)
}

struct Bank {
    w: tch::Tensor,
    b: Option<tch::Tensor>,
    pos: tch::Tensor,
    neg: tch::Tensor,
    temp: tch::Tensor,
}

impl Bank {
    fn new(
        proj_weight: &Bound<'_, PyAny>,
        proj_bias: Option<&Bound<'_, PyAny>>,
        pos: &Bound<'_, PyAny>,
        neg: &Bound<'_, PyAny>,
        temp: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Ok(Bank {
            w: bridge::tensor(proj_weight, "proj.weight")?,
            b: bridge::opt_tensor(proj_bias, "proj.bias")?,
            pos: bridge::tensor(pos, "pos_sample_memory")?,
            neg: bridge::tensor(neg, "neg_sample_memory")?,
            temp: bridge::tensor(temp, "temp")?,
        })
    }
    fn view(&self) -> PrototypeBank<'_> {
        PrototypeBank {
            proj_weight: &self.w,
            proj_bias: self.b.as_ref(),
            pos: &self.pos,
            neg: &self.neg,
            temp: &self.temp,
        }
    }
}

/// `(s_pos [B, L], s_neg [B, L])`: cosine over the temperature to each label's prototypes.
#[pyfunction]
#[pyo3(signature = (features, proj_weight, proj_bias, pos, neg, temp))]
pub fn prototype_similarities<'py>(
    py: Python<'py>,
    features: &Bound<'py, PyAny>,
    proj_weight: &Bound<'py, PyAny>,
    proj_bias: Option<&Bound<'py, PyAny>>,
    pos: &Bound<'py, PyAny>,
    neg: &Bound<'py, PyAny>,
    temp: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    let f = bridge::tensor(features, "features")?;
    let bank = Bank::new(proj_weight, proj_bias, pos, neg, temp)?;
    let (sp, sn) = py.detach(move || bank.view().similarities(&f))?;
    PyTuple::new(py, [bridge::to_py(py, &sp)?, bridge::to_py(py, &sn)?])
}

/// Dia-LLaMA's prototype InfoNCE loss (mean over `B * L`).
#[pyfunction]
#[pyo3(signature = (features, labels, proj_weight, proj_bias, pos, neg, temp))]
#[allow(clippy::too_many_arguments)]
pub fn prototype_loss<'py>(
    py: Python<'py>,
    features: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    proj_weight: &Bound<'py, PyAny>,
    proj_bias: Option<&Bound<'py, PyAny>>,
    pos: &Bound<'py, PyAny>,
    neg: &Bound<'py, PyAny>,
    temp: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let f = bridge::tensor(features, "features")?;
    let y = bridge::tensor(labels, "labels")?;
    let bank = Bank::new(proj_weight, proj_bias, pos, neg, temp)?;
    let loss = py.detach(move || losses::prototype_loss(&bank.view(), &f, &y))?;
    bridge::to_py(py, &loss)
}
