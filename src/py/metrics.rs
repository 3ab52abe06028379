//! `voxlm._core` metrics: pure Rust, GIL released.

use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::bridge;
use crate::error::Error;
use crate::metrics::{self, classification, multilabel};

/// pycocoevalcap's BLEU-1..4, ROUGE-L and CIDEr-D: `(corpus dict, per-sample dict of arrays)`;
/// with `jar`, also METEOR 1.5 (as [`meteor_score`]), computed at the same time.
#[pyfunction]
#[pyo3(signature = (references, hypotheses, jar=None, paraphrase=None))]
pub fn report_scores<'py>(
    py: Python<'py>,
    references: Vec<Vec<String>>,
    hypotheses: Vec<String>,
    jar: Option<std::path::PathBuf>,
    paraphrase: Option<std::path::PathBuf>,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
    let (s, met) = crate::py::par(py, move || -> crate::error::Result<_> {
        match jar {
            None => Ok((metrics::report_scores(&references, &hypotheses)?, None)),
            Some(jar) => {
                metrics::check_corpus(&references, &hypotheses)?;
                let res = meteor_resources(jar, paraphrase)?;
                let (s, m) = metrics::report_scores_and_meteor(&references, &hypotheses, &res)?;
                Ok((s, Some(m)))
            }
        }
    })?;
    let corpus = PyDict::new(py);
    let per = PyDict::new(py);
    for k in 0..4 {
        let name = format!("BLEU-{}", k + 1);
        corpus.set_item(&name, s.bleu[k])?;
        let col: Vec<f64> = s.bleu_per_sample.iter().map(|b| b[k]).collect();
        per.set_item(&name, bridge::array_to_py(py, ndarray::Array1::from(col)))?;
    }
    corpus.set_item("ROUGE-L", s.rouge_l)?;
    per.set_item(
        "ROUGE-L",
        bridge::array_to_py(py, ndarray::Array1::from(s.rouge_l_per_sample)),
    )?;
    corpus.set_item("CIDEr", s.cider_d)?;
    per.set_item(
        "CIDEr",
        bridge::array_to_py(py, ndarray::Array1::from(s.cider_d_per_sample)),
    )?;
    if let Some((score, per_sample)) = met {
        corpus.set_item("METEOR", score)?;
        per.set_item("METEOR", f64_array(py, per_sample))?;
    }
    Ok((corpus, per))
}

fn int_vec(obj: &Bound<'_, PyAny>, name: &str, ndim: usize) -> PyResult<(Vec<i64>, Vec<usize>)> {
    let a = bridge::array_view::<i64>(obj, name)?;
    if a.ndim() != ndim {
        return Err(Error::shape(format!(
            "{name}: expected a {ndim}-d array, got shape {:?}",
            a.shape()
        ))
        .into());
    }
    let shape = a.shape().to_vec();
    Ok((a.as_array().iter().copied().collect(), shape))
}

fn f64_array<'py>(py: Python<'py>, v: Vec<f64>) -> Bound<'py, PyAny> {
    bridge::array_to_py(py, ndarray::Array1::from(v)).into_any()
}

/// Accuracy, MSE, MAE, per-class and macro P/R/F1, confusion matrix, quadratic kappa.
#[pyfunction]
pub fn classification_scores<'py>(
    py: Python<'py>,
    y_true: &Bound<'py, PyAny>,
    y_pred: &Bound<'py, PyAny>,
    labels: Vec<i64>,
) -> PyResult<Bound<'py, PyDict>> {
    let (t, _) = int_vec(y_true, "y_true", 1)?;
    let (p, _) = int_vec(y_pred, "y_pred", 1)?;
    let s = crate::py::par(py, move || {
        classification::classification_scores(&t, &p, &labels)
    })?;
    let d = PyDict::new(py);
    d.set_item("accuracy", s.accuracy)?;
    d.set_item("mse", s.mse)?;
    d.set_item("mae", s.mae)?;
    d.set_item("precision_macro", s.precision_macro)?;
    d.set_item("recall_macro", s.recall_macro)?;
    d.set_item("f1_macro", s.f1_macro)?;
    d.set_item("quadratic_kappa", s.quadratic_kappa)?;
    d.set_item("precision", f64_array(py, s.precision))?;
    d.set_item("recall", f64_array(py, s.recall))?;
    d.set_item("f1", f64_array(py, s.f1))?;
    d.set_item(
        "support",
        bridge::array_to_py(py, ndarray::Array1::from(s.support)),
    )?;
    let n = s.confusion.len();
    let flat: Vec<u64> = s.confusion.into_iter().flatten().collect();
    let cm =
        ndarray::Array2::from_shape_vec((n, n), flat).map_err(|e| Error::shape(e.to_string()))?;
    d.set_item("confusion_matrix", bridge::array_to_py(py, cm))?;
    Ok(d)
}

