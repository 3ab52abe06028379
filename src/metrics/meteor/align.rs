//! `edu.cmu.meteor.aligner.Aligner.align` with its four matchers (exact, stem, synonym,
//! paraphrase, in that order) and the beam search `resolve` over partial alignments, transcribed
//! with its quirks: words are compared by Java `String.hashCode`, the search's weighted match
//! counts are Java `int`s (`int += double` truncates), `Collections.sort` is stable, and the
//! distance of a newly extended path is added to the path it was copied from.
#![allow(clippy::needless_range_loop)] // loops transcribed from the Java source

use super::resources::Resources;
use super::stem::stem;

/// `Constants.DEFAULT_BEAM_SIZE`.
pub const BEAM_SIZE: usize = 40;
/// [`resolve_fast`] stores up to this many candidate keys of a step before it selects the
/// `BEAM_SIZE` best of them.
const BEAM_CAP: usize = 2 * BEAM_SIZE;
/// Modules for English: exact, stem, synonym, paraphrase.
pub const MODULES: usize = 4;
/// `MeteorScorer.loadConfiguration`'s `setWeights` given to the aligner (1.0, 0.5, 0.5, 0.5).
const SEARCH_WEIGHTS: [f64; MODULES] = [1.0, 0.5, 0.5, 0.5];

/// Java `String.hashCode` (over UTF-16 code units, wrapping).
pub fn java_hash(s: &str) -> i32 {
    let mut h: i32 = 0;
    for u in s.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(u as i32);
    }
    h
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// start and length in line2 (reference)
    pub start: usize,
    pub length: usize,
    /// start and length in line1 (test)
    pub match_start: usize,
    pub match_length: usize,
    pub module: usize,
}

/// The aligned pair's counts (`Alignment` fields the scorer reads).
#[derive(Clone, Debug, Default)]
pub struct Alignment {
    pub len1: usize,
    pub len2: usize,
    pub function1: usize,
    pub function2: usize,
    pub content_matches1: [usize; MODULES],
    pub content_matches2: [usize; MODULES],
    pub function_matches1: [usize; MODULES],
    pub function_matches2: [usize; MODULES],
    pub num_chunks: usize,
}

struct Stage {
    /// all matches in the jar's order; `by_start(j)` lists the indices of those starting at
    /// line2 index j, in order (built by [`Stage::index`] once all are added)
    all: Vec<Match>,
    start_off: Vec<u32>,
    start_idx: Vec<u32>,
    cov1: Vec<u32>,
    cov2: Vec<u32>,
}

impl Stage {
    fn new(n1: usize, n2: usize) -> Stage {
        Stage {
            all: Vec::new(),
            start_off: vec![0; n2 + 1],
            start_idx: Vec::new(),
            cov1: vec![0; n1],
            cov2: vec![0; n2],
        }
    }

    fn n2(&self) -> usize {
        self.cov2.len()
    }

    fn by_start(&self, j: usize) -> &[u32] {
        &self.start_idx[self.start_off[j] as usize..self.start_off[j + 1] as usize]
    }

    /// Counting sort of the matches by start (stable: insertion order within a start).
    fn index(&mut self) {
        let n2 = self.n2();
        let off = &mut self.start_off;
        off.iter_mut().for_each(|x| *x = 0);
        for m in &self.all {
            off[m.start + 1] += 1;
        }
        for j in 0..n2 {
            off[j + 1] += off[j];
        }
        let mut fill = off.clone();
        self.start_idx = vec![0; self.all.len()];
        for (i, m) in self.all.iter().enumerate() {
            self.start_idx[fill[m.start] as usize] = i as u32;
            fill[m.start] += 1;
        }
    }

    fn add(&mut self, m: Match) {
        self.all.push(m);
        for k in 0..m.match_length {
            self.cov1[m.match_start + k] += 1;
        }
        for k in 0..m.length {
            self.cov2[m.start + k] += 1;
        }
    }
}

fn one(j: usize, i: usize, module: usize) -> Match {
    Match {
        start: j,
        length: 1,
        match_start: i,
        match_length: 1,
        module,
    }
}

/// `SynonymDictionary.morph` (WordNet's morphological rules). Java's `retval != tmp` is a
/// reference comparison: true exactly when a suffix was replaced.
fn morph<'a>(res: &Resources, word: &'a str) -> std::borrow::Cow<'a, str> {
    const SUFX: [&str; 20] = [
        "s", "ses", "xes", "zes", "ches", "shes", "men", "ies", "s", "ies", "es", "es", "ed", "ed",
        "ing", "ing", "er", "est", "er", "est",
    ];
    const ADDR: [&str; 20] = [
        "", "s", "x", "z", "ch", "sh", "man", "y", "", "y", "e", "", "e", "", "e", "", "", "", "e",
        "e",
    ];
    if word.ends_with("ss") || word.encode_utf16().count() <= 2 {
        return word.into();
    }
    for (s, a) in SUFX.iter().zip(ADDR.iter()) {
        if let Some(stemmed) = word.strip_suffix(s) {
            let r = format!("{stemmed}{a}");
            if res.word_to_synsets.contains_key(&r) {
                return r.into();
            }
        }
    }
    "".into()
}

