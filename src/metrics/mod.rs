//! Evaluation metrics as pure, parallel Rust.
//!
//! * Report text: [`bleu`], [`rouge`], [`cider`] reproduce pycocoevalcap's BLEU (corpus, closest
//!   reference length, 1e-15/1e-9 smoothing), ROUGE-L (LCS, beta 1.2) and CIDEr-D (IDF from the
//!   evaluated references, sigma 6, x10) — including their tokenisation quirks.
//! * [`classification`]: accuracy, MSE, MAE, macro P/R/F1, confusion matrix, quadratic kappa.
//! * [`multilabel`]: clinical efficacy per label, macro, micro and example-based.

pub mod bleu;
pub mod cider;
pub mod classification;
pub mod meteor;
pub mod multilabel;
pub mod rouge;
pub mod text;

use crate::error::{Error, Result};

/// Check a corpus: one hypothesis and at least one reference per sample.
pub fn check_corpus(refs: &[Vec<String>], hyps: &[String]) -> Result<()> {
    if refs.len() != hyps.len() {
        return Err(Error::shape(format!(
            "references and hypotheses: expected one reference list per hypothesis, got {} and {}",
            refs.len(),
            hyps.len()
        )));
    }
    if hyps.is_empty() {
        return Err(Error::shape(
            "hypotheses: expected at least one sample, got an empty corpus",
        ));
    }
    if let Some(i) = refs.iter().position(|r| r.is_empty()) {
        return Err(Error::shape(format!(
            "references[{i}]: expected at least one reference, got none"
        )));
    }
    Ok(())
}

/// numpy's pairwise summation of a contiguous float64 array (`np.add.reduce`), bit for bit:
/// plain loop below 8 elements, 8 accumulators up to 128, halving above.
pub fn numpy_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum(&a[..n2]) + numpy_sum(&a[n2..])
    }
}

/// `np.mean` of a float64 vector (pairwise sum, then one division). NaN for an empty slice.
pub fn numpy_mean(a: &[f64]) -> f64 {
    numpy_sum(a) / a.len() as f64
}

/// BLEU-1..4, ROUGE-L and CIDEr-D of a corpus, corpus-level and per sample.
#[derive(Clone, Debug, Default)]
pub struct ReportScores {
    pub bleu: [f64; 4],
    pub bleu_per_sample: Vec<[f64; 4]>,
    pub rouge_l: f64,
    pub rouge_l_per_sample: Vec<f64>,
    pub cider_d: f64,
    pub cider_d_per_sample: Vec<f64>,
}

/// Score hypotheses against references as pycocoevalcap does on already-tokenised text
/// (BLEU and CIDEr-D split on whitespace, ROUGE-L on single spaces).
pub fn report_scores(refs: &[Vec<String>], hyps: &[String]) -> Result<ReportScores> {
    check_corpus(refs, hyps)?;
    let hyp_s: Vec<&str> = hyps.iter().map(String::as_str).collect();
    let ref_s: Vec<&str> = refs.iter().flatten().map(String::as_str).collect();
    let mut vocab = text::Interner::default();
    let group = |flat: Vec<Vec<u32>>| -> Vec<Vec<Vec<u32>>> {
        let mut it = flat.into_iter();
        refs.iter()
            .map(|r| it.by_ref().take(r.len()).collect())
            .collect()
    };
    // BLEU and CIDEr-D: whitespace tokens, n-gram counts computed once for both
    let hw_ids = text::tokenize_all(&hyp_s, text::whitespace_tokens, &mut vocab);
    let rw_ids = text::tokenize_all(&ref_s, text::whitespace_tokens, &mut vocab);
    // ROUGE-L: single-space tokens; where they equal the whitespace tokens (one space between
    // words, no other white space), those ids are reused instead of tokenising again
    let hs = text::space_ids(&hyp_s, &hw_ids, &mut vocab);
    let rs = group(text::space_ids(&ref_s, &rw_ids, &mut vocab));
    let hw = text::count_all(&hw_ids);
    let rw_flat = text::count_all(&rw_ids);
    let mut it = rw_flat.iter();
    let rw: Vec<Vec<&text::Counted>> = refs
        .iter()
        .map(|r| it.by_ref().take(r.len()).collect())
        .collect();
    let ((bleu, bleu_per), ((rouge, rouge_per), (cider, cider_per))) = rayon::join(
        || bleu::bleu(&hw, &rw),
        || rayon::join(|| rouge::rouge_l(&hs, &rs), || cider::cider_d(&hw, &rw)),
    );
    Ok(ReportScores {
        bleu,
        bleu_per_sample: bleu_per,
        rouge_l: rouge,
        rouge_l_per_sample: rouge_per,
        cider_d: cider,
        cider_d_per_sample: cider_per,
    })
}

/// [`report_scores`] and METEOR 1.5 ([`meteor::meteor`]) of the same corpus, computed at the
/// same time (the report metrics' serial parts overlap with METEOR's parallel ones).
pub fn report_scores_and_meteor(
    refs: &[Vec<String>],
    hyps: &[String],
    res: &meteor::Resources,
) -> Result<(ReportScores, (f64, Vec<f64>))> {
    check_corpus(refs, hyps)?;
    let (a, b) = rayon::join(
        || report_scores(refs, hyps),
        || meteor::meteor(refs, hyps, res),
    );
    Ok((a?, b?))
}
