//! METEOR 1.5's English language data, read at run time from pycocoevalcap's `meteor-1.5.jar`
//! (a zip: `function/english.words`, `synonym/english.{exceptions,synsets}`,
//! `nonbreaking/english.prefixes`) and the paraphrase table beside it
//! (`data/paraphrase-en.gz`, as `Constants.getDefaultParaFileURL` finds it). Nothing is copied
//! into voxlm. Parsing follows `Aligner.setupModules`, `SynonymDictionary`,
//! `ParaphraseTransducer` and `Normalizer.nbpList`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::error::{Error, Result};

/// Nonbreaking prefix types (`Constants.NBP_ANY`, `NBP_NUM_ONLY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nbp {
    Any,
    NumOnly,
}

/// The paraphrase transducer: a trie over reference phrases (word ids), each state emitting
/// paraphrase indices in file order.
#[derive(Debug, Default)]
pub struct Paraphrases {
    pub vocab: FxHashMap<Box<[u8]>, u32>,
    /// (state << 32 | word) -> child state; state 0 is the root.
    trie: FxHashMap<u64, u32>,
    /// CSR: emits of state s are `emit_vals[emit_off[s]..emit_off[s + 1]]`.
    emit_off: Vec<u32>,
    emit_vals: Vec<u32>,
    /// beside `emit_vals`: the first word of each emitted paraphrase (`u32::MAX`: empty)
    emit_first: Vec<u32>,
    /// CSR: words of paraphrase p are `para_words[para_off[p]..para_off[p + 1]]`.
    para_off: Vec<u32>,
    para_words: Vec<u32>,
}

impl Paraphrases {
    /// `ParaphraseTransducer.translate`: the word's id, -1 when unknown.
    pub fn translate(&self, w: &str) -> i64 {
        self.vocab.get(w.as_bytes()).map_or(-1, |&i| i as i64)
    }

    /// The trie state reached from the root by word id `w` (`u32::MAX`: none). It depends on
    /// the word only: computed once per distinct word of a corpus.
    pub fn root_child(&self, w: i64) -> u32 {
        if w < 0 {
            return u32::MAX;
        }
        self.trie.get(&(w as u64)).copied().unwrap_or(u32::MAX)
    }

    /// The trie state reached from `state` by word id `w` (`u32::MAX`: none; also when `state`
    /// is none or `w` is unknown, -1).
    pub fn child(&self, state: u32, w: i64) -> u32 {
        if state == u32::MAX || w < 0 {
            return u32::MAX;
        }
        self.trie
            .get(&(((state as u64) << 32) | w as u64))
            .copied()
            .unwrap_or(u32::MAX)
    }

