//! Scoring metrics for ordinal classes such as PI-RADS 1..5, with scikit-learn's semantics:
//! accuracy, MSE, MAE, per-class and macro precision/recall/F1 over an explicit label list
//! (zero when undefined, as `zero_division=0`), the confusion matrix, and Cohen's kappa with
//! quadratic weights.

use rustc_hash::FxHashMap;

use super::{numpy_mean, numpy_sum};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct ClassificationScores {
    pub accuracy: f64,
    pub mse: f64,
    pub mae: f64,
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub f1: Vec<f64>,
    pub support: Vec<u64>,
    pub precision_macro: f64,
    pub recall_macro: f64,
    pub f1_macro: f64,
    /// `confusion[i][j]`: samples of true class `labels[i]` predicted as `labels[j]`.
    pub confusion: Vec<Vec<u64>>,
    pub quadratic_kappa: f64,
}

/// `num / den`, or 0 where `den == 0` (scikit-learn's `zero_division=0`).
pub fn safe_div(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

pub fn check_labels(labels: &[i64]) -> Result<FxHashMap<i64, usize>> {
    if labels.is_empty() {
        return Err(Error::config(
            "labels: expected at least one class label, got none",
        ));
    }
    let mut index = FxHashMap::default();
    for (i, &l) in labels.iter().enumerate() {
        if index.insert(l, i).is_some() {
            return Err(Error::config(format!("labels: label {l} appears twice")));
        }
    }
    Ok(index)
}

pub fn classification_scores(
    y_true: &[i64],
    y_pred: &[i64],
    labels: &[i64],
) -> Result<ClassificationScores> {
    if y_true.len() != y_pred.len() {
        return Err(Error::shape(format!(
            "y_pred: expected {} predictions (one per y_true), got {}",
            y_true.len(),
            y_pred.len()
        )));
    }
    if y_true.is_empty() {
        return Err(Error::shape(
            "y_true: expected at least one sample, got none",
        ));
    }
    let index = check_labels(labels)?;
    let n = labels.len();
    let mut confusion = vec![vec![0u64; n]; n];
    let (mut tp, mut fp, mut fneg) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    let mut equal = 0u64;
    let mut sq = Vec::with_capacity(y_true.len());
    let mut ab = Vec::with_capacity(y_true.len());
    for (&t, &p) in y_true.iter().zip(y_pred) {
        let d = (t - p) as f64;
        sq.push(d * d);
        ab.push(d.abs());
        if t == p {
            equal += 1;
        }
        let (ti, pi) = (index.get(&t).copied(), index.get(&p).copied());
        if let (Some(i), Some(j)) = (ti, pi) {
            confusion[i][j] += 1;
        }
        if t == p {
            if let Some(i) = ti {
                tp[i] += 1;
            }
        } else {
            if let Some(j) = pi {
                fp[j] += 1;
            }
            if let Some(i) = ti {
                fneg[i] += 1;
            }
        }
    }
    let precision: Vec<f64> = (0..n)
        .map(|i| safe_div(tp[i] as f64, (tp[i] + fp[i]) as f64))
        .collect();
    let recall: Vec<f64> = (0..n)
        .map(|i| safe_div(tp[i] as f64, (tp[i] + fneg[i]) as f64))
        .collect();
    let f1: Vec<f64> = (0..n)
        .map(|i| safe_div(2.0 * tp[i] as f64, (2 * tp[i] + fp[i] + fneg[i]) as f64))
        .collect();
    Ok(ClassificationScores {
        accuracy: equal as f64 / y_true.len() as f64,
        mse: numpy_mean(&sq),
        mae: numpy_mean(&ab),
        precision_macro: numpy_mean(&precision),
        recall_macro: numpy_mean(&recall),
        f1_macro: numpy_mean(&f1),
        precision,
        recall,
        f1,
        support: (0..n).map(|i| tp[i] + fneg[i]).collect(),
        quadratic_kappa: quadratic_kappa(&confusion),
        confusion,
    })
}

/// Cohen's kappa with quadratic weights over label positions, as
/// `sklearn.metrics.cohen_kappa_score(weights="quadratic")`; NaN when undefined.
pub fn quadratic_kappa(confusion: &[Vec<u64>]) -> f64 {
    let n = confusion.len();
    let sum0: Vec<u64> = (0..n)
        .map(|j| confusion.iter().map(|r| r[j]).sum())
        .collect();
    let sum1: Vec<u64> = confusion.iter().map(|r| r.iter().sum()).collect();
    let total: u64 = sum0.iter().sum();
    let mut observed = Vec::with_capacity(n * n);
    let mut expected = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let w = ((i as i64 - j as i64).pow(2)) as f64;
            observed.push(w * confusion[i][j] as f64);
            expected.push(w * (sum0[i] as f64 * sum1[j] as f64 / total as f64));
        }
    }
    1.0 - numpy_sum(&observed) / numpy_sum(&expected)
}
