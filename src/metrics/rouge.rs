//! ROUGE-L exactly as pycocoevalcap's `Rouge`: tokens by `split(" ")`, LCS against each reference,
//! precision and recall maximised separately over references, F with beta = 1.2.

use rayon::prelude::*;
use rustc_hash::FxHashMap;

const BETA: f64 = 1.2;

/// Length of the longest common subsequence, bit-parallel (Hyyro 2004): one pass over the
/// longer sequence with a bit-vector the length of the shorter, O(n * m / 64).
pub fn lcs(a: &[u32], b: &[u32]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let m = short.len();
    if m == 0 {
        return 0;
    }
    let words = m.div_ceil(64);
    // match masks: bit j of masks[c] set where short[j] == c
    let mut masks: FxHashMap<u32, Vec<u64>> = FxHashMap::default();
    for (j, &c) in short.iter().enumerate() {
        masks.entry(c).or_insert_with(|| vec![0u64; words])[j / 64] |= 1u64 << (j % 64);
    }
    let mut v = vec![u64::MAX; words];
    for c in long {
        let Some(mk) = masks.get(c) else { continue };
        // V = (V + U) | (V - U), U = V & M, multi-word with carry and borrow
        let (mut carry, mut borrow) = (0u64, 0u64);
        for w in 0..words {
            let u = v[w] & mk[w];
            let (s1, c1) = v[w].overflowing_add(u);
            let (s2, c2) = s1.overflowing_add(carry);
            carry = (c1 | c2) as u64;
            let (d1, b1) = v[w].overflowing_sub(u);
            let (d2, b2) = d1.overflowing_sub(borrow);
            borrow = (b1 | b2) as u64;
            v[w] = s2 | d2;
        }
    }
    let mut zeros = 0usize;
    for (w, &x) in v.iter().enumerate() {
        let bits = if w + 1 == words && m % 64 != 0 {
            m % 64
        } else {
            64
        };
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        zeros += (!x & mask).count_ones() as usize;
    }
    zeros
}

/// Reference dynamic-programming LCS (for tests).
pub fn lcs_dp(a: &[u32], b: &[u32]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for &x in a {
        let mut diag = 0usize;
        for j in 1..=b.len() {
            let up = row[j];
            row[j] = if x == b[j - 1] {
                diag + 1
            } else {
                up.max(row[j - 1])
            };
            diag = up;
        }
    }
    row[b.len()]
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
    let per: Vec<f64> = hyps
        .par_iter()
        .zip(refs.par_iter())
        .map(|(h, r)| sentence_rouge_l(h, r))
        .collect();
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

    #[test]
    fn bit_parallel_equals_dp_across_word_boundaries() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for len_a in [0usize, 1, 5, 63, 64, 65, 130, 200] {
            for len_b in [1usize, 7, 64, 65, 129, 300] {
                let a: Vec<u32> = (0..len_a).map(|_| next() % 6).collect();
                let b: Vec<u32> = (0..len_b).map(|_| next() % 6).collect();
                assert_eq!(lcs(&a, &b), lcs_dp(&a, &b), "{len_a} x {len_b}");
            }
        }
    }
}