    /// A cache hint: start fetching the emits of `state` (a no-op for none). The emit arrays
    /// are large (the 15.8M-line table), so reading them is a cache miss; hinting the states
    /// of a whole line first lets those misses overlap.
    pub fn prefetch_emits(&self, state: u32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(&a) = self.emit_off.get(state as usize) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let (v, f) = (
                self.emit_vals.as_ptr().wrapping_add(a as usize),
                self.emit_first.as_ptr().wrapping_add(a as usize),
            );
            // SAFETY: a prefetch reads nothing and never faults (SSE is in x86_64's baseline);
            // wrapping_add keeps the address computation defined
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(v.cast());
                _mm_prefetch::<_MM_HINT_T0>(f.cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = state;
    }

    /// `getReferencePaths`: (phrase length, paraphrase index, the paraphrase's first word or
    /// `u32::MAX`) for the phrases starting at `start`, shortest first, each length's emits in
    /// file order.
    pub fn reference_paths(&self, words: &[i64], start: usize, out: &mut Vec<(usize, u32, u32)>) {
        let first = words.get(start).map_or(u32::MAX, |&w| self.root_child(w));
        let second = words
            .get(start + 1)
            .map_or(u32::MAX, |&w| self.child(first, w));
        self.reference_paths_from(words, start, first, second, |_| true, out);
    }

    /// [`Paraphrases::reference_paths`] given the states `first` that `words[start]` leads to
    /// from the root ([`Paraphrases::root_child`]) and `second` that `words[start + 1]` leads
    /// to from `first` ([`Paraphrases::child`]; computed for a whole line at once, so that the
    /// table lookups overlap), keeping only the emits whose first word passes `keep` (empty
    /// paraphrases, first word `u32::MAX`, are always kept).
    pub fn reference_paths_from(
        &self,
        words: &[i64],
        start: usize,
        first: u32,
        second: u32,
        keep: impl Fn(u32) -> bool,
        out: &mut Vec<(usize, u32, u32)>,
    ) {
        out.clear();
        let mut state = first;
        for (i, &w) in words.iter().enumerate().skip(start) {
            if i == start + 1 {
                // `second` is `child(first, w)`: none when `w` is unknown or not in the trie
                if second == u32::MAX {
                    break;
                }
                state = second;
            } else if i > start {
                if w < 0 {
                    break;
                }
                match self.trie.get(&(((state as u64) << 32) | w as u64)) {
                    None => break,
                    Some(&s) => state = s,
                }
            } else if state == u32::MAX {
                break;
            }
            let (a, b) = (
                self.emit_off[state as usize] as usize,
                self.emit_off[state as usize + 1] as usize,
            );
            for (&p, &f) in self.emit_vals[a..b].iter().zip(&self.emit_first[a..b]) {
                if f == u32::MAX || keep(f) {
                    out.push((i + 1 - start, p, f));
                }
            }
        }
    }

    /// `getParaphrase`: the words of paraphrase `p`.
    pub fn paraphrase(&self, p: u32) -> &[u32] {
        let p = p as usize;
        &self.para_words[self.para_off[p] as usize..self.para_off[p + 1] as usize]
    }

    /// Number of (reference, paraphrase) entries.
    pub fn len(&self) -> usize {
        self.para_off.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// All English resources of the scorer.
#[derive(Debug)]
pub struct Resources {
    pub function_words: FxHashSet<String>,
    /// `wordToBases` (exceptions file).
    pub word_to_bases: FxHashMap<String, Vec<String>>,
    /// `wordToSynsets` (synsets file), each set sorted.
    pub word_to_synsets: FxHashMap<String, Vec<u32>>,
    pub nbp: FxHashMap<String, Nbp>,
    pub paraphrases: Paraphrases,
    pub jar: PathBuf,
    pub paraphrase_file: PathBuf,
}

/// `BufferedReader.readLine` over a decoded file: lines end at `\n`, `\r\n` or `\r`.
pub fn java_lines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        if b[i] == b'\n' || b[i] == b'\r' {
            out.push(&s[start..i]);
            if b[i] == b'\r' && i + 1 < b.len() && b[i + 1] == b'\n' {
                i += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    if start < b.len() {
        out.push(&s[start..]);
    }
    out
}

/// `java.util.StringTokenizer` with its default delimiters `" \t\n\r\f"`.
pub fn java_tokens(s: &str) -> impl Iterator<Item = &str> {
    s.split([' ', '\t', '\n', '\r', '\x0c'])
        .filter(|t| !t.is_empty())
}

fn u16le(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32le(b: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// Read the named entries of a zip (jar) file: stored or deflated, no zip64 (a jar of a few MB).
pub fn read_zip_entries(path: &Path, names: &[&str]) -> Result<Vec<Vec<u8>>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    let bad = |what: &str| {
        Error::config(format!(
            "{}: expected METEOR 1.5's jar (a zip file), {what}",
            path.display()
        ))
    };
    // End of central directory record: signature 0x06054b50, searched from the end.
    let min = raw.len().saturating_sub(22 + 65535);
    let eocd = (min..raw.len().saturating_sub(21))
        .rev()
        .find(|&i| raw[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| bad("found no zip directory"))?;
    let count = u16le(&raw, eocd + 10).ok_or_else(|| bad("truncated"))?;
    let mut at = u32le(&raw, eocd + 16).ok_or_else(|| bad("truncated"))?;
    let mut found: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut dec = libdeflater::Decompressor::new();
    for _ in 0..count {
        if raw.get(at..at + 4) != Some(&[0x50, 0x4b, 0x01, 0x02][..]) {
            return Err(bad("its zip directory is corrupt"));
        }
        let get2 = |o| u16le(&raw, at + o).ok_or_else(|| bad("truncated"));
        let get4 = |o| u32le(&raw, at + o).ok_or_else(|| bad("truncated"));
        let method = get2(10)?;
        let csize = get4(20)?;
        let usize_ = get4(24)?;
        let (nlen, xlen, clen) = (get2(28)?, get2(30)?, get2(32)?);
        let local = get4(42)?;
        let name = raw
            .get(at + 46..at + 46 + nlen)
            .ok_or_else(|| bad("truncated"))?;
        at += 46 + nlen + xlen + clen;
        let Some(&want) = names.iter().find(|n| n.as_bytes() == name) else {
            continue;
        };
        let lnlen = u16le(&raw, local + 26).ok_or_else(|| bad("truncated"))?;
        let lxlen = u16le(&raw, local + 28).ok_or_else(|| bad("truncated"))?;
        let start = local + 30 + lnlen + lxlen;
        let data = raw
            .get(start..start + csize)
            .ok_or_else(|| bad("truncated"))?;
        let bytes = match method {
            0 => data.to_vec(),
            8 => {
                let mut out = vec![0u8; usize_];
                let n = dec
                    .deflate_decompress(data, &mut out)
                    .map_err(|e| bad(&format!("entry {want} does not inflate ({e:?})")))?;
                out.truncate(n);
                out
            }
            m => return Err(bad(&format!("entry {want} uses compression method {m}"))),
        };
        found.insert(want, bytes);
    }
    names
        .iter()
        .map(|n| {
            found
                .remove(n)
                .ok_or_else(|| bad(&format!("it has no entry {n}")))
        })
        .collect()
}

fn utf8(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn parse_function_words(s: &str) -> FxHashSet<String> {
    java_lines(s).into_iter().map(str::to_string).collect()
}

type Synonyms = (FxHashMap<String, Vec<String>>, FxHashMap<String, Vec<u32>>);

fn parse_synonyms(exc: &str, syn: &str) -> Synonyms {
    let mut bases: FxHashMap<String, Vec<String>> = FxHashMap::default();
    let lines = java_lines(exc);
    for pair in lines.chunks(2) {
        let base = pair[0];
        let forms = pair.get(1).copied().unwrap_or("");
        for form in java_tokens(forms) {
            bases
                .entry(form.to_string())
                .or_default()
                .push(base.to_string());
        }
    }
    let mut sets: FxHashMap<String, Vec<u32>> = FxHashMap::default();
    let lines = java_lines(syn);
    for pair in lines.chunks(2) {
        let word = pair[0];
        let ids = pair.get(1).copied().unwrap_or("");
        // Integer.parseInt; an unparsable id would stop the jar, here it is skipped
        let mut v: Vec<u32> = java_tokens(ids).filter_map(|t| t.parse().ok()).collect();
        v.sort_unstable();
        v.dedup();
        sets.insert(word.to_string(), v);
    }
    (bases, sets)
}

fn parse_nbp(s: &str) -> FxHashMap<String, Nbp> {
    let mut d = FxHashMap::default();
    for line in java_lines(s) {
        let mut tok = java_tokens(line);
        let Some(pre) = tok.next() else { continue };
        if pre.starts_with('#') {
            continue;
        }
        let ty = if tok.next() == Some("#NUMERIC_ONLY#") {
            Nbp::NumOnly
        } else {
            Nbp::Any
        };
        d.insert(pre.to_string(), ty);
    }
    d
}

fn gunzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    let bad = |what: String| {
        Error::config(format!(
            "{}: expected METEOR's gzip paraphrase table, {what}",
            path.display()
        ))
    };
    if raw.len() < 18 || raw[0] != 0x1f || raw[1] != 0x8b {
        return Err(bad("got a file that is not gzip".into()));
    }
    // one gzip member: ISIZE gives the size; otherwise fall back to a streaming decoder
    let isize_ = u32le(&raw, raw.len() - 4).unwrap_or(0);
    let mut out = vec![0u8; isize_ + 1];
    if let Ok(n) = libdeflater::Decompressor::new().gzip_decompress(&raw, &mut out) {
        if n == isize_ {
            out.truncate(n);
            return Ok(out);
        }
    }
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("it does not decompress ({e})")))?;
    Ok(out)
}

/// One chunk of parsed paraphrase entries with chunk-local word ids.
struct Chunk<'a> {
    words: Vec<&'a [u8]>,
    /// per entry: ref length, par length; then the ids
    lens: Vec<(u32, u32)>,
    ids: Vec<u32>,
}

fn tokens_bytes(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0c))
        .filter(|t| !t.is_empty())
}

fn parse_chunk<'a>(buf: &'a [u8], lines: &[(u32, u32)]) -> Chunk<'a> {
    let mut local: FxHashMap<&'a [u8], u32> = FxHashMap::default();
    let mut c = Chunk {
        words: Vec::new(),
        lens: Vec::with_capacity(lines.len() / 3),
        ids: Vec::with_capacity(lines.len()),
    };
    for e in lines.chunks(3) {
        // line 0 is a probability the jar ignores; a truncated last entry makes the jar read
        // null lines (an exception it prints): such an entry is dropped here.
        if e.len() < 3 {
            break;
        }
        let mut lens = [0u32; 2];
        for (k, &(a, b)) in e[1..].iter().enumerate() {
            for t in tokens_bytes(&buf[a as usize..b as usize]) {
                let next = local.len() as u32;
                let id = *local.entry(t).or_insert_with(|| {
                    c.words.push(t);
                    next
                });
                c.ids.push(id);
                lens[k] += 1;
            }
        }
        c.lens.push((lens[0], lens[1]));
    }
    c
}

