//! Decoding loops in Rust over a preallocated KV cache: greedy, sampling (temperature, top-k,
//! top-p) and beam search, batched with left padding, as transformers' `generate` (v5 semantics:
//! repetition penalty, then temperature, top-k, top-p; beam search keeps `max(2, 1 + n_eos) *
//! num_beams` candidates and finishes beams at EOS or at the length limit, scored by
//! `sum log p / generated_len ** length_penalty`).

use tch::{Kind, Tensor};

use super::cache::KvCache;
use super::decode_cpu::CpuDecoder;
use super::model::{ForwardOptions, Fused, Input, Llama};
use crate::check;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct GenerationConfig {
    pub max_new_tokens: i64,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_k: i64,
    pub top_p: f64,
    pub num_beams: i64,
    pub repetition_penalty: f64,
    pub length_penalty: f64,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: i64,
    /// Decode steps through the fused float32 CPU kernels when the model qualifies
    /// ([`Llama::cpu_decoder`]); false runs every step through libtorch ops.
    pub cpu_kernels: bool,
}

impl GenerationConfig {
    pub fn validate(&self, vocab: i64) -> Result<()> {
        if self.max_new_tokens < 1 {
            return Err(Error::config(format!(
                "max_new_tokens: expected >= 1, got {}",
                self.max_new_tokens
            )));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::config(format!(
                "temperature: expected > 0, got {}",
                self.temperature
            )));
        }
        if self.top_k < 0 {
            return Err(Error::config(format!(
                "top_k: expected >= 0 (0 disables), got {}",
                self.top_k
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config(format!(
                "top_p: expected a value in (0, 1], got {}",
                self.top_p
            )));
        }
        if self.num_beams < 1 {
            return Err(Error::config(format!(
                "num_beams: expected >= 1, got {}",
                self.num_beams
            )));
        }
        if self.num_beams > 1024 {
            return Err(Error::config(format!(
                "num_beams: expected at most 1024, got {}",
                self.num_beams
            )));
        }
        if !self.length_penalty.is_finite() {
            return Err(Error::config(format!(
                "length_penalty: expected a finite number, got {}",
                self.length_penalty
            )));
        }
        if self.num_beams > 1 && self.do_sample {
            return Err(Error::config(
                "num_beams > 1 with do_sample: beam sampling is not supported",
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::config(format!(
                "repetition_penalty: expected > 0, got {}",
                self.repetition_penalty
            )));
        }
        for &t in self
            .eos_token_ids
            .iter()
            .chain(std::iter::once(&self.pad_token_id))
        {
            if t < 0 || t >= vocab {
                return Err(Error::config(format!(
                    "eos/pad token id {t} is outside the vocabulary [0, {})",
                    vocab
                )));
            }
        }
        Ok(())
    }
}

/// What the caller sees after every step: the new tokens `[B]`; returning false stops early.
pub type StepCallback<'a> = dyn FnMut(&Tensor) -> Result<bool> + 'a;

fn repetition_penalty(scores: &Tensor, seen: &Tensor, penalty: f64) -> Result<Tensor> {
    if penalty == 1.0 || seen.size()[1] == 0 {
        return Ok(scores.shallow_clone());
    }
    // transformers: score < 0 ? score * penalty : score / penalty, on every token seen
    let s = scores.f_gather(1, seen, false)?;
    let s = s
        .f_mul_scalar(penalty)?
        .f_where_self(&s.f_lt(0.0)?, &s.f_div_scalar(penalty)?)?;
    Ok(scores.f_scatter(1, seen, &s)?)
}

fn warp(scores: &Tensor, cfg: &GenerationConfig) -> Result<Tensor> {
    let mut s = scores.shallow_clone();
    if cfg.temperature != 1.0 {
        s = s.f_div_scalar(cfg.temperature)?;
    }
    let v = s.size()[1];
    if cfg.top_k > 0 && cfg.top_k < v {
        let (top, _) = s.f_topk(cfg.top_k, -1, true, true)?;
        let kth = top.f_narrow(1, cfg.top_k - 1, 1)?;
        s = s.f_masked_fill(&s.f_lt_tensor(&kth)?, f64::NEG_INFINITY)?;
    }
    if cfg.top_p < 1.0 {
        let (sorted, idx) = s.f_sort(-1, false)?;
        let cum = sorted
            .f_softmax(-1, Kind::Float)?
            .f_cumsum(-1, Kind::Float)?;
        let remove_sorted = cum.f_le(1.0 - cfg.top_p)?;
        // keep at least the most probable token (the last in ascending order)
        let last = remove_sorted.f_narrow(1, v - 1, 1)?.f_zeros_like()?;
        let remove_sorted = Tensor::f_cat(&[remove_sorted.f_narrow(1, 0, v - 1)?, last], 1)?;
        let remove = remove_sorted.f_scatter(1, &idx, &remove_sorted)?;
        s = s.f_masked_fill(&remove, f64::NEG_INFINITY)?;
    }
    Ok(s)
}

struct Prompt {
    input: Tensor,
    is_embeds: bool,
    mask: Tensor,
    ids: Tensor, // token ids seen so far (for the repetition penalty); [B, 0] for embeddings
}

fn positions(mask: &Tensor) -> Result<Tensor> {
    // transformers: cumsum(mask) - 1, padded positions set to 1
    let p = mask
        .f_to_kind(Kind::Int64)?
        .f_cumsum(-1, Kind::Int64)?
        .f_sub_scalar(1)?;
    Ok(p.f_masked_fill(&mask.f_eq(0)?, 1)?)
}

fn prepare(model: &Llama, input: Input<'_>, mask: Option<&Tensor>) -> Result<Prompt> {
    let dev = model.device();
    let (input, is_embeds, ids) = match input {
        Input::Ids(t) => {
            check::dims(t, "input_ids", 2, "[B, T]")?;
            (t.shallow_clone(), false, t.f_to_kind(Kind::Int64)?)
        }
        Input::Embeds(e) => {
            let s = check::dims(e, "inputs_embeds", 3, "[B, T, hidden_size]")?;
            (
                e.shallow_clone(),
                true,
                Tensor::f_zeros([s[0], 0], (Kind::Int64, dev))?,
            )
        }
    };
    let s = input.size();
    let (b, t) = (s[0], s[1]);
    if b == 0 || t == 0 {
        return Err(Error::shape(format!(
            "input: expected a non-empty [B, T] prompt, got shape {s:?}"
        )));
    }
    let mask = match mask {
        Some(m) => {
            let ms = check::dims(m, "attention_mask", 2, "[B, T]")?;
            if ms != [b, t] {
                return Err(Error::shape(format!(
                    "attention_mask: expected shape [{b}, {t}] (as the prompt), got {ms:?}"
                )));
            }
            check::same_device(m, "attention_mask", dev, "the model")?;
            m.f_to_kind(Kind::Int64)?
        }
        None => Tensor::f_ones([b, t], (Kind::Int64, dev))?,
    };
    Ok(Prompt {
        input,
        is_embeds,
        mask,
        ids,
    })
}

fn first_forward(
    model: &Llama,
    p: &Prompt,
    cache: &mut KvCache,
    fused: &[Option<Fused>],
) -> Result<Tensor> {
    let pos = positions(&p.mask)?;
    let input = if p.is_embeds {
        Input::Embeds(&p.input)
    } else {
        Input::Ids(&p.input)
    };
    let out = model.forward(
        input,
        Some(cache),
        &ForwardOptions {
            attention_mask: Some(&p.mask),
            position_ids: Some(&pos),
            last_only: true,
            fused: Some(fused),
            ..Default::default()
        },
    )?;
    Ok(out.logits.f_select(1, 0)?.f_to_kind(Kind::Float)?)
}

/// The inference weights of one `generate` call: the fused CPU step when the model qualifies,
/// else fused projections (copies) for the libtorch step.
struct Decoder {
    fused: Vec<Option<Fused>>,
    cpu: Option<CpuDecoder>,
}

impl Decoder {
    fn new(model: &Llama, cfg: &GenerationConfig) -> Result<Self> {
        let cpu = if cfg.cpu_kernels {
            model.cpu_decoder()?
        } else {
            None
        };
        // the CPU step reads the weights in place; the prompt's forward then runs unfused
        let fused = if cpu.is_some() {
            Vec::new()
        } else {
            model.fuse_for_inference()?
        };
        Ok(Decoder { fused, cpu })
    }
}

/// libtorch's intra-op thread count set to one while the fused CPU steps run, restored on drop.
/// Between those steps only small bookkeeping ops (log-softmax, top-k, index_select) run in
/// libtorch; each parallel one leaves libtorch's OpenMP workers spin-waiting for milliseconds
/// on the same cores that the step's own threads need (one spinning worker next to two step
/// threads on two cores). With one libtorch thread these ops run inline and nothing spins.
struct SerialTorch(i32);

impl SerialTorch {
    fn when(active: bool) -> Option<Self> {
        active.then(|| {
            let n = tch::get_num_threads();
            tch::set_num_threads(1);
            SerialTorch(n)
        })
    }
}

impl Drop for SerialTorch {
    fn drop(&mut self) {
        tch::set_num_threads(self.0.max(1));
    }
}

/// A tensor's values as int64 on the host, flattened.
fn i64s(t: &Tensor) -> Result<Vec<i64>> {
    Ok(Vec::<i64>::try_from(
        t.f_to_kind(Kind::Int64)?
            .f_to_device(tch::Device::Cpu)?
            .f_reshape([-1])?,
    )?)
}

fn step_forward(
    model: &Llama,
    tok: &Tensor,
    mask: Option<&Tensor>,
    pos: &Tensor,
    cache: &mut KvCache,
    dec: &Decoder,
) -> Result<Tensor> {
    if let Some(cpu) = &dec.cpu {
        let key_mask = mask.map(i64s).transpose()?;
        return cpu.step(&i64s(tok)?, &i64s(pos)?, key_mask.as_deref(), cache);
    }
    let fused = &dec.fused;
    let ids = tok.f_view([-1, 1])?;
    let out = model.forward(
        Input::Ids(&ids),
        Some(cache),
        &ForwardOptions {
            attention_mask: mask,
            position_ids: Some(pos),
            last_only: true,
            fused: Some(fused),
            ..Default::default()
        },
    )?;
    Ok(out.logits.f_select(1, 0)?.f_to_kind(Kind::Float)?)
}

/// Generate up to `max_new_tokens` per row; returns the new tokens `[B, n]` (padded with
/// `pad_token_id` after a row's EOS).
pub fn generate(
    model: &Llama,
    input: Input<'_>,
    attention_mask: Option<&Tensor>,
    cfg: &GenerationConfig,
    mut callback: Option<&mut StepCallback<'_>>,
) -> Result<Tensor> {
    cfg.validate(model.cfg.vocab_size)?;
    if cfg.num_beams > 1 && callback.is_some() {
        // as transformers: beams are reordered at every step, so no token is final before the
        // end and there is nothing to stream
        return Err(Error::config(format!(
            "streamer: not supported with beam search (num_beams {}); stream with num_beams=1",
            cfg.num_beams
        )));
    }
    let _guard = tch::no_grad_guard();
    let p = prepare(model, input, attention_mask)?;
    let t = p.mask.size()[1];
    if t + cfg.max_new_tokens > model.cfg.max_position_embeddings {
        return Err(Error::shape(format!(
            "prompt of {t} tokens + max_new_tokens {} exceed the model's context of {} (max_position_embeddings)",
            cfg.max_new_tokens, model.cfg.max_position_embeddings
        )));
    }
    if cfg.num_beams > 1 {
        return beam_search(model, p, cfg);
    }
    let dev = model.device();
    let s = p.mask.size();
    let (b, t) = (s[0], s[1]);
    let mcfg = &model.cfg;
    let mut cache = KvCache::new(
        mcfg.num_hidden_layers,
        b,
        mcfg.num_key_value_heads,
        mcfg.head_dim,
        t + cfg.max_new_tokens,
        model.kind(),
        dev,
    )?;
    let eos = Tensor::from_slice(&cfg.eos_token_ids).f_to_device(dev)?;
    let dec = Decoder::new(model, cfg)?;
    let mut logits = first_forward(model, &p, &mut cache, &dec.fused)?;
    let _serial = SerialTorch::when(dec.cpu.is_some());
    // without padding the decode steps need no mask at all
    let padded = !bool::try_from(p.mask.f_ne(0)?.f_all()?)?;
    let mut mask = p.mask.shallow_clone();
    let mut pos = positions(&mask)?.f_narrow(1, t - 1, 1)?;
    let penalize = cfg.repetition_penalty != 1.0;
    let mut seen = p.ids.shallow_clone();
    let mut finished = Tensor::f_zeros([b], (Kind::Bool, dev))?;
    let mut out: Vec<Tensor> = Vec::new();
    for step in 0..cfg.max_new_tokens {
        let scores = repetition_penalty(&logits, &seen, cfg.repetition_penalty)?;
        let next = if cfg.do_sample {
            warp(&scores, cfg)?
                .f_softmax(-1, Kind::Float)?
                .f_multinomial(1, false)?
                .f_squeeze_dim(1)?
        } else {
            scores.f_argmax(-1, false)?
        };
        let next = next.f_masked_fill(&finished, cfg.pad_token_id)?;
        out.push(next.shallow_clone());
        if !cfg.eos_token_ids.is_empty() {
            finished = finished.f_logical_or(&Tensor::f_isin(&next, &eos, false, false)?)?;
        }
        if let Some(cb) = callback.as_deref_mut() {
            if !cb(&next)? {
                break;
            }
        }
        if bool::try_from(finished.f_all()?)? || step + 1 == cfg.max_new_tokens {
            break;
        }
        if penalize {
            seen = Tensor::f_cat(&[&seen, &next.f_view([b, 1])?], 1)?;
        }
        if padded {
            mask = Tensor::f_cat(&[&mask, &Tensor::f_ones([b, 1], (Kind::Int64, dev))?], 1)?;
        }
        pos = pos.f_add_scalar(1)?;
        logits = step_forward(
            model,
            &next,
            padded.then_some(&mask),
            &pos,
            &mut cache,
            &dec,
        )?;
    }
    Ok(Tensor::f_stack(&out, 1)?)
}

/// A beam-search candidate: (accumulated score, index `beam * V + token`).
type Cand = (f32, i64);

/// `x` ranks before `y` in `torch.topk(largest=True)` on CPU: ATen's comparator (NaN above every
/// number, then greater first; exact ties compare false both ways).
fn before(x: f32, y: f32) -> bool {
    (x.is_nan() && !y.is_nan()) || x > y
}

/// libstdc++'s `std::__adjust_heap` (bits/stl_heap.h, with its `std::__push_heap` tail) on
/// `heap[..len]` under [`before`] as the heap's "less": sift the hole at `hole` down to a leaf,
/// then push `value` up from there. The heap's top is the candidate that ranks last.
fn adjust_heap(heap: &mut [Cand], hole: usize, len: usize, value: Cand) {
    // signed as the C++ `_Distance`, so that `(x - 1) / 2` truncates as there
    let (top, len) = (hole as isize, len as isize);
    let (mut hole, mut second) = (top, top);
    let at = |i: isize| i as usize;
    while second < (len - 1) / 2 {
        second = 2 * (second + 1);
        if before(heap[at(second)].0, heap[at(second - 1)].0) {
            second -= 1;
        }
        heap[at(hole)] = heap[at(second)];
        hole = second;
    }
    if len & 1 == 0 && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        heap[at(hole)] = heap[at(second - 1)];
        hole = second - 1;
    }
    let mut parent = (hole - 1) / 2;
    while hole > top && before(heap[at(parent)].0, value.0) {
        heap[at(hole)] = heap[at(parent)];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    heap[at(hole)] = value;
}

/// Beam search's candidate selection on the host, exactly as transformers' `torch.topk` over
/// `log_softmax(logits) + beam_score` per batch row picks it on CPU, ties included: for every row
/// of `nb` beams (`logp` is `[rows * nb, V]`, `scores` `[rows * nb]`), the `keep` best
/// `logp[beam, token] + score[beam]` (added in float32, as the tensor op) over its `nb * V`
/// candidates, best first, into `top_s` / `top_i` (`[rows, keep]`, index `beam * V + token`).
///
/// ATen's CPU top-k (`topk_impl_loop`, aten/src/ATen/native/TopKImpl.h) copies a row into a
/// queue of (value, index) and, when `k * 64 <= n`, calls `std::partial_sort` with its
/// comparator ([`before`]); libstdc++'s `partial_sort` (bits/stl_algo.h `__partial_sort`) is
/// `__heap_select` (make a heap of the first `k`, then each later candidate that ranks strictly
/// before the heap's top replaces it through `__pop_heap`) and `__sort_heap`. Neither is stable,
/// so the order of exactly equal scores is the heap's, not the lower index first; this is a
/// transcription of those steps. Only for `keep * 64 <= nb * V` (else ATen runs
/// `std::nth_element` + `std::sort`; the caller then runs `topk` itself), `keep >= 1`.
fn top_candidates(
    logp: &[f32],
    scores: &[f64],
    nb: usize,
    keep: usize,
    top_s: &mut Vec<f32>,
    top_i: &mut Vec<i64>,
) {
    let v = logp.len() / scores.len().max(1);
    top_s.clear();
    top_i.clear();
    let mut heap: Vec<Cand> = Vec::with_capacity(keep);
    for (lp_row, sc_row) in logp.chunks_exact(nb * v).zip(scores.chunks_exact(nb)) {
        // __make_heap over the first `keep` candidates
        heap.clear();
        heap.extend((0..keep).map(|j| (lp_row[j] + sc_row[j / v] as f32, j as i64)));
        if keep >= 2 {
            let mut parent = (keep - 2) / 2;
            loop {
                let value = heap[parent];
                adjust_heap(&mut heap, parent, keep, value);
                if parent == 0 {
                    break;
                }
                parent -= 1;
            }
        }
        // __heap_select over the rest, in index order
        for (k, (lp, &sc)) in lp_row.chunks_exact(v).zip(sc_row).enumerate() {
            let sc = sc as f32;
            let first = (keep.saturating_sub(k * v)).min(v);
            for (t, &l) in lp.iter().enumerate().skip(first) {
                let c = l + sc;
                if before(c, heap[0].0) {
                    adjust_heap(&mut heap, 0, keep, (c, (k * v + t) as i64));
                }
            }
        }
        // __sort_heap: pop the top (the last-ranked) to the back, one by one
        for last in (1..keep).rev() {
            let value = heap[last];
            heap[last] = heap[0];
            adjust_heap(&mut heap, 0, last, value);
        }
        top_s.extend(heap.iter().map(|e| e.0));
        top_i.extend(heap.iter().map(|e| e.1));
    }
}

/// `torch.topk(x.view(rows, n), k)` indices on CPU, `[rows, k]` flattened: the small selections
/// of transformers' beam search run through libtorch's own top-k, so that exactly tied scores
/// come out in its order (`k * 64 > n` here: `std::nth_element` + `std::sort`).
fn small_topk(x: &[f32], rows: usize, k: i64) -> Result<Vec<i64>> {
    let t = Tensor::from_slice(x).f_view([rows as i64, -1])?;
    i64s(&t.f_topk(k, 1, true, true)?.1)
}

/// One of the `num_beams` finished-hypothesis slots of a batch row (transformers' `sequences`,
/// `beam_scores`, `is_sent_finished`), float32 scores as there.
#[derive(Clone)]
struct Slot {
    score: f32,
    tokens: Vec<i64>,
    finished: bool,
}

fn beam_search(model: &Llama, p: Prompt, cfg: &GenerationConfig) -> Result<Tensor> {
    let dev = model.device();
    let nb = cfg.num_beams;
    let s = p.mask.size();
    let (b, t) = (s[0], s[1]);
    let v = model.cfg.vocab_size;
    let rep = Tensor::from_slice(&vec![nb; b as usize]).f_to_device(dev)?;
    let expand = |x: &Tensor| -> Result<Tensor> {
        Ok(x.f_repeat_interleave_self_tensor(&rep, 0, None::<i64>)?)
    };
    let mcfg = &model.cfg;
    // the prompt runs once per row (its beams would compute the same keys, values and logits);
    // the cache is then expanded to the beams: shared through a row table for the fused CPU
    // step (beam reordering rewrites the table, nothing is copied), else copied per beam
    let mut cache = KvCache::new(
        mcfg.num_hidden_layers,
        b,
        mcfg.num_key_value_heads,
        mcfg.head_dim,
        t + cfg.max_new_tokens,
        model.kind(),
        dev,
    )?;
    let dec = Decoder::new(model, cfg)?;
    let mut logits = expand(&first_forward(model, &p, &mut cache, &dec.fused)?)?;
    cache.expand_rows(nb, dec.cpu.is_some())?;
    let _serial = SerialTorch::when(dec.cpu.is_some());
    let p = Prompt {
        input: p.input,
        is_embeds: p.is_embeds,
        mask: expand(&p.mask)?,
        ids: expand(&p.ids)?,
    };
    let mut mask = p.mask.shallow_clone();
    let mut pos = positions(&mask)?.f_narrow(1, t - 1, 1)?;
    let penalize = cfg.repetition_penalty != 1.0;
    let mut seen = p.ids.shallow_clone();
    // the fused CPU step's bookkeeping stays on the host: key mask [B*nb, cached] and positions
    // [B*nb] as plain vectors (no libtorch op per step); None: the prompt has no padding
    let fused = dec.cpu.is_some();
    let mut mask_v: Option<Vec<i64>> = if fused && !bool::try_from(mask.f_ne(0)?.f_all()?)? {
        Some(i64s(&mask)?)
    } else {
        None
    };
    let mut pos_v = if fused { i64s(&pos)? } else { Vec::new() };
    let mut logp_v: Vec<f32> = Vec::new();
    let (mut top_s, mut top_i): (Vec<f32>, Vec<i64>) = (Vec::new(), Vec::new());
    // running beams: scores [B*nb] (only beam 0 alive at first), generated tokens per beam
    let mut beam_scores: Vec<f64> = (0..b * nb)
        .map(|i| if i % nb == 0 { 0.0 } else { -1e9 })
        .collect();
    let mut seqs: Vec<Vec<i64>> = vec![Vec::new(); (b * nb) as usize];
    // transformers' finished slots per row (score -1e9 until filled) and its early-stop flag
    let mut slots: Vec<Slot> = vec![
        Slot {
            score: -1e9,
            tokens: Vec::new(),
            finished: false,
        };
        (b * nb) as usize
    ];
    let mut improvable = vec![true; b as usize];
    let keep = (2i64).max(1 + cfg.eos_token_ids.len() as i64) * nb;
    if keep > nb * v {
        return Err(Error::config(format!(
            "beam search keeps {keep} candidates per row ({nb} beams, {} EOS ids) but the \
             vocabulary gives only {} (num_beams x vocab_size)",
            cfg.eos_token_ids.len(),
            nb * v
        )));
    }
    // ATen's CPU top-k runs `std::partial_sort` (transcribed by `top_candidates`) only here
    let host_topk = fused && keep * 64 <= nb * v;
    for step in 0..cfg.max_new_tokens {
        let logp = logits.f_log_softmax(-1, Kind::Float)?;
        let logp = repetition_penalty(&logp, &seen, cfg.repetition_penalty)?;
        if host_topk {
            // one host pass: add each beam's score and keep the best candidates per row, in
            // `torch.topk`'s order (ties included), which transformers' beam search uses
            let n = logp.numel();
            logp_v.resize(n, 0.0);
            logp.f_contiguous()?.f_copy_data(&mut logp_v, n)?;
            top_candidates(
                &logp_v,
                &beam_scores,
                nb as usize,
                keep as usize,
                &mut top_s,
                &mut top_i,
            );
        } else {
            let bs = Tensor::from_slice(&beam_scores)
                .f_to_kind(Kind::Float)?
                .f_to_device(dev)?
                .f_view([-1, 1])?;
            let acc = logp.f_add(&bs)?.f_view([b, nb * v])?;
            let (s, i) = acc.f_topk(keep, 1, true, true)?;
            top_s = Vec::<f32>::try_from(s.f_to_device(tch::Device::Cpu)?.f_reshape([-1])?)?;
            top_i = i64s(&i)?;
        }
        let last = step + 1 == cfg.max_new_tokens;
        // transformers' `_beam_search` step, in its float32 arithmetic and with its `topk`
        // calls (tie order included): `_get_running_beams_for_next_iteration` keeps the best
        // `num_beams` of the candidates that did not stop (stopped ones get -1e9), then
        // `_update_finished_beams` merges the stopped ones among the first `num_beams` into the
        // finished slots
        let (nbu, keepu, bu) = (nb as usize, keep as usize, b as usize);
        let hits: Vec<bool> = top_i
            .iter()
            .map(|&idx| last || cfg.eos_token_ids.contains(&(idx % v)))
            .collect();
        let running: Vec<f32> = top_s
            .iter()
            .zip(&hits)
            .map(|(&s, &h)| if h { s + -1e9f32 } else { s })
            .collect();
        let next = small_topk(&running, bu, nb)?;
        let denom = ((step + 1) as f64).powf(cfg.length_penalty) as f32;
        let mut merged: Vec<f32> = Vec::with_capacity(bu * (nbu + keepu));
        for bi in 0..bu {
            merged.extend(slots[bi * nbu..(bi + 1) * nbu].iter().map(|sl| sl.score));
            for j in 0..keepu {
                let k = bi * keepu + j;
                let mut sc = top_s[k] / denom;
                if !improvable[bi] {
                    sc += -1e9f32;
                }
                if !(hits[k] && j < nbu) {
                    sc += -1e9f32;
                }
                merged.push(sc);
            }
        }
        let pick = small_topk(&merged, bu, nb)?;
        let mut new_slots = Vec::with_capacity(bu * nbu);
        for bi in 0..bu {
            for &m in &pick[bi * nbu..(bi + 1) * nbu] {
                let m = m as usize;
                new_slots.push(if m < nbu {
                    slots[bi * nbu + m].clone()
                } else {
                    let k = bi * keepu + (m - nbu);
                    let (src, tok) = (bi * nbu + (top_i[k] / v) as usize, top_i[k] % v);
                    let mut tokens = seqs[src].clone();
                    tokens.push(tok);
                    Slot {
                        score: merged[bi * (nbu + keepu) + m],
                        tokens,
                        finished: hits[k] && m - nbu < nbu,
                    }
                });
            }
        }
        slots = new_slots;
        let mut new_src = Vec::with_capacity(bu * nbu);
        let mut new_tok = Vec::with_capacity(bu * nbu);
        let mut new_scores = Vec::with_capacity(bu * nbu);
        for bi in 0..bu {
            for &j in &next[bi * nbu..(bi + 1) * nbu] {
                let k = bi * keepu + j as usize;
                new_src.push(bi as i64 * nb + top_i[k] / v);
                new_tok.push(top_i[k] % v);
                new_scores.push(running[k] as f64);
            }
            // `_check_early_stop_heuristic` (early_stopping=False): can the best running beam,
            // at the current length, still beat the worst finished slot?
            let row = &slots[bi * nbu..(bi + 1) * nbu];
            let best = running[bi * keepu + next[bi * nbu] as usize] / denom;
            let worst = row.iter().map(|sl| sl.score).fold(f32::INFINITY, f32::min);
            improvable[bi] &= row
                .iter()
                .any(|sl| best > if sl.finished { worst } else { -1e9 });
        }
        // `_beam_search_has_unfinished_sequences`
        if last || hits.iter().all(|&h| h) || !improvable.iter().any(|&i| i) {
            break;
        }
        seqs = new_src
            .iter()
            .zip(&new_tok)
            .map(|(&s, &t)| {
                let mut q = seqs[s as usize].clone();
                q.push(t);
                q
            })
            .collect();
        beam_scores = new_scores;
        cache.reorder_rows(&new_src)?;
        let src = Tensor::from_slice(&new_src).f_to_device(dev)?;
        let tok = Tensor::from_slice(&new_tok).f_to_device(dev)?;
        if penalize {
            seen = Tensor::f_cat(&[&seen.f_index_select(0, &src)?, &tok.f_view([-1, 1])?], 1)?;
        }
        if let Some(cpu) = &dec.cpu {
            pos_v = new_src.iter().map(|&s| pos_v[s as usize] + 1).collect();
            if let Some(m) = &mask_v {
                let w = m.len() / new_src.len();
                let mut next = Vec::with_capacity(new_src.len() * (w + 1));
                for &s in &new_src {
                    next.extend_from_slice(&m[s as usize * w..(s as usize + 1) * w]);
                    next.push(1);
                }
                mask_v = Some(next);
            }
            logits = cpu.step(&new_tok, &pos_v, mask_v.as_deref(), &mut cache)?;
            continue;
        }
        mask = Tensor::f_cat(
            &[
                &mask.f_index_select(0, &src)?,
                &Tensor::f_ones([b * nb, 1], (Kind::Int64, dev))?,
            ],
            1,
        )?;
        pos = pos.f_index_select(0, &src)?.f_add_scalar(1)?;
        logits = step_forward(model, &tok, Some(&mask), &pos, &mut cache, &dec)?;
    }
    // transformers returns its first finished slot (filled at the latest on the last step)
    let best: Vec<Vec<i64>> = slots
        .chunks(nb as usize)
        .map(|row| row[0].tokens.clone())
        .collect();
    let n = best.iter().map(Vec::len).max().unwrap_or(0);
    // transformers' beam search pads shorter results with `pad_token_id or eos_token_id[0]`: a pad
    // id of 0 (falsy in Python) pads with the first EOS id
    let fill = match cfg.eos_token_ids.first() {
        Some(&e) if cfg.pad_token_id == 0 => e,
        _ => cfg.pad_token_id,
    };
    let flat: Vec<i64> = best
        .iter()
        .flat_map(|s| {
            s.iter()
                .copied()
                .chain(std::iter::repeat_n(fill, n - s.len()))
        })
        .collect();
    Ok(Tensor::from_slice(&flat)
        .f_view([b, n as i64])?
        .f_to_device(dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::model::testing::tiny;
    use tch::Device;

    fn cfg(max_new_tokens: i64) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens,
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            num_beams: 1,
            repetition_penalty: 1.0,
            length_penalty: 1.0,
            eos_token_ids: vec![],
            pad_token_id: 0,
            cpu_kernels: false,
        }
    }

    /// Greedy decoding with the cache == argmax of a full forward over the growing sequence.
    #[test]
    fn greedy_matches_uncached_argmax() -> Result<()> {
        let model = tiny(0)?;
        let ids = Tensor::from_slice(&[3i64, 7, 1, 9, 4, 4]).view([2, 3]);
        let got = generate(&model, Input::Ids(&ids), None, &cfg(5), None)?;
        assert_eq!(got.size(), [2, 5]);
        let mut seq = ids.shallow_clone();
        let _g = tch::no_grad_guard();
        for _ in 0..5 {
            let out = model.forward(Input::Ids(&seq), None, &ForwardOptions::default())?;
            let next = out.logits.select(1, -1).argmax(-1, true);
            seq = Tensor::cat(&[&seq, &next], 1);
        }
        assert!(got.equal(&seq.narrow(1, 3, 5)));
        // the fused CPU step agrees on the tokens
        let fused = generate(
            &model,
            Input::Ids(&ids),
            None,
            &GenerationConfig {
                cpu_kernels: true,
                ..cfg(5)
            },
            None,
        )?;
        assert!(fused.equal(&got));
        Ok(())
    }

    #[test]
    fn eos_pads_and_the_callback_sees_every_step() -> Result<()> {
        let model = tiny(1)?;
        let ids = Tensor::from_slice(&[5i64, 2]).view([1, 2]);
        let free = generate(&model, Input::Ids(&ids), None, &cfg(6), None)?;
        let first = i64::try_from(free.get(0).get(1))?;
        let mut seen = Vec::new();
        let mut cb = |t: &Tensor| -> Result<bool> {
            seen.push(i64::try_from(t.get(0))?);
            Ok(true)
        };
        let c = GenerationConfig {
            eos_token_ids: vec![first],
            pad_token_id: 0,
            ..cfg(6)
        };
        let out = generate(&model, Input::Ids(&ids), None, &c, Some(&mut cb))?;
        // stops after the EOS (second token); the callback saw exactly what was returned
        assert_eq!(out.size(), [1, 2]);
        assert_eq!(seen, Vec::<i64>::try_from(out.reshape([-1]))?);
        // a callback returning false stops at once
        let mut stop = |_: &Tensor| -> Result<bool> { Ok(false) };
        let out = generate(&model, Input::Ids(&ids), None, &cfg(6), Some(&mut stop))?;
        assert_eq!(out.size(), [1, 1]);
        Ok(())
    }

    #[test]
    fn beam_search_of_one_beam_is_greedy_and_refuses_a_streamer() -> Result<()> {
        let model = tiny(2)?;
        let ids = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
        let greedy = generate(&model, Input::Ids(&ids), None, &cfg(4), None)?;
        let beams = generate(
            &model,
            Input::Ids(&ids),
            None,
            &GenerationConfig {
                num_beams: 3,
                ..cfg(4)
            },
            None,
        )?;
        assert_eq!(beams.size(), [1, 4]);
        let mut cb = |_: &Tensor| -> Result<bool> { Ok(true) };
        let r = generate(
            &model,
            Input::Ids(&ids),
            None,
            &GenerationConfig {
                num_beams: 2,
                ..cfg(4)
            },
            Some(&mut cb),
        );
        assert!(matches!(r, Err(Error::Config(m)) if m.contains("streamer")));
        // the beam result scores at least as well as greedy under the model
        let score = |new: &Tensor| -> Result<f64> {
            let seq = Tensor::cat(&[&ids, new], 1);
            let out = model.forward(Input::Ids(&seq), None, &ForwardOptions::default())?;
            let lp = out.logits.log_softmax(-1, Kind::Float).narrow(1, 2, 4);
            let tok = seq.narrow(1, 3, 4).unsqueeze(-1);
            Ok(f64::try_from(lp.gather(2, &tok, false).sum(Kind::Double))?)
        };
        let _g = tch::no_grad_guard();
        assert!(score(&beams)? >= score(&greedy)? - 1e-5);
        Ok(())
    }

    /// The host candidate selection against the tensor ops it replaces (log-softmax + beam
    /// score + `topk` over beams x vocabulary per row), with a dead beam (-1e9) as at step 0.
    #[test]
    fn top_candidates_match_topk() -> Result<()> {
        tch::manual_seed(7);
        let (b, nb, v, keep) = (3i64, 2i64, 150i64, 4i64);
        let logits = Tensor::randn([b * nb, v], (Kind::Float, Device::Cpu)) * 3.0;
        let logp = logits.log_softmax(-1, Kind::Float);
        let scores: Vec<f64> = vec![0.0, -1e9, -1.25, -3.5, -2.0, -2.0];
        let bs = Tensor::from_slice(&scores)
            .to_kind(Kind::Float)
            .view([-1, 1]);
        let (want_s, want_i) = (&logp + &bs).view([b, nb * v]).topk(keep, 1, true, true);
        let lp = Vec::<f32>::try_from(logp.reshape([-1]))?;
        let (mut s, mut i) = (Vec::new(), Vec::new());
        top_candidates(&lp, &scores, nb as usize, keep as usize, &mut s, &mut i);
        assert_eq!(s, Vec::<f32>::try_from(want_s.reshape([-1]))?);
        assert_eq!(i, Vec::<i64>::try_from(want_i.reshape([-1]))?);
        // four exactly tied candidates: `torch.topk(torch.zeros(256), 4)` gives [1, 3, 0, 2]
        // (the order its heap leaves them in), not the lower index first
        top_candidates(&[0f32; 256], &[0.0, 0.0], 2, 4, &mut s, &mut i);
        assert_eq!(i, [1, 3, 0, 2]);
        Ok(())
    }

    /// Exact ties everywhere (scores that are small integers, beams of equal score), at several
    /// sizes and `keep`s on the `std::partial_sort` side of ATen's top-k (`keep * 64 <= nb * V`),
    /// NaNs included: the same values and indices, in the same order, as libtorch's `topk`.
    #[test]
    fn top_candidates_break_ties_as_topk() -> Result<()> {
        tch::manual_seed(3);
        let mut lower_first_differs = 0;
        for (nb, v, keep) in [
            (2i64, 128i64, 4i64),
            (2, 300, 4),
            (3, 1000, 6),
            (2, 4096, 6),
            (1, 64, 1),
        ] {
            for trial in 0..20 {
                let b = 3i64;
                let levels = [2, 4, 30][trial % 3];
                let lp = Tensor::randint(levels, [b * nb, v], (Kind::Float, Device::Cpu)) - 1.0;
                if trial == 5 {
                    let _ = lp.get(1).get(7).fill_(f64::NAN);
                    let _ = lp.get(1).get(v - 2).fill_(f64::NAN);
                }
                let scores: Vec<f64> = (0..b * nb).map(|r| -((r % 2) as f64)).collect();
                let bs = Tensor::from_slice(&scores)
                    .to_kind(Kind::Float)
                    .view([-1, 1]);
                let (want_s, want_i) = (&lp + &bs).view([b, nb * v]).topk(keep, 1, true, true);
                let want_s = Vec::<f32>::try_from(want_s.reshape([-1]))?;
                let want_i = Vec::<i64>::try_from(want_i.reshape([-1]))?;
                let lpv = Vec::<f32>::try_from(lp.reshape([-1]))?;
                let (mut s, mut i) = (Vec::new(), Vec::new());
                top_candidates(&lpv, &scores, nb as usize, keep as usize, &mut s, &mut i);
                let same_s = s
                    .iter()
                    .zip(&want_s)
                    .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
                assert!(
                    same_s && s.len() == want_s.len(),
                    "{nb}x{v} keep {keep}: {s:?} vs {want_s:?}"
                );
                assert_eq!(i, want_i, "{nb}x{v} keep {keep} trial {trial}");
                // the tie order is the heap's: somewhere not the lower index first
                lower_first_differs += i
                    .chunks(keep as usize)
                    .zip(s.chunks(keep as usize))
                    .filter(|(ci, cs)| {
                        (1..ci.len()).any(|j| cs[j] == cs[j - 1] && ci[j] < ci[j - 1])
                    })
                    .count();
            }
        }
        assert!(lower_first_differs > 0);
        Ok(())
    }

    /// Beam search on the fused CPU step (host bookkeeping, row-table cache) against the libtorch
    /// step (tensor bookkeeping, cache gathered per beam): the same tokens on a left-padded batch
    /// with an EOS id, 2 and 3 beams.
    #[test]
    fn fused_beam_search_matches_libtorch_beam_search() -> Result<()> {
        let model = tiny(5)?;
        let ids = Tensor::from_slice(&[0i64, 0, 3, 7, 1, 9, 4, 4, 2, 8, 6, 5]).view([3, 4]);
        let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1]).view([3, 4]);
        for (nb, eos) in [(2, vec![]), (3, vec![11i64]), (2, vec![11, 13])] {
            let c = GenerationConfig {
                num_beams: nb,
                eos_token_ids: eos,
                length_penalty: 0.7,
                ..cfg(12)
            };
            let lib = generate(&model, Input::Ids(&ids), Some(&mask), &c, None)?;
            let fused = generate(
                &model,
                Input::Ids(&ids),
                Some(&mask),
                &GenerationConfig {
                    cpu_kernels: true,
                    ..c.clone()
                },
                None,
            )?;
            assert!(fused.equal(&lib), "{nb} beams: {fused:?} vs {lib:?}");
        }
        Ok(())
    }