fn synsets(res: &Resources, w: &str) -> Vec<u32> {
    let mut set: Vec<u32> = res.word_to_synsets.get(w).cloned().unwrap_or_default();
    // getStemSynSets
    match res.word_to_bases.get(w) {
        Some(bases) => {
            for b in bases {
                if let Some(s) = res.word_to_synsets.get(b) {
                    set.extend_from_slice(s);
                }
            }
        }
        None => {
            let m = morph(res, w);
            if let Some(s) = res.word_to_synsets.get(m.as_ref()) {
                set.extend_from_slice(s);
            }
        }
    }
    set.sort_unstable();
    set.dedup();
    set
}

const NONE: u32 = u32::MAX;

/// A partial alignment's search state (`PartialAlignment` without its arrays). Its arrays
/// (`matches`, `line1UsedWords`, `line2UsedWords`) are those of `parent` in the previous pool,
/// plus `new_match` selected at `at`; they are only built for the paths the beam keeps.
#[derive(Clone, Copy, Debug)]
struct Hdr {
    matches1: i32,
    matches2: i32,
    chunks: i32,
    idx: usize,
    last_match_end: i64,
    distance: i32,
    parent: u32,
    new_match: u32,
    at: u32,
    /// position in the candidate list (makes the order total, equal to a stable sort)
    ord: u32,
}

impl Hdr {
    /// `matches1 += m.matchLength * weight` on a Java int.
    fn add_weighted(&mut self, m: &Match) {
        let w = SEARCH_WEIGHTS[m.module];
        self.matches1 = (self.matches1 as f64 + m.match_length as f64 * w) as i32;
        self.matches2 = (self.matches2 as f64 + m.length as f64 * w) as i32;
    }
}

/// `Constants.PARTIAL_COMPARE_TOTAL`: more matches, then fewer chunks, then less distance;
/// ties keep list order (`Collections.sort` is stable).
fn compare(x: &Hdr, y: &Hdr) -> std::cmp::Ordering {
    let diff = (y.matches1 + y.matches2) - (x.matches1 + x.matches2);
    diff.cmp(&0)
        .then((x.chunks - y.chunks).cmp(&0))
        .then((x.distance - y.distance).cmp(&0))
        .then(x.ord.cmp(&y.ord))
}

/// The arrays of the kept paths, `stride` per path.
struct Pool {
    n1: usize,
    n2: usize,
    count: usize,
    matches: Vec<u32>,
    used1: Vec<bool>,
    used2: Vec<bool>,
}

impl Pool {
    fn new(n1: usize, n2: usize) -> Pool {
        Pool {
            n1,
            n2,
            count: 0,
            matches: Vec::new(),
            used1: Vec::new(),
            used2: Vec::new(),
        }
    }
    fn matches(&self, k: usize) -> &[u32] {
        &self.matches[k * self.n2..(k + 1) * self.n2]
    }
    fn used1(&self, k: usize) -> &[bool] {
        &self.used1[k * self.n1..(k + 1) * self.n1]
    }
    fn used2(&self, k: usize) -> &[bool] {
        &self.used2[k * self.n2..(k + 1) * self.n2]
    }
    /// Append the arrays of `h` (its parent's in `old` plus its new match).
    fn push_from(&mut self, old: &Pool, h: &Hdr, s: &Stage) {
        let k = self.count;
        self.count += 1;
        let p = h.parent as usize;
        self.matches.extend_from_slice(old.matches(p));
        self.used1.extend_from_slice(old.used1(p));
        self.used2.extend_from_slice(old.used2(p));
        if h.new_match != NONE {
            let m = s.all[h.new_match as usize];
            self.matches[k * self.n2 + h.at as usize] = h.new_match;
            for i in 0..m.length {
                self.used2[k * self.n2 + m.start + i] = true;
            }
            for i in 0..m.match_length {
                self.used1[k * self.n1 + m.match_start + i] = true;
            }
        }
    }
}

/// Sort candidates as `Collections.sort(paths, PARTIAL_COMPARE_TOTAL)` and keep the first
/// `keep` (only those are ever looked at).
fn top(mut c: Vec<Hdr>, keep: usize) -> Vec<Hdr> {
    if c.len() > keep {
        c.select_nth_unstable_by(keep - 1, compare);
        c.truncate(keep);
    }
    c.sort_unstable_by(compare);
    c
}

