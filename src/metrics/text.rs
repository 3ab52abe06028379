//! Tokenisation and n-gram counting shared by the report metrics.
//!
//! Tokens are interned to `u32` ids; an n-gram (n <= 4) is packed into a `u128` of four `id + 1`
//! slots (0 = unused), so equal n-grams of any length have equal keys and never collide.

use rayon::prelude::*;
use rustc_hash::FxHashMap;

/// Python's `str.split()` (no argument): split on runs of `str.isspace()` characters. That is
/// Unicode White_Space plus the ASCII separators U+001C..U+001F, which Python also counts.
pub fn split_whitespace_py(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|t| !t.is_empty())
}

/// Python's `str.split(" ")`: split on every single space, keeping empty pieces.
pub fn split_space_py(s: &str) -> impl Iterator<Item = &str> {
    s.split(' ')
}

/// A vocabulary built once over a corpus; ids are dense from 0.
#[derive(Default)]
pub struct Interner<'a> {
    map: FxHashMap<&'a str, u32>,
}

impl<'a> Interner<'a> {
    pub fn id(&mut self, tok: &'a str) -> u32 {
        let n = self.map.len() as u32;
        *self.map.entry(tok).or_insert(n)
    }
    pub fn ids(&mut self, toks: &[&'a str]) -> Vec<u32> {
        toks.iter().map(|t| self.id(t)).collect()
    }
}

/// Tokenise every text in parallel, then intern sequentially (a shared vocabulary).
pub fn tokenize_all<'a>(
    texts: &[&'a str],
    split: fn(&'a str) -> Vec<&'a str>,
    vocab: &mut Interner<'a>,
) -> Vec<Vec<u32>> {
    let toks: Vec<Vec<&'a str>> = texts.par_iter().map(|t| split(t)).collect();
    toks.iter().map(|t| vocab.ids(t)).collect()
}

/// Whether `s.split(" ")` equals `s.split()` in Python: non-empty, words separated by single
/// spaces, no leading or trailing space and no other white space.
pub fn space_split_is_whitespace_split(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && !s.contains("  ")
        && !s
            .chars()
            .any(|c| c != ' ' && (c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)))
}

/// The `split(" ")` token ids of `texts`: where they equal the whitespace tokens `ws` of the
/// same text ([`space_split_is_whitespace_split`]), those ids are reused.
pub fn space_ids<'a>(
    texts: &[&'a str],
    ws: &[Vec<u32>],
    vocab: &mut Interner<'a>,
) -> Vec<Vec<u32>> {
    let toks: Vec<Option<Vec<&'a str>>> = texts
        .par_iter()
        .map(|t| (!space_split_is_whitespace_split(t)).then(|| space_tokens(t)))
        .collect();
    toks.into_iter()
        .zip(ws)
        .map(|(t, w)| match t {
            Some(t) => vocab.ids(&t),
            None => w.clone(),
        })
        .collect()
}

pub fn whitespace_tokens(s: &str) -> Vec<&str> {
    split_whitespace_py(s).collect()
}

pub fn space_tokens(s: &str) -> Vec<&str> {
    split_space_py(s).collect()
}

/// Pack `ids` (len 1..=4) into one key.
#[inline]
pub fn ngram_key(ids: &[u32]) -> u128 {
    let mut k = 0u128;
    for (i, &id) in ids.iter().enumerate() {
        k |= ((id as u128) + 1) << (32 * i);
    }
    k
}

/// Order of an n-gram key (1..=4).
#[inline]
pub fn ngram_order(key: u128) -> usize {
    (128 - key.leading_zeros() as usize).div_ceil(32)
}

/// Counts of all n-grams of order 1..=n, in first-occurrence order per order (as a Python dict
/// filled k = 1..n, i = 0..): the order only affects floating-point summation order.
pub fn ngram_counts(ids: &[u32], n: usize) -> Vec<(u128, u32)> {
    let cap = ids.len().saturating_mul(n);
    let mut index: FxHashMap<u128, usize> =
        FxHashMap::with_capacity_and_hasher(cap, Default::default());
    let mut out: Vec<(u128, u32)> = Vec::with_capacity(cap);
    for k in 1..=n {
        if ids.len() < k {
            break;
        }
        for w in ids.windows(k) {
            let key = ngram_key(w);
            match index.get(&key) {
                Some(&i) => out[i].1 += 1,
                None => {
                    index.insert(key, out.len());
                    out.push((key, 1));
                }
            }
        }
    }
    out
}

/// A tokenised text's length and its n-gram counts (orders 1..=4), computed once and shared by
/// BLEU and CIDEr-D.
pub struct Counted {
    pub len: usize,
    pub counts: Vec<(u128, u32)>,
}

impl Counted {
    pub fn new(ids: &[u32]) -> Self {
        Counted {
            len: ids.len(),
            counts: ngram_counts(ids, 4),
        }
    }
}

/// [`Counted`] for every text, in parallel.
pub fn count_all(texts: &[Vec<u32>]) -> Vec<Counted> {
    texts.par_iter().map(|t| Counted::new(t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_split_semantics() {
        assert_eq!(
            whitespace_tokens(" a\tb\n\nc\u{a0}d\u{1f}e "),
            vec!["a", "b", "c", "d", "e"]
        );
        assert_eq!(space_tokens("a  b"), vec!["a", "", "b"]);
        assert_eq!(space_tokens(""), vec![""]);
    }

    #[test]
    fn space_split_shortcut() {
        for s in [
            "a b c", "a  b", " a", "a ", "", "a\tb", "a\u{a0}b", "a\u{1f}b", "x", "a b\n",
        ] {
            let same = whitespace_tokens(s) == space_tokens(s);
            assert!(!space_split_is_whitespace_split(s) || same, "{s:?}");
        }
        assert!(space_split_is_whitespace_split("a b c"));
    }

    #[test]
    fn keys_distinguish_orders() {
        assert_ne!(ngram_key(&[0]), ngram_key(&[0, 0]));
        assert_eq!(ngram_order(ngram_key(&[7, 0, 3])), 3);
        assert_eq!(ngram_order(ngram_key(&[u32::MAX - 1; 4])), 4);
    }
}
