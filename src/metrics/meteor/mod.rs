//! METEOR 1.5 as pycocoevalcap runs it (`java -jar meteor-1.5.jar - - -stdio -l en -norm`),
//! in Rust, without Java: a transcription of the jar's `Meteor.scoreStdio`,
//! `MeteorScorer`, `MeteorStats`, `Aligner` (+ matchers), `Normalizer` and Snowball English
//! stemmer. Language data is read at run time from the jar and its paraphrase table
//! ([`resources`]).
//!
//! Pipeline per sample (as pycocoevalcap's `Meteor._stat` + the jar's `SCORE` line):
//! the hypothesis loses `|||` and one pass of `"  " -> " "`; the line
//! `SCORE ||| ref1 ||| ... ||| hyp` is split on `|||` (Java `String.split`), parts trimmed;
//! each side normalised (`-norm`), lower-cased, tokenised; the best reference by score wins
//! (first on ties). The corpus score is the jar's `EVAL` line: per-sentence stats aggregated
//! (`MeteorStats.addStats`) and scored once (`MeteorScorer.computeMetrics`).
//!
//! Parameters: `-l en` with the default task (`TASK_DEFAULT = TASK_RANK`): alpha 0.85,
//! beta 0.20, gamma 0.60, delta 0.75; module weights exact 1.0, stem 0.6, synonym 0.8,
//! paraphrase 0.6; beam 40.
#![allow(clippy::needless_range_loop)] // loops transcribed from the Java source

pub mod align;
pub mod normalize;
pub mod resources;
pub mod stem;

use rayon::prelude::*;

use crate::error::Result;
use align::{Side, WordInfo, MODULES};
pub use resources::Resources;
use rustc_hash::{FxHashMap, FxHashSet};

/// `Constants.PARAM_RANK[LANG_EN]`: alpha, beta, gamma, delta.
pub const PARAMS: [f64; 4] = [0.85, 0.20, 0.60, 0.75];
/// `Constants.WEIGHT_RANK[LANG_EN]`: exact, stem, synonym, paraphrase.
pub const WEIGHTS: [f64; MODULES] = [1.0, 0.6, 0.8, 0.6];

/// `MeteorStats`' aggregable statistics (word counts; stored as doubles like the jar).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub test_length: f64,
    pub reference_length: f64,
    pub test_function_words: f64,
    pub reference_function_words: f64,
    pub test_total_matches: f64,
    pub reference_total_matches: f64,
    pub test_content: [f64; MODULES],
    pub reference_content: [f64; MODULES],
    pub test_function: [f64; MODULES],
    pub reference_function: [f64; MODULES],
    pub chunks: f64,
    pub test_word_matches: f64,
    pub reference_word_matches: f64,
}

impl Stats {
    fn from_alignment(a: &align::Alignment) -> Stats {
        let mut s = Stats {
            test_length: a.len1 as f64,
            reference_length: a.len2 as f64,
            test_function_words: a.function1 as f64,
            reference_function_words: a.function2 as f64,
            chunks: a.num_chunks as f64,
            ..Default::default()
        };
        for i in 0..MODULES {
            s.test_content[i] = a.content_matches1[i] as f64;
            s.reference_content[i] = a.content_matches2[i] as f64;
            s.test_function[i] = a.function_matches1[i] as f64;
            s.reference_function[i] = a.function_matches2[i] as f64;
            s.test_total_matches += s.test_content[i];
            s.test_total_matches += s.test_function[i];
            s.reference_total_matches += s.reference_content[i];
            s.reference_total_matches += s.reference_function[i];
            s.test_word_matches += (a.content_matches1[i] + a.function_matches1[i]) as f64;
            s.reference_word_matches += (a.content_matches2[i] + a.function_matches2[i]) as f64;
        }
        s
    }

    fn is_perfect(&self) -> bool {
        self.test_total_matches == self.test_length
            && self.reference_total_matches == self.reference_length
            && self.chunks == 1.0
    }