fn parse_paraphrases(buf: &[u8]) -> Result<Paraphrases> {
    if buf.len() >= u32::MAX as usize {
        return Err(Error::config(format!(
            "METEOR paraphrase table: expected under 4 GiB of text, got {} bytes",
            buf.len()
        )));
    }
    // line spans (Java readLine: \n, \r\n or \r end a line)
    let n = buf.len();
    let parts = rayon::current_num_threads().max(1) * 4;
    let step = n.div_ceil(parts).max(1);
    let spans: Vec<Vec<(u32, u32)>> = (0..parts)
        .into_par_iter()
        .map(|k| {
            let (lo, hi) = ((k * step).min(n), ((k + 1) * step).min(n));
            // a line belongs to the part where it starts; start after the first break before lo
            let mut start = if lo == 0 {
                0
            } else {
                match buf[..lo].iter().rposition(|&c| c == b'\n' || c == b'\r') {
                    Some(p) => p + 1,
                    None => 0,
                }
            };
            // `\r\n` straddling: the break before lo was \r and buf[lo-1..] continues with \n
            if start > 0 && buf[start - 1] == b'\r' && buf.get(start) == Some(&b'\n') {
                start += 1;
            }
            let mut out = Vec::new();
            if start < lo && lo != 0 {
                // the line containing lo started in an earlier part: skip to its end
                match buf[lo..].iter().position(|&c| c == b'\n' || c == b'\r') {
                    Some(p) => {
                        let mut e = lo + p + 1;
                        if buf[lo + p] == b'\r' && buf.get(e) == Some(&b'\n') {
                            e += 1;
                        }
                        start = e;
                    }
                    None => return out,
                }
            }
            let mut i = start;
            while i < hi {
                let e = match buf[i..].iter().position(|&c| c == b'\n' || c == b'\r') {
                    Some(p) => i + p,
                    None => n,
                };
                out.push((i as u32, e as u32));
                let mut nx = e + 1;
                if e < n && buf[e] == b'\r' && buf.get(nx) == Some(&b'\n') {
                    nx += 1;
                }
                i = nx;
            }
            out
        })
        .collect();
    let lines: Vec<(u32, u32)> = spans.into_iter().flatten().collect();
    // parse entries (3 lines each) in parallel chunks aligned to entries
    let entries = lines.len() / 3 + usize::from(lines.len() % 3 != 0);
    let per = entries.div_ceil(parts).max(1) * 3;
    let chunks: Vec<Chunk> = lines
        .par_chunks(per)
        .map(|ls| parse_chunk(buf, ls))
        .collect();
    // merge vocabularies in order (deterministic ids)
    let mut vocab: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
    let remaps: Vec<Vec<u32>> = chunks
        .iter()
        .map(|c| {
            c.words
                .iter()
                .map(|w| {
                    let next = vocab.len() as u32;
                    *vocab.entry(Box::from(*w)).or_insert(next)
                })
                .collect()
        })
        .collect();
    let total: usize = chunks.iter().map(|c| c.lens.len()).sum();
    let mut trie: FxHashMap<u64, u32> = FxHashMap::default();
    trie.reserve(total);
    let mut emit_state: Vec<u32> = Vec::with_capacity(total);
    let mut para_off: Vec<u32> = Vec::with_capacity(total + 1);
    let mut para_words: Vec<u32> = Vec::with_capacity(total * 2);
    para_off.push(0);
    let mut states: u32 = 1;
    for (c, remap) in chunks.iter().zip(&remaps) {
        let mut at = 0usize;
        for &(rl, pl) in &c.lens {
            let mut state = 0u32;
            for &id in &c.ids[at..at + rl as usize] {
                let key = ((state as u64) << 32) | remap[id as usize] as u64;
                state = *trie.entry(key).or_insert_with(|| {
                    states += 1;
                    states - 1
                });
            }
            at += rl as usize;
            emit_state.push(state);
            para_words.extend(
                c.ids[at..at + pl as usize]
                    .iter()
                    .map(|&id| remap[id as usize]),
            );
            at += pl as usize;
            para_off.push(para_words.len() as u32);
        }
    }
    // counting sort of emits by state keeps file order within a state
    let mut emit_off = vec![0u32; states as usize + 1];
    for &s in &emit_state {
        emit_off[s as usize + 1] += 1;
    }
    for i in 0..states as usize {
        emit_off[i + 1] += emit_off[i];
    }
    let mut fill = emit_off.clone();
    let mut emit_vals = vec![0u32; emit_state.len()];
    let mut emit_first = vec![0u32; emit_state.len()];
    for (p, &s) in emit_state.iter().enumerate() {
        emit_vals[fill[s as usize] as usize] = p as u32;
        emit_first[fill[s as usize] as usize] = if para_off[p] < para_off[p + 1] {
            para_words[para_off[p] as usize]
        } else {
            u32::MAX
        };
        fill[s as usize] += 1;
    }
    Ok(Paraphrases {
        vocab,
        trie,
        emit_off,
        emit_vals,
        emit_first,
        para_off,
        para_words,
    })
}