/// Clinical efficacy: per-label, macro, micro and example-based P/R/F1.
#[pyfunction]
#[pyo3(signature = (y_true, y_pred, pos_label=1, convention="dia_llama"))]
pub fn multilabel_scores<'py>(
    py: Python<'py>,
    y_true: &Bound<'py, PyAny>,
    y_pred: &Bound<'py, PyAny>,
    pos_label: i64,
    convention: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let conv = match convention {
        "dia_llama" => multilabel::Convention::DiaLlama,
        "sklearn" => multilabel::Convention::Sklearn,
        other => {
            return Err(Error::config(format!(
                "convention: expected 'dia_llama' or 'sklearn', got '{other}'"
            ))
            .into())
        }
    };
    let (t, ts) = int_vec(y_true, "y_true", 2)?;
    let (p, ps) = int_vec(y_pred, "y_pred", 2)?;
    if ts != ps {
        return Err(Error::shape(format!(
            "y_pred: expected shape {ts:?} (as y_true), got {ps:?}"
        ))
        .into());
    }
    let s = crate::py::par(py, move || {
        multilabel::multilabel_scores(&t, &p, ts[1], pos_label, conv)
    })?;
    let d = PyDict::new(py);
    d.set_item("precision", f64_array(py, s.precision))?;
    d.set_item("recall", f64_array(py, s.recall))?;
    d.set_item("f1", f64_array(py, s.f1))?;
    d.set_item(
        "support",
        bridge::array_to_py(py, ndarray::Array1::from(s.support)),
    )?;
    for (k, v) in [
        ("precision_macro", s.precision_macro),
        ("recall_macro", s.recall_macro),
        ("f1_macro", s.f1_macro),
        ("precision_micro", s.precision_micro),
        ("recall_micro", s.recall_micro),
        ("f1_micro", s.f1_micro),
        ("precision_example", s.precision_example),
        ("recall_example", s.recall_example),
        ("f1_example", s.f1_example),
    ] {
        d.set_item(k, v)?;
    }
    Ok(d)
}

fn meteor_resources(
    jar: std::path::PathBuf,
    paraphrase: Option<std::path::PathBuf>,
) -> crate::error::Result<std::sync::Arc<metrics::meteor::Resources>> {
    metrics::meteor::Resources::cached(&jar, paraphrase.as_deref())
}

/// METEOR 1.5 (the jar's `-l en -norm` scorer, in Rust): `(corpus score, per-sample array)`.
#[pyfunction]
#[pyo3(signature = (references, hypotheses, jar, paraphrase=None))]
pub fn meteor_score<'py>(
    py: Python<'py>,
    references: Vec<Vec<String>>,
    hypotheses: Vec<String>,
    jar: std::path::PathBuf,
    paraphrase: Option<std::path::PathBuf>,
) -> PyResult<(f64, Bound<'py, PyAny>)> {
    let (score, per) = crate::py::par(py, move || {
        let res = meteor_resources(jar, paraphrase)?;
        metrics::meteor::meteor(&references, &hypotheses, &res)
    })?;
    Ok((score, f64_array(py, per)))
}

/// Per-sample METEOR statistics as the jar's `SCORE` reply prints them (23 numbers each).
#[pyfunction]
#[pyo3(signature = (references, hypotheses, jar, paraphrase=None))]
pub fn meteor_stats(
    py: Python<'_>,
    references: Vec<Vec<String>>,
    hypotheses: Vec<String>,
    jar: std::path::PathBuf,
    paraphrase: Option<std::path::PathBuf>,
) -> PyResult<Vec<String>> {
    let out = crate::py::par(py, move || -> crate::error::Result<Vec<String>> {
        let res = meteor_resources(jar, paraphrase)?;
        metrics::check_corpus(&references, &hypotheses)?;
        let stats = metrics::meteor::corpus_stats(&references, &hypotheses, &res);
        Ok(stats.iter().map(|s| s.to_jar_string()).collect())
    })?;
    Ok(out)
}