    /// `MeteorStats.addStats` (chunks of perfect sentences are not aggregated).
    pub fn add(&mut self, o: &Stats) {
        self.test_length += o.test_length;
        self.reference_length += o.reference_length;
        self.test_function_words += o.test_function_words;
        self.reference_function_words += o.reference_function_words;
        self.test_total_matches += o.test_total_matches;
        self.reference_total_matches += o.reference_total_matches;
        for i in 0..MODULES {
            self.test_content[i] += o.test_content[i];
            self.reference_content[i] += o.reference_content[i];
            self.test_function[i] += o.test_function[i];
            self.reference_function[i] += o.reference_function[i];
        }
        if !o.is_perfect() {
            self.chunks += o.chunks;
        }
        self.test_word_matches += o.test_word_matches;
        self.reference_word_matches += o.reference_word_matches;
    }

    /// `MeteorStats.toString()`: the 23 numbers of a `SCORE` reply (Java `Double.toString` of
    /// whole numbers).
    pub fn to_jar_string(&self) -> String {
        let mut v = vec![
            self.test_length,
            self.reference_length,
            self.test_function_words,
            self.reference_function_words,
        ];
        for i in 0..MODULES {
            v.extend([
                self.test_content[i],
                self.reference_content[i],
                self.test_function[i],
                self.reference_function[i],
            ]);
        }
        v.extend([
            self.chunks,
            self.test_word_matches,
            self.reference_word_matches,
        ]);
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `MeteorScorer.computeMetrics(stats).score`, operation for operation.
    pub fn score(&self) -> f64 {
        let [alpha, beta, gamma, delta] = PARAMS;
        let twl = (delta * (self.test_length - self.test_function_words))
            + ((1.0 - delta) * (self.test_function_words));
        let rwl = (delta * (self.reference_length - self.reference_function_words))
            + ((1.0 - delta) * (self.reference_function_words));
        let mut twm = 0.0;
        let mut rwm = 0.0;
        for i in 0..MODULES {
            twm += self.test_content[i] * WEIGHTS[i] * delta;
        }
        for i in 0..MODULES {
            rwm += self.reference_content[i] * WEIGHTS[i] * delta;
        }
        for i in 0..MODULES {
            twm += self.test_function[i] * WEIGHTS[i] * (1.0 - delta);
        }
        for i in 0..MODULES {
            rwm += self.reference_function[i] * WEIGHTS[i] * (1.0 - delta);
        }
        let precision = twm / twl;
        let recall = rwm / rwl;
        let fmean = 1.0 / (((1.0 - alpha) / precision) + (alpha / recall));
        let frag = if self.is_perfect() {
            0.0
        } else {
            self.chunks / ((self.test_word_matches + self.reference_word_matches) / 2.0)
        };
        let frag_penalty = gamma * frag.powf(beta);
        let score = fmean * (1.0 - frag_penalty);
        if score.is_nan() {
            0.0
        } else {
            score.max(0.0)
        }
    }
}

/// Java `String.split("\\|\\|\\|")`: pieces between non-overlapping `|||`, trailing empty
/// pieces removed.
fn java_split_bars(line: &str) -> Vec<&str> {
    let mut v: Vec<&str> = line.split("|||").collect();
    while v.len() > 1 && v.last().is_some_and(|s| s.is_empty()) {
        v.pop();
    }
    if v.len() == 1 && v[0].is_empty() {
        v.clear();
    }
    v
}

/// The references and test string the jar sees for one pycocoevalcap sample.
pub fn score_line_parts(refs: &[String], hyp: &str) -> (Vec<String>, String) {
    let clean = |s: &str| s.replace(['\n', '\r'], " ");
    let hyp = clean(hyp).replace("|||", "").replace("  ", " ");
    let refs: Vec<String> = refs.iter().map(|r| clean(r)).collect();
    let line = format!("SCORE ||| {} ||| {}", refs.join(" ||| "), hyp);
    let parts = java_split_bars(&line);
    let n = parts.len();
    // n >= 3 always: the hypothesis part starts with the separator's space
    let r = parts[1..n.saturating_sub(1).max(1)]
        .iter()
        .map(|p| normalize::java_trim(p).to_string())
        .collect();
    let t = parts
        .last()
        .map_or(String::new(), |p| normalize::java_trim(p).to_string());
    (r, t)
}

/// The jar's lower-cased, normalised line (`-norm`).
fn normalised(text: &str, res: &Resources) -> String {
    normalize::normalize_line(text, &res.nbp).to_lowercase()
}

/// `MeteorScorer.getMeteorStats(test, references)`: stats of the best reference.
pub fn sentence_stats(refs: &[String], hyp: &str, res: &Resources) -> Stats {
    corpus_stats(
        std::slice::from_ref(&refs.to_vec()),
        &[hyp.to_string()],
        res,
    )
    .pop()
    .unwrap_or_default()
}

/// [`sentence_stats`] of every sample, in parallel over samples. The word data (hash, stem,
/// synsets, paraphrase id, function word) is computed once per distinct word of the corpus.
pub fn corpus_stats(refs: &[Vec<String>], hyps: &[String], res: &Resources) -> Vec<Stats> {
    // per sample: the normalised test line, then the normalised references
    let lines: Vec<Vec<String>> = refs
        .par_iter()
        .zip(hyps.par_iter())
        .map(|(r, h)| {
            let (r, t) = score_line_parts(r, h);
            std::iter::once(&t)
                .chain(r.iter())
                .map(|x| normalised(x, res))
                .collect()
        })
        .collect();
    let words: FxHashSet<&str> = lines
        .par_iter()
        .fold(FxHashSet::default, |mut set, ls| {
            for l in ls {
                set.extend(resources::java_tokens(l));
            }
            set
        })
        .reduce(FxHashSet::default, |a, b| {
            let (mut big, small) = if a.len() < b.len() { (b, a) } else { (a, b) };
            big.extend(small);
            big
        });
    let words: Vec<&str> = words.into_iter().collect();
    let infos: Vec<WordInfo> = words.par_iter().map(|w| WordInfo::new(w, res)).collect();
    let index: FxHashMap<&str, usize> = words.iter().enumerate().map(|(i, &w)| (w, i)).collect();
    let side = |l: &str| Side::from_infos(resources::java_tokens(l).map(|t| &infos[index[t]]));
    lines
        .par_iter()
        .map(|ls| {
            let t = side(&ls[0]);
            let mut best: Option<(f64, Stats)> = None;
            for r in &ls[1..] {
                let s = Stats::from_alignment(&align::align(&t, &side(r), res));
                let sc = s.score();
                if best.as_ref().is_none_or(|(b, _)| sc > *b) {
                    best = Some((sc, s));
                }
            }
            best.map(|b| b.1).unwrap_or_default()
        })
        .collect()
}

/// Corpus METEOR and per-sample scores, as pycocoevalcap's `Meteor.compute_score` returns them.
pub fn meteor(refs: &[Vec<String>], hyps: &[String], res: &Resources) -> Result<(f64, Vec<f64>)> {
    super::check_corpus(refs, hyps)?;
    let stats = corpus_stats(refs, hyps, res);
    let per: Vec<f64> = stats.iter().map(Stats::score).collect();
    let mut agg = Stats::default();
    for s in &stats {
        agg.add(s);
    }
    Ok((agg.score(), per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_like_java() {
        assert_eq!(
            java_split_bars("SCORE ||| a ||| b"),
            ["SCORE ", " a ", " b"]
        );
        assert_eq!(java_split_bars("a|||b||||||"), ["a", "b"]);
        let (r, t) = score_line_parts(&["x ||| y".into()], "h|||i  j\nk");
        assert_eq!(r, ["x", "y"]);
        assert_eq!(t, "hi j k");
    }

    #[test]
    fn perfect_and_empty_scores() {
        let mut s = Stats {
            test_length: 3.0,
            reference_length: 3.0,
            test_total_matches: 3.0,
            reference_total_matches: 3.0,
            chunks: 1.0,
            test_word_matches: 3.0,
            reference_word_matches: 3.0,
            ..Default::default()
        };
        s.test_content[0] = 3.0;
        s.reference_content[0] = 3.0;
        assert_eq!(s.score(), 1.0);
        assert_eq!(Stats::default().score(), 0.0);
        assert_eq!(
            s.to_jar_string(),
            "3.0 3.0 0.0 0.0 3.0 3.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 0.0 1.0 3.0 3.0"
        );
    }
}