impl Resources {
    /// Load from `jar` and `paraphrase_file` (default: `<jar dir>/data/paraphrase-en.gz`).
    pub fn load(jar: &Path, paraphrase_file: Option<&Path>) -> Result<Resources> {
        let para_path = match paraphrase_file {
            Some(p) => p.to_path_buf(),
            None => jar
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("data")
                .join("paraphrase-en.gz"),
        };
        for p in [jar, para_path.as_path()] {
            if !p.is_file() {
                return Err(Error::config(format!(
                    "METEOR: expected {} (pycocoevalcap's meteor-1.5.jar and its \
                     data/paraphrase-en.gz), no such file",
                    p.display()
                )));
            }
        }
        let (texts, para) = rayon::join(
            || {
                read_zip_entries(
                    jar,
                    &[
                        "function/english.words",
                        "synonym/english.exceptions",
                        "synonym/english.synsets",
                        "nonbreaking/english.prefixes",
                    ],
                )
            },
            || gunzip(&para_path).and_then(|b| parse_paraphrases(&b)),
        );
        let mut texts = texts?.into_iter().map(utf8);
        let para = para?;
        let (fw, exc, syn, nbp) = match (texts.next(), texts.next(), texts.next(), texts.next()) {
            (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
            _ => return Err(Error::config("METEOR: jar entries missing")),
        };
        let (word_to_bases, word_to_synsets) = parse_synonyms(&exc, &syn);
        Ok(Resources {
            function_words: parse_function_words(&fw),
            word_to_bases,
            word_to_synsets,
            nbp: parse_nbp(&nbp),
            paraphrases: para,
            jar: jar.to_path_buf(),
            paraphrase_file: para_path,
        })
    }

    /// Load once per (jar, paraphrase file) and keep for the process.
    pub fn cached(jar: &Path, paraphrase_file: Option<&Path>) -> Result<Arc<Resources>> {
        type Cache = Mutex<HashMap<(PathBuf, Option<PathBuf>), Arc<Resources>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let key = (jar.to_path_buf(), paraphrase_file.map(Path::to_path_buf));
        {
            let g = cache
                .lock()
                .map_err(|_| Error::config("METEOR: resource cache lock poisoned"))?;
            if let Some(r) = g.get(&key) {
                return Ok(r.clone());
            }
        }
        let r = Arc::new(Resources::load(jar, paraphrase_file)?);
        let mut g = cache
            .lock()
            .map_err(|_| Error::config("METEOR: resource cache lock poisoned"))?;
        Ok(g.entry(key).or_insert(r).clone())
    }
}
