//! Clinical efficacy over multi-label findings (14 CheXbert classes): per-label, macro, micro
//! and example-based precision/recall/F1, "positive" meaning the label value equals `pos_label`
//! (CheXbert codes: 0 blank, 1 positive, 2 negative, 3 uncertain).
//!
//! Two conventions: [`Convention::DiaLlama`] reproduces Dia-LLaMA's `metrics_clinical.py`
//! (`tp / (tp + fp + 1e-6)` and so on); [`Convention::Sklearn`] equals
//! `precision_recall_fscore_support(zero_division=0)` with `average=None/"macro"/"micro"/"samples"`.

use super::classification::safe_div;
use super::numpy_mean;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convention {
    DiaLlama,
    Sklearn,
}

#[derive(Clone, Debug, Default)]
pub struct MultilabelScores {
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    pub support: Vec<u64>,
    pub precision_macro: f64,
    pub recall_macro: f64,
    pub f1_macro: f64,
    pub precision_micro: f64,
    pub recall_micro: f64,
    pub f1_micro: f64,
    pub precision_example: f64,
    pub recall_example: f64,
    pub f1_example: f64,
}

const EPS: f64 = 1e-6;

fn prf(tp: f64, fp: f64, fneg: f64, conv: Convention) -> (f64, f64, f64) {
    match conv {
        Convention::DiaLlama => (
            tp / (tp + fp + EPS),
            tp / (tp + fneg + EPS),
            tp / (tp + 0.5 * (fp + fneg) + EPS),
        ),
        Convention::Sklearn => (
            safe_div(tp, tp + fp),
            safe_div(tp, tp + fneg),
            safe_div(2.0 * tp, 2.0 * tp + fp + fneg),
        ),
    }
}

/// `y_true`, `y_pred`: row-major `[n, labels]` label codes.
pub fn multilabel_scores(
    y_true: &[i64],
    y_pred: &[i64],
    n_labels: usize,
    pos_label: i64,
    conv: Convention,
) -> Result<MultilabelScores> {
    if y_true.len() != y_pred.len() {
        return Err(Error::shape(format!(
            "y_pred: expected the shape of y_true ({} values), got {} values",
            y_true.len(),
            y_pred.len()
        )));
    }
    if n_labels == 0 || y_true.is_empty() {
        return Err(Error::shape(
            "y_true: expected at least one sample and one label, got an empty array",
        ));
    }
    let n = y_true.len() / n_labels;
    let (mut tp, mut fp, mut fneg) = (
        vec![0u64; n_labels],
        vec![0u64; n_labels],
        vec![0u64; n_labels],
    );
    let (mut pe, mut re, mut fe) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for s in 0..n {
        let (mut etp, mut efp, mut efn) = (0u64, 0u64, 0u64);
        for l in 0..n_labels {
            let t = y_true[s * n_labels + l] == pos_label;
            let p = y_pred[s * n_labels + l] == pos_label;
            match (t, p) {
                (true, true) => {
                    tp[l] += 1;
                    etp += 1
                }
                (false, true) => {
                    fp[l] += 1;
                    efp += 1
                }
                (true, false) => {
                    fneg[l] += 1;
                    efn += 1
                }
                _ => {}
            }
        }
        let (p, r, f) = prf(etp as f64, efp as f64, efn as f64, conv);
        pe.push(p);
        re.push(r);
        fe.push(f);
    }
    let mut out = MultilabelScores {
        support: (0..n_labels).map(|l| tp[l] + fneg[l]).collect(),
        ..Default::default()
    };
    for l in 0..n_labels {
        let (p, r, f) = prf(tp[l] as f64, fp[l] as f64, fneg[l] as f64, conv);
        out.precision.push(p);
        out.recall.push(r);
        out.f1.push(f);
    }
    out.precision_macro = numpy_mean(&out.precision);
    out.recall_macro = numpy_mean(&out.recall);
    out.f1_macro = numpy_mean(&out.f1);
    let (t, p, f) = (
        tp.iter().sum::<u64>() as f64,
        fp.iter().sum::<u64>() as f64,
        fneg.iter().sum::<u64>() as f64,
    );
    (out.precision_micro, out.recall_micro, out.f1_micro) = prf(t, p, f, conv);
    out.precision_example = numpy_mean(&pe);
    out.recall_example = numpy_mean(&re);
    out.f1_example = numpy_mean(&fe);
    Ok(out)
}
