//! CIDEr-D exactly as pycocoevalcap's `CiderScorer`: whitespace tokens, n = 1..4, document
//! frequencies from the references of the evaluated set, TF-IDF vectors with
//! `idf = log(N) - log(max(1, df))`, clipped cosine similarity, the Gaussian length penalty
//! (sigma 6) — with pycocoevalcap's length quirk: the "length" of a caption is its count of
//! bigrams — averaged over n and references, x10.

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

use super::text::{ngram_order, Counted};

const SIGMA: f64 = 6.0;

struct Vector {
    /// (key, order index 0..4, tf-idf) in first-occurrence order.
    entries: Vec<(u128, usize, f64)>,
    norm: [f64; 4],
    length: f64,
}

fn counts2vec(c: &Counted, df: &FxHashMap<u128, u32>, ref_len: f64) -> Vector {
    let mut entries = Vec::with_capacity(c.counts.len());
    let mut norm = [0.0f64; 4];
    let mut length = 0.0f64;
    for &(key, tf) in &c.counts {
        let d = (df.get(&key).copied().unwrap_or(0) as f64).max(1.0).ln();
        let n = ngram_order(key) - 1;
        let v = tf as f64 * (ref_len - d);
        norm[n] += v.powi(2);
        if n == 1 {
            length += tf as f64;
        }
        entries.push((key, n, v));
    }
    Vector {
        entries,
        norm: norm.map(f64::sqrt),
        length,
    }
}

fn sim(hyp: &Vector, r: &Vector, rmap: &FxHashMap<u128, f64>) -> [f64; 4] {
    let delta = hyp.length - r.length;
    let mut val = [0.0f64; 4];
    for &(key, n, vh) in &hyp.entries {
        let vr = rmap.get(&key).copied().unwrap_or(0.0);
        val[n] += vh.min(vr) * vr;
    }
    let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA));
    for (n, v) in val.iter_mut().enumerate() {
        if hyp.norm[n] != 0.0 && r.norm[n] != 0.0 {
            *v /= hyp.norm[n] * r.norm[n];
        }
        *v *= penalty;
    }
    val
}

/// Corpus CIDEr-D (mean over samples) and per-sample scores.
pub fn cider_d(hyps: &[Counted], refs: &[Vec<&Counted>]) -> (f64, Vec<f64>) {
    // document frequency: in how many samples' reference sets each n-gram occurs
    let sets: Vec<FxHashSet<u128>> = refs
        .par_iter()
        .map(|rs| {
            rs.iter()
                .flat_map(|r| r.counts.iter().map(|&(k, _)| k))
                .collect()
        })
        .collect();
    let mut df: FxHashMap<u128, u32> = FxHashMap::default();
    for s in &sets {
        for &k in s {
            *df.entry(k).or_insert(0) += 1;
        }
    }
    let ref_len = (refs.len() as f64).ln();
    let per: Vec<f64> = hyps
        .par_iter()
        .zip(refs.par_iter())
        .map(|(h, rs)| {
            let vh = counts2vec(h, &df, ref_len);
            let mut score = [0.0f64; 4];
            for r in rs {
                let vr = counts2vec(r, &df, ref_len);
                let mut rmap: FxHashMap<u128, f64> =
                    FxHashMap::with_capacity_and_hasher(vr.entries.len(), Default::default());
                rmap.extend(vr.entries.iter().map(|&(k, _, v)| (k, v)));
                let s = sim(&vh, &vr, &rmap);
                for n in 0..4 {
                    score[n] += s[n];
                }
            }
            super::numpy_mean(&score) / rs.len() as f64 * 10.0
        })
        .collect();
    (super::numpy_mean(&per), per)
}
