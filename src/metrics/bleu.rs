//! BLEU-1..4 exactly as pycocoevalcap's `BleuScorer` computes it with `option="closest"`:
//! whitespace tokens, clipped n-gram matches against the per-n-gram maximum over references,
//! the reference length closest to the hypothesis (ties to the shorter), and its smoothing
//! `(correct + 1e-15) / (guess + 1e-9)` at corpus and sentence level.

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use super::text::{ngram_order, Counted};

const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

/// Sufficient statistics of one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BleuStats {
    pub testlen: u64,
    pub reflen: u64,
    pub guess: [u64; 4],
    pub correct: [u64; 4],
}

/// Statistics of one hypothesis against its references (token ids).
pub fn sample_stats(hyp: &Counted, refs: &[&Counted]) -> BleuStats {
    let mut maxref: FxHashMap<u128, u32> = FxHashMap::default();
    for r in refs {
        for &(k, c) in &r.counts {
            let e = maxref.entry(k).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let testlen = hyp.len as u64;
    // closest: min over (|l - testlen|, l)
    let reflen = refs
        .iter()
        .map(|r| r.len as u64)
        .min_by_key(|&l| (l.abs_diff(testlen), l))
        .unwrap_or(0);
    let mut s = BleuStats {
        testlen,
        reflen,
        ..Default::default()
    };
    for k in 0..4 {
        s.guess[k] = (testlen + 1).saturating_sub(k as u64 + 1);
    }
    for &(key, c) in &hyp.counts {
        let m = maxref.get(&key).copied().unwrap_or(0);
        s.correct[ngram_order(key) - 1] += c.min(m) as u64;
    }
    s
}

fn combine(testlen: f64, reflen: f64, guess: &[f64; 4], correct: &[f64; 4]) -> [f64; 4] {
    let mut out = [0.0; 4];
    let mut bleu = 1.0f64;
    for k in 0..4 {
        bleu *= (correct[k] + TINY) / (guess[k] + SMALL);
        out[k] = bleu.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (testlen + TINY) / (reflen + SMALL);
    if ratio < 1.0 {
        let bp = (1.0 - 1.0 / ratio).exp();
        for v in out.iter_mut() {
            *v *= bp;
        }
    }
    out
}

/// Sentence-level BLEU-1..4 of one sample (pycocoevalcap's per-image list).
pub fn sentence_bleu(s: &BleuStats) -> [f64; 4] {
    let g = s.guess.map(|v| v as f64);
    let c = s.correct.map(|v| v as f64);
    combine(s.testlen as f64, s.reflen as f64, &g, &c)
}

/// Corpus BLEU-1..4 from summed statistics (integer sums: order-independent and exact).
pub fn corpus_bleu(stats: &[BleuStats]) -> [f64; 4] {
    let mut t = BleuStats::default();
    for s in stats {
        t.testlen += s.testlen;
        t.reflen += s.reflen;
        for k in 0..4 {
            t.guess[k] += s.guess[k];
            t.correct[k] += s.correct[k];
        }
    }
    sentence_bleu(&t)
}

/// Corpus and per-sample BLEU-1..4 over counted samples.
pub fn bleu(hyps: &[Counted], refs: &[Vec<&Counted>]) -> ([f64; 4], Vec<[f64; 4]>) {
    let stats: Vec<BleuStats> = hyps
        .par_iter()
        .zip(refs.par_iter())
        .map(|(h, r)| sample_stats(h, r))
        .collect();
    let per = stats.iter().map(sentence_bleu).collect();
    (corpus_bleu(&stats), per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_sentences_score_one() {
        let h = vec![Counted::new(&[1u32, 2, 3, 4, 5])];
        let r0 = Counted::new(&[1u32, 2, 3, 4, 5]);
        let (c, _) = bleu(&h, &[vec![&r0]]);
        for v in c {
            assert!((v - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn closest_reflen_ties_to_shorter() {
        let (a, b) = (Counted::new(&[1, 2]), Counted::new(&[1, 2, 3, 4]));
        let s = sample_stats(&Counted::new(&[1, 2, 3]), &[&a, &b]);
        assert_eq!(s.reflen, 2);
    }
}