/// `Aligner.resolve`: the beam search; returns the best path's `matches` (by line2 start).
fn resolve(
    s: &Stage,
    init_matches: Vec<u32>,
    init_used1: Vec<bool>,
    init_used2: Vec<bool>,
) -> Vec<u32> {
    let n2 = s.n2();
    let n1 = init_used1.len();
    let mut pool = Pool::new(n1, n2);
    pool.matches = init_matches;
    pool.used1 = init_used1;
    pool.used2 = init_used2;
    pool.count = 1;
    let mut cands = vec![Hdr {
        matches1: 0,
        matches2: 0,
        chunks: 0,
        idx: 0,
        last_match_end: -1,
        distance: 0,
        parent: 0,
        new_match: NONE,
        at: 0,
        ord: 0,
    }];
    // the start path's arrays are pool slot 0 already: mark it so
    let mut start_in_place = true;
    for current in 0..=n2 {
        let kept = top(std::mem::take(&mut cands), BEAM_SIZE);
        let cur = if start_in_place {
            start_in_place = false;
            std::mem::replace(&mut pool, Pool::new(n1, n2))
        } else {
            let mut np = Pool::new(n1, n2);
            np.matches.reserve(kept.len() * n2);
            np.used1.reserve(kept.len() * n1);
            np.used2.reserve(kept.len() * n2);
            for h in &kept {
                np.push_from(&pool, h, s);
            }
            np
        };
        pool = cur;
        let mut next: Vec<Hdr> = Vec::new();
        let push = |next: &mut Vec<Hdr>, mut h: Hdr| {
            h.ord = next.len() as u32;
            next.push(h);
        };
        let mut first_dropped: Option<Hdr> = None;
        for (k, h0) in kept.iter().enumerate() {
            let mut path = Hdr {
                parent: k as u32,
                new_match: NONE,
                ..*h0
            };
            if current == n2 {
                if path.last_match_end != -1 {
                    path.chunks += 1;
                }
                push(&mut next, path);
                continue;
            }
            let (pm, pu1, pu2) = (pool.matches(k), pool.used1(k), pool.used2(k));
            if pu2[current] {
                if current < path.idx {
                    push(&mut next, path);
                } else if pm.get(path.idx).is_some_and(|&m| m != NONE) {
                    let m = s.all[pm[path.idx] as usize];
                    path.add_weighted(&m);
                    if path.last_match_end != -1 && m.match_start as i64 != path.last_match_end {
                        path.chunks += 1;
                    }
                    path.idx = m.start + m.length;
                    path.last_match_end = (m.match_start + m.match_length) as i64;
                    path.distance += (m.start as i32 - m.match_start as i32).abs();
                    push(&mut next, path);
                } else if k == 0 {
                    first_dropped = Some(path);
                }
                continue;
            }
            for &mi in s.by_start(current) {
                let m = s.all[mi as usize];
                let used = (0..m.length).any(|i| pu2[m.start + i])
                    || (0..m.match_length).any(|i| pu1[m.match_start + i]);
                if used {
                    continue;
                }
                let mut np = path;
                np.new_match = mi;
                np.at = current as u32;
                np.add_weighted(&m);
                if np.last_match_end != -1 && m.match_start as i64 != np.last_match_end {
                    np.chunks += 1;
                }
                np.idx = m.start + m.length;
                np.last_match_end = (m.match_start + m.match_length) as i64;
                // the jar adds this distance to the path it branched from
                path.distance += (m.start as i32 - m.match_start as i32).abs();
                push(&mut next, np);
            }
            if path.last_match_end != -1 {
                path.chunks += 1;
                path.last_match_end = -1;
            }
            path.idx += 1;
            push(&mut next, path);
        }
        if next.is_empty() {
            // "Warning: unexpected conditions - skipping matches until possible to continue"
            if let Some(p) = first_dropped {
                push(&mut next, p);
            }
        }
        cands = next;
    }
    let best = top(cands, 1);
    match best.first() {
        Some(h) => {
            let mut out = Pool::new(n1, n2);
            out.push_from(&pool, h, s);
            out.matches
        }
        None => vec![NONE; n2],
    }
}

/// A path of [`resolve_fast`]: `Hdr`'s search state, with the path's matches kept as a chain of
/// its choices (`node`, into an arena) and its used words as bitsets (in the beam's pool).
#[derive(Clone, Copy, Debug)]
struct Fp {
    /// `matches1 + matches2` (the comparator only reads the sum)
    score: i32,
    chunks: i32,
    idx: u32,
    /// `lastMatchEnd`, -1 when none
    last_end: i32,
    distance: i32,
    /// the chain node of the path's last choice; `NONE` for none
    node: u32,
}

/// A match as [`resolve_fast`] reads it.
#[derive(Clone, Copy, Debug)]
struct Cm {
    mi: u32,
    start: u32,
    len: u32,
    ms: u32,
    mlen: u32,
    gain: i32,
    dist: i32,
}

#[derive(Clone, Copy, Debug)]
struct Cand {
    p: Fp,
    parent: u32,
    new_match: u32,
}

/// The sort key of `compare`: more matches, fewer chunks, less distance, then list order.
fn fast_key(p: &Fp, ord: usize) -> u128 {
    ((((i32::MAX - p.score) as u32) as u128) << 96)
        | (((p.chunks as u32) as u128) << 64)
        | ((((p.distance as u32) ^ 0x8000_0000) as u128) << 32)
        | ord as u128
}

/// Sort a short, nearly sorted list (linear when sorted).
fn insertion_sort(v: &mut [u128]) {
    for i in 1..v.len() {
        let x = v[i];
        let mut j = i;
        while j > 0 && v[j - 1] > x {
            v[j] = v[j - 1];
            j -= 1;
        }
        v[j] = x;
    }
}

fn bit(b: &[u64], i: usize) -> bool {
    b[i >> 6] >> (i & 63) & 1 == 1
}