    #[test]
    fn bad_settings_are_config_errors() -> Result<()> {
        let model = tiny(3)?;
        let ids = Tensor::from_slice(&[1i64, 2]).view([1, 2]);
        for c in [
            cfg(0),
            GenerationConfig {
                temperature: f64::NAN,
                ..cfg(2)
            },
            GenerationConfig {
                top_p: 0.0,
                ..cfg(2)
            },
            GenerationConfig {
                num_beams: 0,
                ..cfg(2)
            },
            GenerationConfig {
                length_penalty: f64::INFINITY,
                ..cfg(2)
            },
            GenerationConfig {
                eos_token_ids: vec![1000],
                ..cfg(2)
            },
            GenerationConfig {
                num_beams: 2,
                do_sample: true,
                ..cfg(2)
            },
        ] {
            assert!(
                matches!(
                    generate(&model, Input::Ids(&ids), None, &c, None),
                    Err(Error::Config(_))
                ),
                "{c:?}"
            );
        }
        // past the context
        assert!(matches!(
            generate(&model, Input::Ids(&ids), None, &cfg(1000), None),
            Err(Error::Shape(_))
        ));
        // empty or rank-less prompts
        let empty = Tensor::zeros([1, 0], (Kind::Int64, Device::Cpu));
        assert!(generate(&model, Input::Ids(&empty), None, &cfg(2), None).is_err());
        let flat = Tensor::from_slice(&[1i64, 2]);
        assert!(matches!(
            generate(&model, Input::Ids(&flat), None, &cfg(2), None),
            Err(Error::Shape(_))
        ));
        Ok(())
    }
}
