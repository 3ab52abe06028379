//! ROUGE-L exactly as pycocoevalcap's `Rouge`: tokens by `split(" ")`, LCS against each reference,
//! precision and recall maximised separately over references, F with beta = 1.2.

use rayon::prelude::*;

const BETA: f64 = 1.2;

/// Length of the longest common subsequence (O(n*m) time, O(min(n, m)) memory).
pub fn lcs(a: &[u32], b: &[u32]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut row = vec![0usize; short.len() + 1];
    for &x in long {
        let mut diag = 0usize;
        for j in 1..=short.len() {
            let up = row[j];
            row[j] = if x == short[j - 1] { diag + 1 } else { up.max(row[j - 1]) };
            diag = up;
        }
    }
    row[short.len()]
}

/// ROUGE-L F-score of one candidate against its references.
pub fn sentence_rouge_l(cand: &[u32], refs: &[Vec<u32>]) -> f64 {
    let mut prec_max = f64::NEG_INFINITY;
    let mut rec_max = f64::NEG_INFINITY;
    for r in refs {
        let l = lcs(r, cand) as f64;
        prec_max = prec_max.max(l / cand.len() as f64);
        rec_max = rec_max.max(l / r.len() as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        let b2 = BETA * BETA;
        ((1.0 + b2) * prec_max * rec_max) / (rec_max + b2 * prec_max)
    } else {
        0.0
    }
}

/// Corpus mean (numpy's pairwise summation is within 1 ulp of this for these sizes) and
/// per-sample ROUGE-L.
pub fn rouge_l(hyps: &[Vec<u32>], refs: &[Vec<Vec<u32>>]) -> (f64, Vec<f64>) {
    let per: Vec<f64> = hyps.par_iter().zip(refs.par_iter()).map(|(h, r)| sentence_rouge_l(h, r)).collect();
    (super::numpy_mean(&per), per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_basics() {
        assert_eq!(lcs(&[1, 2, 3, 4], &[2, 4]), 2);
        assert_eq!(lcs(&[1, 2, 3], &[4, 5]), 0);
        assert_eq!(lcs(&[], &[1]), 0);
    }
}