/// [`resolve`] with the same paths in the same order, for stages without zero-length matches:
/// then a path's `idx` never falls behind `current`, so the only entry of its `matches` array
/// that the search reads (`matches[idx]` with `idx == current`) is the definite one from
/// `init` (a path's own choices lie before `current`). Paths therefore need no `matches` array
/// (their choices are a chain, read once for the best path); used words are bitsets, match
/// gains and distances are precomputed (`(int) (m + len * w)` is `m + (int) (len * w)` for the
/// whole, non-negative `m`), and the comparator is one integer.
#[inline(never)] // its own symbol in profiles
#[allow(unused_assignments)] // `push!` of the dropped path after a step's last one
fn resolve_fast(s: &Stage, init: &[u32], init_used1: &[bool], init_used2: &[bool]) -> Vec<u32> {
    let n2 = s.n2();
    let n1 = init_used1.len();
    let (w1, w2) = (n1.div_ceil(64), n2.div_ceil(64));
    let w = w1 + w2;
    let gain: Vec<i32> = s
        .all
        .iter()
        .map(|m| {
            let wt = SEARCH_WEIGHTS[m.module];
            (m.match_length as f64 * wt) as i32 + (m.length as f64 * wt) as i32
        })
        .collect();
    let dist: Vec<i32> = s
        .all
        .iter()
        .map(|m| (m.start as i32 - m.match_start as i32).abs())
        .collect();
    // the matches in `by_start` order, with what the search reads
    let cm: Vec<Cm> = (0..n2)
        .flat_map(|j| s.by_start(j).iter())
        .map(|&mi| {
            let m = s.all[mi as usize];
            Cm {
                mi,
                start: m.start as u32,
                len: m.length as u32,
                ms: m.match_start as u32,
                mlen: m.match_length as u32,
                gain: gain[mi as usize],
                dist: dist[mi as usize],
            }
        })
        .collect();
    let mut bits = vec![0u64; w];
    for (i, _) in init_used1.iter().enumerate().filter(|(_, &u)| u) {
        bits[i >> 6] |= 1 << (i & 63);
    }
    for (i, _) in init_used2.iter().enumerate().filter(|(_, &u)| u) {
        bits[w1 + (i >> 6)] |= 1 << (i & 63);
    }
    let mut new_bits: Vec<u64> = Vec::new();
    let mut nodes: Vec<(u32, u32)> = Vec::new();
    let mut next: Vec<Fp> = Vec::with_capacity(BEAM_SIZE);
    let mut kept = vec![Fp {
        score: 0,
        chunks: 0,
        idx: 0,
        last_end: -1,
        distance: 0,
        node: NONE,
    }];
    let mut cands: Vec<Cand> = Vec::new();
    // the candidates' `PARTIAL_COMPARE_TOTAL`-then-list-order keys (smaller sorts first; the
    // low 32 bits are the index in `cands`; keys are distinct, so the BEAM_SIZE best and their
    // order are unique): stored unordered, cut to the BEAM_SIZE best whenever BEAM_CAP are
    // stored and at the step's end, then sorted. A candidate that sorts after the worst of
    // BEAM_SIZE stored ones is never kept: it is not stored (indices stay in list order, so
    // the order among stored ones is the jar's).
    let mut beam: Vec<u128> = Vec::with_capacity(BEAM_CAP);
    let mut keys: Vec<u128> = Vec::new();
    let mut best: Option<(u128, Cand)> = None;
    for current in 0..=n2 {
        cands.clear();
        beam.clear();
        keys.clear();
        // the key of the worst of a full beam and its score (matches); u128::MAX and i32::MIN
        // while the beam is not full
        let mut worst_key = u128::MAX;
        let mut worst_score = i32::MIN;
        let last = current == n2;
        // the step's candidates, at most (1 + matches starting here) per path: when that many
        // fit in the beam, all are kept and no heap is needed; their keys are then gathered
        // in list order, which is close to sorted (paths come best first)
        let all_fit = !last
            && kept.len() * (1 + (s.start_off[current + 1] - s.start_off[current]) as usize)
                <= BEAM_SIZE;
        macro_rules! push {
            ($p:expr, $parent:expr, $new_match:expr) => {{
                let c = Cand {
                    p: $p,
                    parent: $parent as u32,
                    new_match: $new_match,
                };
                let key = fast_key(&c.p, cands.len());
                if last {
                    // the final list: only its first after sorting is read
                    if best.is_none_or(|(b, _)| key < b) {
                        best = Some((key, c));
                    }
                    cands.push(c);
                } else if all_fit {
                    keys.push(key);
                    cands.push(c);
                } else if key < worst_key {
                    // unordered; the BEAM_SIZE best are selected when BEAM_CAP are stored
                    // (and at the step's end), so `worst_key` is the BEAM_SIZE-th best key
                    // of the step's candidates up to the last selection: at least as large
                    // as the beam's final worst, so what it rejects is never kept
                    beam.push(key);
                    cands.push(c);
                    if beam.len() == BEAM_SIZE && worst_key == u128::MAX {
                        worst_key = beam.iter().copied().max().unwrap_or(u128::MAX);
                        worst_score = i32::MAX - (worst_key >> 96) as i32;
                    } else if beam.len() == BEAM_CAP {
                        beam.select_nth_unstable(BEAM_SIZE - 1);
                        beam.truncate(BEAM_SIZE);
                        worst_key = beam[BEAM_SIZE - 1];
                        worst_score = i32::MAX - (worst_key >> 96) as i32;
                    }
                }
            }};
        }
        // no candidate of this step gains more than this over its path
        let max_gain = if last {
            0
        } else {
            s.by_start(current)
                .iter()
                .map(|&mi| gain[mi as usize])
                .max()
                .unwrap_or(0)
        };
        // no path's distance wraps around in this step (each of its matches adds at most once)
        let no_wrap = last || {
            let step: i64 = s
                .by_start(current)
                .iter()
                .map(|&mi| dist[mi as usize] as i64)
                .sum();
            let most = kept.iter().map(|p| p.distance as i64).max().unwrap_or(0);
            most + step <= i32::MAX as i64
        };
        let mut first_dropped: Option<(Fp, usize)> = None;
        for (k, h0) in kept.iter().enumerate() {
            let mut path = *h0;
            if last {
                if path.last_end != -1 {
                    path.chunks += 1;
                }
                push!(path, k, NONE);
                continue;
            }
            // paths come best first: once a path's best candidate cannot beat the worst kept
            // one, neither can any later path's. A candidate of this path has at most
            // `max_gain` more matches, at least its chunks and its distance, and a later list
            // position than the worst; a later path sorts after this one.
            // (The distance bound needs this step's additions not to wrap: `no_wrap`; else
            // only the matches are compared.)
            let bound = Fp {
                score: path.score.saturating_add(max_gain),
                ..path
            };
            if worst_key != u128::MAX
                && if no_wrap {
                    fast_key(&bound, 0) >> 32 >= worst_key >> 32
                } else {
                    bound.score < worst_score
                }
            {
                break;
            }
            let (u1, u2) = bits[k * w..(k + 1) * w].split_at(w1);
            if bit(u2, current) {
                let idx = path.idx as usize;
                if current < idx {
                    push!(path, k, NONE);
                } else if init.get(idx).is_some_and(|&m| m != NONE) {
                    let mi = init[idx] as usize;
                    let m = s.all[mi];
                    path.score += gain[mi];
                    if path.last_end != -1 && m.match_start as i32 != path.last_end {
                        path.chunks += 1;
                    }
                    path.idx = (m.start + m.length) as u32;
                    path.last_end = (m.match_start + m.match_length) as i32;
                    path.distance = path.distance.wrapping_add(dist[mi]);
                    push!(path, k, NONE);
                } else if k == 0 {
                    first_dropped = Some((path, k));
                }
                continue;
            }
            let (lo, hi) = (
                s.start_off[current] as usize,
                s.start_off[current + 1] as usize,
            );
            // candidates in blocks of 64: which of them this path has used, as a mask computed
            // without branching on the (unpredictable) answer, then the unused ones in order
            for b0 in (lo..hi).step_by(64) {
                let block = &cm[b0..hi.min(b0 + 64)];
                let mut used = 0u64;
                for (b, c) in block.iter().enumerate() {
                    // a one-word match starts at `current`, which this path has not used
                    let u = if c.len == 1 && c.mlen == 1 {
                        bit(u1, c.ms as usize)
                    } else {
                        (c.start..c.start + c.len).any(|i| bit(u2, i as usize))
                            || (c.ms..c.ms + c.mlen).any(|i| bit(u1, i as usize))
                    };
                    used |= (u as u64) << b;
                }
                let mut free = !used & (u64::MAX >> (64 - block.len()));
                while free != 0 {
                    let c = &block[free.trailing_zeros() as usize];
                    free &= free - 1;
                    let mut np = path;
                    // the jar adds this distance to the path it branched from
                    path.distance = path.distance.wrapping_add(c.dist);
                    np.score += c.gain;
                    if np.score < worst_score {
                        continue; // fewer matches than the worst of a full beam: never kept
                    }
                    if np.last_end != -1 && c.ms as i32 != np.last_end {
                        np.chunks += 1;
                    }
                    np.idx = c.start + c.len;
                    np.last_end = (c.ms + c.mlen) as i32;
                    push!(np, k, c.mi);
                }
            }
            if path.last_end != -1 {
                path.chunks += 1;
                path.last_end = -1;
            }
            path.idx += 1;
            push!(path, k, NONE);
        }
        if cands.is_empty() {
            if let Some((p, k)) = first_dropped {
                push!(p, k, NONE);
            }
        }
        if last {
            break;
        }
        if all_fit {
            insertion_sort(&mut keys);
        } else {
            // (keys are distinct: the sorted list's first BEAM_SIZE are the best, in order)
            beam.sort_unstable();
            beam.truncate(BEAM_SIZE);
            std::mem::swap(&mut keys, &mut beam);
        }
        new_bits.clear();
        next.clear();
        for &key in &keys {
            let c = &cands[key as u32 as usize];
            let p = c.parent as usize;
            let at = new_bits.len();
            new_bits.extend_from_slice(&bits[p * w..(p + 1) * w]);
            let mut fp = c.p;
            if c.new_match != NONE {
                let m = s.all[c.new_match as usize];
                for i in m.match_start..m.match_start + m.match_length {
                    new_bits[at + (i >> 6)] |= 1 << (i & 63);
                }
                for i in m.start..m.start + m.length {
                    new_bits[at + w1 + (i >> 6)] |= 1 << (i & 63);
                }
                nodes.push((fp.node, c.new_match));
                fp.node = (nodes.len() - 1) as u32;
            }
            next.push(fp);
        }
        std::mem::swap(&mut bits, &mut new_bits);
        std::mem::swap(&mut kept, &mut next);
    }
    let Some((_, best)) = best else {
        return vec![NONE; n2];
    };
    let mut out = init.to_vec();
    let mut node = kept[best.parent as usize].node;
    while node != NONE {
        let (parent, mi) = nodes[node as usize];
        out[s.all[mi as usize].start] = mi;
        node = parent;
    }
    out
}

/// The data of one word that the matchers use (it depends only on the word: computed once per
/// distinct word of a corpus).
#[derive(Clone, Debug)]
pub struct WordInfo {
    hash: i32,
    stem_hash: i32,
    syn: Box<[u32]>,
    para: i64,
    /// the paraphrase trie state that this word leads to from the root (`NONE`: none)
    para_root: u32,
    function: bool,
}

impl WordInfo {
    pub fn new(w: &str, res: &Resources) -> WordInfo {
        let para = res.paraphrases.translate(w);
        WordInfo {
            hash: java_hash(w),
            stem_hash: java_hash(&stem(w)),
            syn: synsets(res, w).into_boxed_slice(),
            para,
            para_root: res.paraphrases.root_child(para),
            function: res.function_words.contains(&w.to_lowercase()),
        }
    }
}

/// Per-word data of one side that does not depend on the other side.
pub struct Side<'a> {
    hashes: Vec<i32>,
    stem_hashes: Vec<i32>,
    syn: Vec<&'a [u32]>,
    para: Vec<i64>,
    para_root: Vec<u32>,
    function: Vec<bool>,
}

impl<'a> Side<'a> {
    /// The side of the words whose data is `infos`, in order.
    pub fn from_infos(infos: impl Iterator<Item = &'a WordInfo>) -> Side<'a> {
        let mut s = Side {
            hashes: Vec::new(),
            stem_hashes: Vec::new(),
            syn: Vec::new(),
            para: Vec::new(),
            para_root: Vec::new(),
            function: Vec::new(),
        };
        for w in infos {
            s.hashes.push(w.hash);
            s.stem_hashes.push(w.stem_hash);
            s.syn.push(&w.syn);
            s.para.push(w.para);
            s.para_root.push(w.para_root);
            s.function.push(w.function);
        }
        s
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// (value, position) sorted: the positions of each value, ascending.
struct Positions<T>(Vec<(T, u32)>);

impl<T: Ord + Copy> Positions<T> {
    fn new(h: &[T]) -> Positions<T> {
        let mut v: Vec<(T, u32)> = h.iter().enumerate().map(|(i, &x)| (x, i as u32)).collect();
        v.sort_unstable();
        Positions(v)
    }

    fn range(&self, x: T) -> &[(T, u32)] {
        let lo = self.0.partition_point(|e| e.0 < x);
        let n = self.0[lo..].partition_point(|e| e.0 == x);
        &self.0[lo..lo + n]
    }

    fn get(&self, x: T) -> impl Iterator<Item = usize> + '_ {
        self.range(x).iter().map(|e| e.1 as usize)
    }
}

/// A 4096-bit set of a line's paraphrase word ids: `maybe(w)` is false only for words not in
/// the line (a prefilter before the exact lookup).
struct WordFilter([u64; 64]);

impl WordFilter {
    fn slot(w: u32) -> usize {
        (w.wrapping_mul(0x9e37_79b9) >> 20) as usize
    }

    fn new(line: &[i64]) -> WordFilter {
        let mut f = [0u64; 64];
        for &w in line.iter().filter(|&&w| w >= 0) {
            let k = Self::slot(w as u32);
            f[k >> 6] |= 1 << (k & 63);
        }
        WordFilter(f)
    }

    fn maybe(&self, w: u32) -> bool {
        let k = Self::slot(w);
        self.0[k >> 6] >> (k & 63) & 1 == 1
    }
}

/// `ParaphraseMatcher.match`. Scanning only the positions holding a phrase's first word gives
/// the jar's matches in the jar's order (positions ascending).
#[inline(never)]
fn paraphrase_matches(st: &mut Stage, module: usize, a: &Side, b: &Side, res: &Resources) {
    let pt = &res.paraphrases;
    let (line1, line2) = (&a.para, &b.para);
    let (pos1, pos2) = (Positions::new(line1), Positions::new(line2));
    let hit = |line: &[i64], i: usize, words: &[u32]| -> bool {
        words
            .iter()
            .enumerate()
            .all(|(k, &w)| i + k < line.len() && line[i + k] == w as i64)
    };
    // the positions holding the phrase's first word (all positions for an empty phrase)
    fn for_starts(pos: &Positions<i64>, n: usize, words: &[u32], mut f: impl FnMut(usize)) {
        match words.first() {
            None => (0..n).for_each(f),
            Some(&w) => pos.range(w as i64).iter().for_each(|e| f(e.1 as usize)),
        }
    }
    let (filter1, filter2) = (WordFilter::new(line1), WordFilter::new(line2));
    // each position's second trie state, for a whole line in one loop (independent lookups in
    // the large table overlap), then hints for the emits of both states
    let second = |line: &[i64], root: &[u32]| -> Vec<u32> {
        let s: Vec<u32> = (0..line.len())
            .map(|j| line.get(j + 1).map_or(NONE, |&w| pt.child(root[j], w)))
            .collect();
        for (&r, &t) in root.iter().zip(&s) {
            pt.prefetch_emits(r);
            pt.prefetch_emits(t);
        }
        s
    };
    let (second1, second2) = (second(line1, &a.para_root), second(line2, &b.para_root));
    let mut pars = Vec::new();
    // paraphrases in line1 of line2 (those whose first word is not in line1 are left out)
    for j in 0..line2.len() {
        let keep = |f: u32| filter1.maybe(f) && !pos1.range(f as i64).is_empty();
        pt.reference_paths_from(line2, j, b.para_root[j], second2[j], keep, &mut pars);
        for &(len, p, _) in &pars {
            let words = pt.paraphrase(p);
            for_starts(&pos1, line1.len(), words, |i| {
                if hit(line1, i, words) {
                    st.add(Match {
                        start: j,
                        length: len,
                        match_start: i,
                        match_length: words.len(),
                        module,
                    });
                }
            });
        }
    }
    // paraphrases in line2 of line1
    for i in 0..line1.len() {
        let keep = |f: u32| filter2.maybe(f) && !pos2.range(f as i64).is_empty();
        pt.reference_paths_from(line1, i, a.para_root[i], second1[i], keep, &mut pars);
        for &(len, p, _) in &pars {
            let words = pt.paraphrase(p);
            for_starts(&pos2, line2.len(), words, |j| {
                if hit(line2, j, words) {
                    st.add(Match {
                        start: j,
                        length: words.len(),
                        match_start: i,
                        match_length: len,
                        module,
                    });
                }
            });
        }
    }
}

/// `SynonymMatcher.match`: pairs of words sharing a synset, in the jar's order (j outer, i
/// inner), identical words left to the exact matcher.
#[inline(never)]
fn synonym_matches(st: &mut Stage, module: usize, a: &Side, b: &Side) {
    // line1's (synset << 32 | position), sorted: the positions holding each synset
    let mut la: Vec<u64> = a
        .syn
        .iter()
        .enumerate()
        .flat_map(|(p, sets)| sets.iter().map(move |&x| ((x as u64) << 32) | p as u64))
        .collect();
    la.sort_unstable();
    // per line2 word j (ascending), the line1 positions sharing one of its synsets as a bitset,
    // read ascending: the pairs in the jar's order (j outer, i inner), each once
    let mut mark = vec![0u64; a.len().div_ceil(64)];
    for (j, sets) in b.syn.iter().enumerate() {
        let mut any = false;
        for &x in sets.iter() {
            let x = x as u64;
            let lo = la.partition_point(|&e| e >> 32 < x);
            for &e in la[lo..].iter().take_while(|&&e| e >> 32 == x) {
                let i = (e & 0xffff_ffff) as usize;
                mark[i >> 6] |= 1 << (i & 63);
                any = true;
            }
        }
        if !any {
            continue;
        }
        for (wi, word) in mark.iter_mut().enumerate() {
            let mut m = std::mem::take(word);
            while m != 0 {
                let i = wi * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                if a.hashes[i] != b.hashes[j] {
                    st.add(one(j, i, module));
                }
            }
        }
    }
}

/// One-to-one, non-overlapping matches are definite: the start path's `matches`,
/// `line1UsedWords`, `line2UsedWords`.
fn definite(st: &Stage) -> (Vec<u32>, Vec<bool>, Vec<bool>) {
    let (n1, n2) = (st.cov1.len(), st.n2());
    let mut init_m = vec![NONE; n2];
    let mut used1 = vec![false; n1];
    let mut used2 = vec![false; n2];
    for i in 0..n2 {
        if let &[mi] = st.by_start(i) {
            let m = st.all[mi as usize];
            let overlap = (0..m.length).any(|j| st.cov2[i + j] != 1)
                || (0..m.match_length).any(|j| st.cov1[m.match_start + j] != 1);
            if !overlap {
                init_m[i] = mi;
                for j in 0..m.length {
                    used2[i + j] = true;
                }
                for j in 0..m.match_length {
                    used1[m.match_start + j] = true;
                }
            }
        }
    }
    (init_m, used1, used2)
}

/// Align test (`a`, line1) with reference (`b`, line2).
pub fn align(a: &Side, b: &Side, res: &Resources) -> Alignment {
    let (n1, n2) = (a.len(), b.len());
    let mut st = Stage::new(n1, n2);
    let mods_used = if n1 == n2 && a.hashes == b.hashes {
        1
    } else {
        MODULES
    };
    for module in 0..mods_used {
        match module {
            // line1's positions of each hash, ascending: the matches in the jar's order
            // (j outer, i inner)
            0 => {
                let pos = Positions::new(&a.hashes);
                for j in 0..n2 {
                    for i in pos.get(b.hashes[j]) {
                        st.add(one(j, i, module));
                    }
                }
            }
            1 => {
                let pos = Positions::new(&a.stem_hashes);
                for j in 0..n2 {
                    for i in pos.get(b.stem_hashes[j]) {
                        if a.hashes[i] != b.hashes[j] {
                            st.add(one(j, i, module));
                        }
                    }
                }
            }
            2 => synonym_matches(&mut st, module, a, b),
            _ => paraphrase_matches(&mut st, module, a, b, res),
        }
    }
    st.index();
    let (init_m, used1, used2) = definite(&st);
    let zero_length = st.all.iter().any(|m| m.length == 0 || m.match_length == 0);
    let best = if zero_length {
        resolve(&st, init_m, used1, used2)
    } else {
        resolve_fast(&st, &init_m, &used1, &used2)
    };
    let mut al = Alignment {
        len1: n1,
        len2: n2,
        function1: a.function.iter().filter(|&&f| f).count(),
        function2: b.function.iter().filter(|&&f| f).count(),
        ..Default::default()
    };
    for &mi in best.iter().filter(|&&m| m != NONE) {
        let m = st.all[mi as usize];
        for j in 0..m.match_length {
            if a.function[m.match_start + j] {
                al.function_matches1[m.module] += 1;
            } else {
                al.content_matches1[m.module] += 1;
            }
        }
        for j in 0..m.length {
            if b.function[m.start + j] {
                al.function_matches2[m.module] += 1;
            } else {
                al.content_matches2[m.module] += 1;
            }
        }
    }
    // getCountAndChunks
    let mut chunks = 0;
    let mut idx = 0;
    let mut last: i64 = -1;
    while idx < best.len() {
        match Some(best[idx]).filter(|&m| m != NONE) {
            None => {
                if last != -1 {
                    chunks += 1;
                    last = -1;
                }
                idx += 1;
            }
            Some(mi) => {
                let m = st.all[mi as usize];
                if last != -1 && m.match_start as i64 != last {
                    chunks += 1;
                }
                idx = m.start + m.length;
                last = (m.match_start + m.match_length) as i64;
                if m.length == 0 {
                    // a zero-length match would loop forever in the jar; step on
                    idx += 1;
                }
            }
        }
    }
    if last != -1 {
        chunks += 1;
    }
    al.num_chunks = chunks;
    al
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The synonym matcher's earlier form (a merge of both sides' sorted (synset, position)
    /// lists into sorted, deduplicated (j, i) pairs), the reference for `synonym_matches`.
    fn synonym_matches_merge(st: &mut Stage, module: usize, a: &Side, b: &Side) {
        let list = |syn: &[&[u32]]| {
            let mut v: Vec<u64> = syn
                .iter()
                .enumerate()
                .flat_map(|(p, sets)| sets.iter().map(move |&x| ((x as u64) << 32) | p as u64))
                .collect();
            v.sort_unstable();
            v
        };
        let (la, lb) = (list(&a.syn), list(&b.syn));
        let mut hits: Vec<u64> = Vec::new();
        for &ea in &la {
            for &eb in &lb {
                if ea >> 32 == eb >> 32 {
                    hits.push((eb << 32) | (ea & 0xffff_ffff));
                }
            }
        }
        hits.sort_unstable();
        hits.dedup();
        for &h in &hits {
            let (j, i) = ((h >> 32) as usize, (h & 0xffff_ffff) as usize);
            if a.hashes[i] != b.hashes[j] {
                st.add(one(j, i, module));
            }
        }
    }

    /// A seeded linear congruential generator: `rnd(n)` in `0..n` (0 for n = 0).
    fn lcg(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as usize) % n.max(1)
        }
    }

    #[test]
    fn synonym_matches_equal_merge() {
        let mut rnd = lcg(0x2545_f491_4f6c_dd1d);
        for case in 0..300 {
            let (n1, n2) = (rnd(150), rnd(150));
            let range = 1 + rnd(if case % 3 == 0 { 20 } else { 400 });
            let mut sets = |n: usize| -> Vec<Vec<u32>> {
                (0..n)
                    .map(|_| {
                        let mut v: Vec<u32> = (0..rnd(8)).map(|_| rnd(range) as u32).collect();
                        v.sort_unstable();
                        v.dedup();
                        v
                    })
                    .collect()
            };
            let (s1, s2) = (sets(n1), sets(n2));
            fn side(sets: &[Vec<u32>], hashes: Vec<i32>) -> Side<'_> {
                Side {
                    hashes,
                    stem_hashes: Vec::new(),
                    syn: sets.iter().map(|v| v.as_slice()).collect(),
                    para: Vec::new(),
                    para_root: Vec::new(),
                    function: Vec::new(),
                }
            }
            let h1: Vec<i32> = (0..n1).map(|_| rnd(30) as i32).collect();
            let h2: Vec<i32> = (0..n2).map(|_| rnd(30) as i32).collect();
            let (a, b) = (side(&s1, h1), side(&s2, h2));
            let (mut x, mut y) = (Stage::new(n1, n2), Stage::new(n1, n2));
            synonym_matches(&mut x, 2, &a, &b);
            synonym_matches_merge(&mut y, 2, &a, &b);
            assert_eq!(x.all, y.all, "case {case}");
        }
    }

    /// `resolve_fast` against `resolve` (the transcription of the jar's search) on random
    /// stages: one-word matches of all four modules and multi-word (paraphrase) matches, dense
    /// enough that the beam of 40 overflows, and sparse steps where every candidate fits.
    #[test]
    fn fast_search_equals_transcribed_search() {
        let mut rnd = lcg(0x9e37_79b9_7f4a_7c15);
        for case in 0..600 {
            let (n1, n2) = (1 + rnd(40), 1 + rnd(40));
            let mut st = Stage::new(n1, n2);
            // every 40th case: all pairs in all modules (up to 160 matches per start, more than
            // one 64-candidate block of `resolve_fast`); cases 400..: no exact matches and
            // dense (one-word matches then gain nothing: full beams of paths with equal
            // matches, ordered by chunks and distance)
            let density = if case % 40 == 0 {
                40
            } else if case >= 400 {
                4 + case % 12
            } else {
                1 + case % 6
            };
            let first_module = usize::from(case >= 400);
            for module in first_module..MODULES {
                for j in 0..n2 {
                    for i in 0..n1 {
                        if rnd(40) < density {
                            let (len, mlen) = if module == 3 {
                                (1 + rnd(3).min(n2 - j - 1), 1 + rnd(3).min(n1 - i - 1))
                            } else {
                                (1, 1)
                            };
                            st.add(Match {
                                start: j,
                                length: len,
                                match_start: i,
                                match_length: mlen,
                                module,
                            });
                        }
                    }
                }
            }
            st.index();
            let (init, u1, u2) = definite(&st);
            let fast = resolve_fast(&st, &init, &u1, &u2);
            let slow = resolve(&st, init, u1, u2);
            assert_eq!(
                fast,
                slow,
                "case {case}: n1 {n1} n2 {n2}, {} matches",
                st.all.len()
            );
        }
    }
}
