//! A fused float32 decode step for the CPU: one new token per row through every layer with no
//! libtorch dispatch, reading the model's weights and the KV cache in place.
//!
//! A decode step is a chain of matrix-vector products over the whole model (memory bound) and
//! ~50 tiny ops per layer (dispatch bound on libtorch: a few microseconds each). Here the tiny ops
//! are plain loops and the matrix-vector products split their rows over voxlm's thread pool
//! (MKL's sgemv for one row runs on one thread, so it reads memory at single-core speed). With
//! several rows (a batch, its beams) the products become small matrix products that read every
//! weight once per step, and the attention runs per (group of rows, KV head) through the cache's
//! row table, so beams sharing a prompt read its cached keys and values once.
//!
//! Numerics follow the libtorch path (transformers' op order: RMSNorm in float32, rotary
//! `x * cos + rotate_half(x) * sin`, softmax attention over the cache, SwiGLU) but sums run in a
//! different order, so logits agree to float32 rounding (~1e-6 relative), not bit for bit.

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::cache::KvCache;
use super::cpu_kernels::{add_in_place, attn_kernels, dot, gemv_cat, Offsets, Part, MASKED};
use super::expf::{exp_shifted, silu_mul};
use super::model::Llama;
use crate::error::{Error, Result};
use crate::ops::LoraLinear;

/// A linear layer's weight `[out, in]`, optional bias `[out]` and optional LoRA branch.
pub struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
    pub lora: Option<Lora>,
}

/// An unmerged LoRA branch at inference (no dropout): `y += scaling * B (A x)`, `a` `[r, in]`,
/// `b` `[out, r]`.
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scaling: f32,
}

/// One decoder layer. `qkv` holds `[q, k, v]` and `gate_up` `[gate, up]`: each group runs as
/// one matrix-vector product over the stacked rows, without copying the weights together.
pub struct LayerWeights {
    pub input_norm: Tensor,
    pub qkv: [Linear; 3],
    pub o: Linear,
    pub post_norm: Tensor,
    pub gate_up: [Linear; 2],
    pub down: Linear,
}

/// The model's shapes the step needs.
#[derive(Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
}

/// Weights bound by reference (shallow clones), validated once.
pub struct CpuDecoder {
    embed: Tensor,
    layers: Vec<LayerWeights>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    d: Dims,
}

fn usable(t: &Tensor, numel: usize) -> bool {
    t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && t.numel() == numel
}

/// The tensor's float32 data. Only for tensors that passed [`usable`] (or cache tensors checked
/// in [`CpuDecoder::step`]): CPU, float32, contiguous, `numel` elements.
fn f32s(t: &Tensor) -> &[f32] {
    let n = t.numel();
    if n == 0 {
        return &[];
    }
    // SAFETY: checked CPU float32 contiguous storage of n elements, alive as long as `t`.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, n) }
}

fn f32s_mut(t: &mut Tensor) -> &mut [f32] {
    let n = t.numel();
    if n == 0 {
        return &mut [];
    }
    // SAFETY: as `f32s`; the &mut borrow of the handle makes this the only view Rust hands out.
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) }
}

impl CpuDecoder {
    /// None when a weight is not a contiguous float32 CPU tensor of the expected size.
    pub fn new(
        embed: Tensor,
        layers: Vec<LayerWeights>,
        norm: Tensor,
        lm_head: Linear,
        inv_freq: &Tensor,
        d: Dims,
    ) -> Result<Option<Self>> {
        let (h, i, hd) = (d.hidden, d.intermediate, d.head_dim);
        let lin_ok = |l: &Linear, out: usize, inp: usize| {
            usable(&l.w, out * inp)
                && l.b.as_ref().is_none_or(|b| usable(b, out))
                && l.lora.as_ref().is_none_or(|lo| {
                    let r = lo.a.numel() / inp.max(1);
                    r > 0 && usable(&lo.a, r * inp) && usable(&lo.b, out * r)
                })
        };
        let ok = usable(&embed, d.vocab * h)
            && usable(&norm, h)
            && lin_ok(&lm_head, d.vocab, h)
            && layers.iter().all(|l| {
                usable(&l.input_norm, h)
                    && usable(&l.post_norm, h)
                    && lin_ok(&l.qkv[0], d.heads * hd, h)
                    && lin_ok(&l.qkv[1], d.kv_heads * hd, h)
                    && lin_ok(&l.qkv[2], d.kv_heads * hd, h)
                    && lin_ok(&l.o, h, d.heads * hd)
                    && lin_ok(&l.gate_up[0], i, h)
                    && lin_ok(&l.gate_up[1], i, h)
                    && lin_ok(&l.down, h, i)
            });
        if !ok || hd % 2 != 0 || d.kv_heads == 0 || d.heads % d.kv_heads != 0 {
            return Ok(None);
        }
        let inv_freq: Vec<f32> = Vec::<f32>::try_from(
            inv_freq
                .f_to_kind(Kind::Float)?
                .f_to_device(Device::Cpu)?
                .f_reshape([-1])?,
        )?;
        if inv_freq.len() != hd / 2 {
            return Ok(None);
        }
        Ok(Some(CpuDecoder {
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            d,
        }))
    }

    /// One token per row: `tokens` `[B]`, `positions` `[B]` (rotary positions), `key_mask`
    /// `[B, cached + 1]` (0 = padding key) or None. Writes the new keys and values into `cache`,
    /// advances it, and returns float32 logits `[B, V]`.
    pub fn step(
        &self,
        tokens: &[i64],
        positions: &[i64],
        key_mask: Option<&[i64]>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let d = self.d;
        let b = tokens.len();
        let past = cache.len as usize;
        if cache.len >= cache.capacity {
            return Err(Error::shape(format!(
                "KV cache: {} cached + 1 new token exceed its capacity {}",
                cache.len, cache.capacity
            )));
        }
        if b == 0 {
            return Err(Error::shape(
                "decode step: expected at least one token, got none",
            ));
        }
        if positions.len() != b || key_mask.is_some_and(|m| m.len() != b * (past + 1)) {
            return Err(Error::shape(format!(
                "decode step: {b} tokens need {b} positions and a [{b}, {}] key mask",
                past + 1
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t < 0 || t as usize >= d.vocab) {
            return Err(Error::config(format!(
                "token id {t} is outside the vocabulary [0, {})",
                d.vocab
            )));
        }
        let cap = cache.capacity as usize;
        let kv_numel = b * d.kv_heads * cap * d.head_dim;
        let n_layers = cache.num_layers();
        let parts = cache.parts_mut();
        let fits = n_layers == self.layers.len()
            && parts
                .layers
                .iter()
                .all(|(k, v)| usable(k, kv_numel) && usable(v, kv_numel))
            && parts.rows.is_none_or(|t| t.len() == b * cap);
        if !fits {
            return Err(Error::shape(format!(
                "KV cache: expected {} layers of contiguous float32 CPU [{b}, {}, {cap}, {}]",
                self.layers.len(),
                d.kv_heads,
                d.head_dim
            )));
        }
        let mut logits = Tensor::f_empty([b as i64, d.vocab as i64], (Kind::Float, Device::Cpu))?;
        {
            let out = f32s_mut(&mut logits);
            let (rows, group) = (parts.rows, parts.group);
            let mut kv: Vec<(&mut [f32], &mut [f32])> = Vec::with_capacity(self.layers.len());
            for (k, v) in parts.layers {
                kv.push((f32s_mut(k), f32s_mut(v)));
            }
            let job = StepJob {
                dec: self,
                tokens,
                positions,
                key_mask,
                past,
                cap,
                rows,
                group: if group >= 1 && b % group == 0 {
                    group
                } else {
                    1
                },
            };
            // every row's key/value offsets for every KV head, built and checked once for all
            // layers and heads
            let offs = job.offsets();
            let Some(offs) = Offsets::new(&offs, d.head_dim, kv_numel) else {
                return Err(Error::shape(format!(
                    "KV cache: its row table points outside the {b} rows of {cap} positions"
                )));
            };
            crate::parallel::install(move || job.run(&mut kv, out, offs));
        }
        cache.advance(1);
        Ok(logits)
    }
}

struct StepJob<'a> {
    dec: &'a CpuDecoder,
    tokens: &'a [i64],
    positions: &'a [i64],
    key_mask: Option<&'a [i64]>,
    past: usize,
    cap: usize,
    /// The cache's row table `[B, cap]` (None: identity).
    rows: Option<&'a [u32]>,
    /// Consecutive rows attended together (they read shared cached keys once).
    group: usize,
}

// SAFETY: the job only reads the decoder's tensors through `f32s` (plain float32 memory that no
// one writes during the step); the tch handles themselves are not touched from other threads.
unsafe impl Sync for StepJob<'_> {}
unsafe impl Send for StepJob<'_> {}

impl StepJob<'_> {
    fn run(&self, kv: &mut [(&mut [f32], &mut [f32])], logits: &mut [f32], offs: Offsets<'_>) {
        let dec = self.dec;
        let d = dec.d;
        let (b, h, hd) = (self.tokens.len(), d.hidden, d.head_dim);
        let (nh, nkv) = (d.heads, d.kv_heads);
        let qkv_w = (nh + 2 * nkv) * hd;
        let embed = f32s(&dec.embed);
        let mut x: Vec<f32> = Vec::with_capacity(b * h);
        for &t in self.tokens {
            let t = t as usize;
            x.extend_from_slice(&embed[t * h..(t + 1) * h]);
        }
        // rotary tables per row: cos(p * f) and sin(p * f) for the hd/2 frequencies
        let half = hd / 2;
        let mut cos = vec![0f32; b * half];
        let mut sin = vec![0f32; b * half];
        for (r, &p) in self.positions.iter().enumerate() {
            for (j, &f) in dec.inv_freq.iter().enumerate() {
                let a = p as f32 * f;
                cos[r * half + j] = a.cos();
                sin[r * half + j] = a.sin();
            }
        }
        let mut xn = vec![0f32; b * h];
        let mut qkv = vec![0f32; b * qkv_w];
        let mut attn = vec![0f32; b * nh * hd];
        let mut tmp_h = vec![0f32; b * h];
        let mut gu = vec![0f32; b * 2 * d.intermediate];
        let mut act = vec![0f32; b * d.intermediate];
        for (layer, (kc, vc)) in dec.layers.iter().zip(kv.iter_mut()) {
            rms_norm(&x, f32s(&layer.input_norm), d.eps, h, &mut xn);
            gemv_cat(&layer.qkv.each_ref().map(parts), &xn, b, &mut qkv);
            for r in 0..b {
                let row = &mut qkv[r * qkv_w..(r + 1) * qkv_w];
                let (c, s) = (
                    &cos[r * half..(r + 1) * half],
                    &sin[r * half..(r + 1) * half],
                );
                for head in row[..(nh + nkv) * hd].chunks_exact_mut(hd) {
                    rope(head, c, s);
                }
                let (k_new, v_new) = row[nh * hd..].split_at(nkv * hd);
                for g in 0..nkv {
                    let at = ((r * nkv + g) * self.cap + self.past) * hd;
                    kc[at..at + hd].copy_from_slice(&k_new[g * hd..(g + 1) * hd]);
                    vc[at..at + hd].copy_from_slice(&v_new[g * hd..(g + 1) * hd]);
                }
            }
            self.attention(&qkv, kc, vc, offs, &mut attn);
            gemv_cat(&[parts(&layer.o)], &attn, b, &mut tmp_h);
            add_in_place(&mut x, &tmp_h);
            rms_norm(&x, f32s(&layer.post_norm), d.eps, h, &mut xn);
            gemv_cat(&layer.gate_up.each_ref().map(parts), &xn, b, &mut gu);
            let i = d.intermediate;
            for r in 0..b {
                let (g, u) = gu[r * 2 * i..(r + 1) * 2 * i].split_at(i);
                silu_mul(g, u, &mut act[r * i..(r + 1) * i]);
            }
            gemv_cat(&[parts(&layer.down)], &act, b, &mut tmp_h);
            add_in_place(&mut x, &tmp_h);
        }
        rms_norm(&x, f32s(&dec.norm), d.eps, h, &mut xn);
        gemv_cat(&[parts(&dec.lm_head)], &xn, b, logits);
    }

    /// Each row's key/value offset at every cached position for every KV head, `[kv_heads, B,
    /// past + 1]` ([`MASKED`]: a padding key), through the row table.
    fn offsets(&self) -> Vec<usize> {
        let d = self.dec.d;
        let (nkv, hd) = (d.kv_heads, d.head_dim);
        let (b, len, cap, past) = (self.tokens.len(), self.past + 1, self.cap, self.past);
        let mut offs = Vec::with_capacity(nkv * b * len);
        for g in 0..nkv {
            for r in 0..b {
                offs.extend((0..len).map(|l| {
                    if l == past || self.key_mask.is_none_or(|m| m[r * len + l] != 0) {
                        let p = self.rows.map_or(r, |t| t[r * cap + l] as usize);
                        ((p * nkv + g) * cap + l) * hd
                    } else {
                        MASKED
                    }
                }));
            }
        }
        offs
    }

    /// Softmax attention of each row's query heads over its cached keys (GQA: query head `q`
    /// reads key/value head `q / (heads / kv_heads)`), scaled by `1 / sqrt(head_dim)`.
    ///
    /// One task per (group of rows, key/value head): position by position it reads each row's
    /// cached key (through the row table) and scores every query head of the group's rows that
    /// uses it, so keys shared by the beams of a prompt, and by the query heads of a GQA group,
    /// come from memory once (from cache for the second reader). Per (row, head): the scores
    /// (AVX2 + FMA dot products when available), a softmax, and the weighted sum of the values
    /// accumulated in registers over the positions in order.
    fn attention(&self, qkv: &[f32], kc: &[f32], vc: &[f32], offs: Offsets<'_>, out: &mut [f32]) {
        let d = self.dec.d;
        let (nh, nkv, hd) = (d.heads, d.kv_heads, d.head_dim);
        let qkv_w = (nh + 2 * nkv) * hd;
        let len = self.past + 1;
        let scale = 1.0 / (hd as f32).sqrt();
        let heads = nh / nkv;
        let b = self.tokens.len();
        let share = self.group;
        let kern = attn_kernels(hd);
        // the task's output: [row in group][head in kv group][hd]
        let one = |task: usize| -> Vec<f32> {
            let (c, g) = (task / nkv, task % nkv);
            let r0 = c * share;
            let nq = share * heads;
            let q = |j: usize, h: usize| {
                let o = (r0 + j) * qkv_w + (g * heads + h) * hd;
                &qkv[o..o + hd]
            };
            // every query's scores, then their softmax weights (exp vectorised, each sum over
            // the positions in order, the queries' sums interleaved), then the weighted values
            let mut p = vec![0f32; nq * len];
            for j in 0..share {
                let offs = offs.sub((g * b + r0 + j) * len, len);
                for h in 0..heads {
                    let qi = j * heads + h;
                    let pq = &mut p[qi * len..(qi + 1) * len];
                    (kern.scores)(q(j, h), kc, offs, scale, pq);
                    let max = pq.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    exp_shifted(pq, max);
                }
            }
            let sums = ordered_sums(&p, len);
            let mut o = vec![0f32; nq * hd];
            for j in 0..share {
                let offs = offs.sub((g * b + r0 + j) * len, len);
                for h in 0..heads {
                    let qi = j * heads + h;
                    let pq = &p[qi * len..(qi + 1) * len];
                    (kern.pv)(pq, sums[qi], vc, offs, &mut o[qi * hd..(qi + 1) * hd]);
                }
            }
            o
        };
        let tasks = b / share * nkv;
        let results: Vec<Vec<f32>> = if b * nh * len * hd >= 1 << 15 {
            (0..tasks).into_par_iter().map(one).collect()
        } else {
            (0..tasks).map(one).collect()
        };
        for (task, res) in results.iter().enumerate() {
            let (c, g) = (task / nkv, task % nkv);
            for (j, piece) in res.chunks_exact(heads * hd).enumerate() {
                let o = (c * share + j) * nh * hd + g * heads * hd;
                out[o..o + heads * hd].copy_from_slice(piece);
            }
        }
    }
}

/// The sum of each `len`-long row of `p`, each added up position by position in order (as a
/// sequential loop does: the same float32 value), eight rows at a time so that their additions
/// overlap instead of waiting on each other.
fn ordered_sums(p: &[f32], len: usize) -> Vec<f32> {
    let rows = p.len().checked_div(len).unwrap_or(0);
    let mut sums = vec![0f32; rows];
    let mut r0 = 0;
    while r0 + 8 <= rows {
        let mut s = [0f32; 8];
        for l in 0..len {
            for (k, acc) in s.iter_mut().enumerate() {
                *acc += p[(r0 + k) * len + l];
            }
        }
        sums[r0..r0 + 8].copy_from_slice(&s);
        r0 += 8;
    }
    for (r, sum) in sums.iter_mut().enumerate().skip(r0) {
        *sum = p[r * len..(r + 1) * len].iter().fold(0f32, |a, &v| a + v);
    }
    sums
}

fn parts(l: &Linear) -> Part<'_> {
    Part {
        w: f32s(&l.w),
        bias: l.b.as_ref().map(f32s),
        lora: l
            .lora
            .as_ref()
            .map(|lo| (f32s(&lo.a), f32s(&lo.b), lo.scaling)),
    }
}

/// transformers' LlamaRMSNorm in float32: `w * (x * rsqrt(mean(x^2) + eps))`, per row of `n`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, n: usize, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let var = dot(xr, xr) / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = g * (v * inv);
        }
    }
}

/// `x * cos + rotate_half(x) * sin` on one head (cos/sin of the hd/2 frequencies).
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (a, b) = x.split_at_mut(half);
    for j in 0..half {
        let (x1, x2) = (a[j], b[j]);
        a[j] = x1 * cos[j] + -x2 * sin[j];
        b[j] = x2 * cos[j] + x1 * sin[j];
    }
}

impl Llama {
    /// The fused float32 CPU decode step over these weights, when the model qualifies: CPU,
    /// float32, no adaption prompt, contiguous weights (unmerged LoRA branches are computed in
    /// the step, without dropout as at inference). It reads the weights in place.
    pub fn cpu_decoder(&self) -> Result<Option<CpuDecoder>> {
        if self.device() != tch::Device::Cpu || self.kind() != Kind::Float {
            return Ok(None);
        }
        let lin = |l: &LoraLinear| Linear {
            w: l.weight.shallow_clone(),
            b: l.bias.as_ref().map(Tensor::shallow_clone),
            lora: l.lora.as_ref().map(|p| Lora {
                a: p.a.shallow_clone(),
                b: p.b.shallow_clone(),
                scaling: p.scaling as f32,
            }),
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            if l.adaption.is_some() {
                return Ok(None);
            }
            layers.push(LayerWeights {
                input_norm: l.input_norm.shallow_clone(),
                qkv: [lin(&l.q), lin(&l.k), lin(&l.v)],
                o: lin(&l.o),
                post_norm: l.post_norm.shallow_clone(),
                gate_up: [lin(&l.gate), lin(&l.up)],
                down: lin(&l.down),
            });
        }
        let c = &self.cfg;
        CpuDecoder::new(
            self.embed.shallow_clone(),
            layers,
            self.norm.shallow_clone(),
            Linear {
                w: self.lm_head.shallow_clone(),
                b: None,
                lora: None,
            },
            &self.inv_freq,
            Dims {
                hidden: c.hidden_size as usize,
                intermediate: c.intermediate_size as usize,
                heads: c.num_attention_heads as usize,
                kv_heads: c.num_key_value_heads as usize,
                head_dim: c.head_dim as usize,
                vocab: c.vocab_size as usize,
                eps: c.rms_norm_eps as f32,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused step's logits against the libtorch step's on a random GQA model with biases,
    /// llama3 rope and a left-padded batch, over several steps (and with LoRA branches).
    #[test]
    fn step_matches_libtorch_forward() -> Result<()> {
        check_step(false)
    }

    #[test]
    fn step_with_lora_matches_libtorch_forward() -> Result<()> {
        check_step(true)
    }

    /// Interleaved row sums equal each row's sequential sum bit for bit (8-row blocks and the
    /// rest), values of mixed magnitude so that the order of additions shows.
    #[test]
    fn ordered_sums_equal_sequential_sums() {
        for (rows, len) in [
            (0usize, 5usize),
            (3, 0),
            (1, 7),
            (8, 33),
            (13, 384),
            (16, 1),
        ] {
            let p: Vec<f32> = (0..rows * len)
                .map(|i| ((i * 7919 % 61) as f32 * 0.37).exp2() * 1e-3)
                .collect();
            let got = ordered_sums(&p, len);
            assert_eq!(got.len(), if len == 0 { 0 } else { rows });
            for (r, g) in got.iter().enumerate() {
                let mut want = 0f32;
                for &v in &p[r * len..(r + 1) * len] {
                    want += v;
                }
                assert_eq!(g.to_bits(), want.to_bits(), "{rows} x {len}, row {r}");
            }
        }
    }

    /// Beam search's cache on the fused step (prompt stored once per row, beams pointing at it
    /// through the row table, reordering rewriting the table) against the libtorch step on a
    /// cache copied per beam and gathered: the same logits over several reorders.
    #[test]
    fn row_table_matches_gathered_cache() -> Result<()> {
        use crate::llm::model::{testing::tiny, ForwardOptions, Input};
        let model = tiny(4)?;
        let _g = tch::no_grad_guard();
        let dec = model.cpu_decoder()?.expect("tiny is float32 on the CPU");
        let (b, nb, t, steps) = (2i64, 2i64, 6i64, 5i64);
        let i64s = (Kind::Int64, Device::Cpu);
        let ids = Tensor::randint(50, [b, t], i64s);
        let mask = Tensor::ones([b, t], i64s);
        let _ = mask.get(0).narrow(0, 0, 3).fill_(0);
        let pos = (mask.cumsum(-1, Kind::Int64) - 1).clamp_min(0);
        let mut caches = Vec::new();
        for shared in [false, true] {
            let mut c = KvCache::new(2, b, 2, 8, t + steps, Kind::Float, Device::Cpu)?;
            model.forward(
                Input::Ids(&ids),
                Some(&mut c),
                &ForwardOptions {
                    attention_mask: Some(&mask),
                    position_ids: Some(&pos),
                    last_only: true,
                    ..Default::default()
                },
            )?;
            c.expand_rows(nb, shared)?;
            caches.push(c);
        }
        let (c1, c2) = caches.split_at_mut(1);
        let (c1, c2) = (&mut c1[0], &mut c2[0]);
        let rep = |x: &Tensor| x.repeat_interleave_self_int(nb, Some(0), None::<i64>);
        let (mut mask, mut pos) = (rep(&mask), rep(&pos.narrow(1, t - 1, 1)));
        let mut tok = Tensor::from_slice(&[5i64, 6, 7, 8]).view([b * nb, 1]);
        // beams copy each other, swap, stay
        let orders: [[i64; 4]; 5] = [
            [0, 0, 2, 2],
            [1, 0, 3, 3],
            [0, 1, 2, 3],
            [1, 1, 3, 2],
            [0, 0, 2, 2],
        ];
        for order in orders.iter().take(steps as usize) {
            let src = Tensor::from_slice(order);
            let (want, got) =
                reordered_step(&model, &dec, c1, c2, &src, &tok, &mut mask, &mut pos)?;
            let err = f64::try_from((&got - &want).abs().max())?;
            let scale = f64::try_from(want.abs().max())?;
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "max |diff| {err} (logits up to {scale})"
            );
            tok = want.argmax(-1, true);
        }
        // the libtorch forward refuses a cache whose rows are remapped
        assert!(model
            .forward(Input::Ids(&tok), Some(c2), &ForwardOptions::default())
            .is_err());
        Ok(())
    }

    /// One beam step of both sides of `row_table_matches_gathered_cache` and
    /// `beam_trajectory_matches_libtorch_past_320_positions`: reorder the gathered cache `lib` (libtorch
    /// step) and the row-table cache `cpu` (fused step) by `src`, carry the key mask and positions
    /// of the reordered rows one position on, then feed `tok` `[rows, 1]` to the libtorch forward
    /// and to the fused step: `(libtorch logits, fused logits)`, `[rows, V]`.
    #[allow(clippy::too_many_arguments)]
    fn reordered_step(
        model: &Llama,
        dec: &CpuDecoder,
        lib: &mut KvCache,
        cpu: &mut KvCache,
        src: &Tensor,
        tok: &Tensor,
        mask: &mut Tensor,
        pos: &mut Tensor,
    ) -> Result<(Tensor, Tensor)> {
        use crate::llm::model::{ForwardOptions, Input};
        lib.reorder(src)?;
        cpu.reorder(src)?;
        let rows = src.size()[0];
        *mask = Tensor::cat(
            &[
                &mask.index_select(0, src),
                &Tensor::ones([rows, 1], (Kind::Int64, Device::Cpu)),
            ],
            1,
        );
        *pos = pos.index_select(0, src) + 1;
        let want = model
            .forward(
                Input::Ids(tok),
                Some(lib),
                &ForwardOptions {
                    attention_mask: Some(mask),
                    position_ids: Some(pos),
                    last_only: true,
                    ..Default::default()
                },
            )?
            .logits
            .select(1, 0);
        let v = |t: &Tensor| Vec::<i64>::try_from(t.reshape([-1]));
        let got = dec.step(&v(tok)?, &v(pos)?, Some(&v(mask)?), cpu)?;
        Ok((want, got))
    }

    /// Beam search (2 beams, 2 prompts, one left-padded) along a fixed trajectory (the libtorch
    /// step's own choices) for 64 steps past 330 cached positions: the fused step on the shared
    /// row-table cache against the libtorch step on a cache copied per beam and gathered. Per
    /// step the logits agree within 1e-5 relative; the float32 beam scores of the two sides drift
    /// by at most the sum of 2 x that step's logit difference (log-softmax moves by at most twice
    /// the largest logit change) plus float32 rounding; and wherever the gap between the last kept
    /// and the first dropped candidate exceeds twice that drift bound, both sides keep the same
    /// candidates. Closer candidates are float32 near-ties that either side may order either way
    /// (bench/RESULTS.md, generate: an exact float32 tie at step 35 flips one row).
    #[test]
    fn beam_trajectory_matches_libtorch_past_320_positions() -> Result<()> {
        use crate::llm::model::{ForwardOptions, Input};
        use std::collections::HashMap;
        let (v, h, inter, hd, nl) = (256i64, 128i64, 160i64, 32i64, 2i64);
        let cfg = crate::llm::LlamaConfig::from_json(&format!(
            r#"{{"vocab_size":{v},"hidden_size":{h},"intermediate_size":{inter},
            "num_hidden_layers":{nl},"num_attention_heads":4,"num_key_value_heads":2,
            "max_position_embeddings":512,"rms_norm_eps":1e-5}}"#
        ))?;
        tch::manual_seed(5);
        let f = (Kind::Float, Device::Cpu);
        let mut w: HashMap<String, Tensor> = HashMap::new();
        w.insert("model.embed_tokens.weight".into(), Tensor::randn([v, h], f));
        w.insert("lm_head.weight".into(), Tensor::randn([v, h], f) * 0.2);
        w.insert("model.norm.weight".into(), Tensor::ones([h], f));
        for l in 0..nl {
            let p = format!("model.layers.{l}");
            for (n, o, inp) in [
                ("self_attn.q_proj", 4 * hd, h),
                ("self_attn.k_proj", 2 * hd, h),
                ("self_attn.v_proj", 2 * hd, h),
                ("self_attn.o_proj", h, 4 * hd),
                ("mlp.gate_proj", inter, h),
                ("mlp.up_proj", inter, h),
                ("mlp.down_proj", h, inter),
            ] {
                w.insert(format!("{p}.{n}.weight"), Tensor::randn([o, inp], f) * 0.1);
            }
            for n in ["input_layernorm", "post_attention_layernorm"] {
                w.insert(format!("{p}.{n}.weight"), Tensor::ones([h], f));
            }
        }
        let model = Llama::new(cfg, w, &HashMap::new())?;
        let _g = tch::no_grad_guard();
        let dec = model.cpu_decoder()?.expect("a float32 CPU model qualifies");
        let (b, nb, t, steps) = (2i64, 2i64, 330i64, 64i64);
        let i64s = (Kind::Int64, Device::Cpu);
        let ids = Tensor::randint(v, [b, t], i64s);
        let mask = Tensor::ones([b, t], i64s);
        let _ = mask.get(1).narrow(0, 0, 9).fill_(0);
        let pos = (mask.cumsum(-1, Kind::Int64) - 1).clamp_min(0);
        let mut caches = Vec::new();
        let mut first = None;
        for shared in [false, true] {
            let mut c = KvCache::new(nl, b, 2, hd, t + steps, Kind::Float, Device::Cpu)?;
            let out = model.forward(
                Input::Ids(&ids),
                Some(&mut c),
                &ForwardOptions {
                    attention_mask: Some(&mask),
                    position_ids: Some(&pos),
                    last_only: true,
                    ..Default::default()
                },
            )?;
            first.get_or_insert(out.logits.select(1, 0));
            c.expand_rows(nb, shared)?;
            caches.push(c);
        }
        let (c1, c2) = caches.split_at_mut(1);
        let (c1, c2) = (&mut c1[0], &mut c2[0]);
        let rep = |x: &Tensor| x.repeat_interleave_self_int(nb, Some(0), None::<i64>);
        // the prompt's logits are shared (one forward); the steps' differ
        let mut want = rep(&first.expect("two caches filled"));
        let mut got = want.copy();
        let (mut mask, mut pos) = (rep(&mask), rep(&pos.narrow(1, t - 1, 1)));
        let mut s_lib = Tensor::from_slice(&[0f32, -1e9, 0.0, -1e9]);
        let mut s_cpu = s_lib.copy();
        let (mut bound, mut compared) = (0f64, 0);
        let max_abs = |t: &Tensor| f64::try_from(t.abs().max()).unwrap();
        for step in 0..steps {
            let err = max_abs(&(&got - &want));
            let scale = max_abs(&want);
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "step {step}: max |diff| {err} (logits up to {scale})"
            );
            let acc = |lg: &Tensor, s: &Tensor| {
                (lg.log_softmax(-1, Kind::Float) + s.view([-1, 1])).view([b, nb * v])
            };
            let (a_lib, a_cpu) = (acc(&want, &s_lib), acc(&got, &s_cpu));
            // live candidates only (the dead beam's -1e9 at step 0 would dominate the rounding)
            let live = |a: &Tensor| max_abs(&a.masked_select(&a.gt(-1e8)));
            bound += 2.0 * err + 2.0 * f64::from(f32::EPSILON) * (live(&a_lib) + scale);
            let (top, idx) = a_lib.topk(nb + 1, 1, true, true);
            let (_, idx_cpu) = a_cpu.topk(nb, 1, true, true);
            let kept = idx.narrow(1, 0, nb);
            let drift = max_abs(&(a_lib.gather(1, &kept, false) - a_cpu.gather(1, &kept, false)));
            assert!(
                drift <= bound,
                "step {step}: scores drift {drift} > bound {bound}"
            );
            for r in 0..b {
                let gap = f64::try_from(top.get(r).get(nb - 1) - top.get(r).get(nb))?;
                if gap > 2.0 * bound {
                    compared += 1;
                    let (a, c) = (
                        kept.get(r).sort(0, false).0,
                        idx_cpu.get(r).sort(0, false).0,
                    );
                    assert!(a.equal(&c), "step {step} row {r}: gap {gap}, bound {bound}");
                }
            }
            // follow the libtorch side's choices on both sides
            let row0 = Tensor::arange(b, i64s).view([b, 1]) * nb;
            let src = (&row0 + kept.divide_scalar_mode(v, "floor")).view([-1]);
            let tok = kept.remainder(v).view([-1, 1]);
            s_lib = a_lib.gather(1, &kept, false).view([-1]);
            s_cpu = a_cpu.gather(1, &kept, false).view([-1]);
            (want, got) = reordered_step(&model, &dec, c1, c2, &src, &tok, &mut mask, &mut pos)?;
        }
        let err = max_abs(&(&got - &want));
        assert!(
            err <= 1e-5 * max_abs(&want).max(1.0),
            "last step: max |diff| {err}"
        );
        assert_eq!(c2.len, t + steps);
        // the selection check is not vacuous: most (row, step) pairs are not near-ties
        assert!(
            compared >= b * steps * 3 / 4,
            "compared {compared} of {}",
            b * steps
        );
        Ok(())
    }

    fn check_step(with_lora: bool) -> Result<()> {
        use crate::llm::model::{ForwardOptions, Input};
        use std::collections::HashMap;
        let cfg = crate::llm::LlamaConfig::from_json(
            r#"{"vocab_size":97,"hidden_size":64,"intermediate_size":80,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"attention_bias":true,"mlp_bias":true,
            "rope_theta":500000.0,"max_position_embeddings":4096,"rms_norm_eps":1e-5,
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":64}}"#,
        )?;
        tch::manual_seed(1);
        let f = (Kind::Float, Device::Cpu);
        let mut w: HashMap<String, Tensor> = HashMap::new();
        let mut lora = HashMap::new();
        let (h, i, hd) = (64, 80, 16);
        w.insert(
            "model.embed_tokens.weight".into(),
            Tensor::randn([97, h], f),
        );
        w.insert("lm_head.weight".into(), Tensor::randn([97, h], f) * 0.1);
        w.insert(
            "model.norm.weight".into(),
            Tensor::randn([h], f) * 0.1 + 1.0,
        );
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            for (n, o, inp) in [
                ("self_attn.q_proj", 4 * hd, h),
                ("self_attn.k_proj", 2 * hd, h),
                ("self_attn.v_proj", 2 * hd, h),
                ("self_attn.o_proj", h, 4 * hd),
                ("mlp.gate_proj", i, h),
                ("mlp.up_proj", i, h),
                ("mlp.down_proj", h, i),
            ] {
                w.insert(format!("{p}.{n}.weight"), Tensor::randn([o, inp], f) * 0.2);
                w.insert(format!("{p}.{n}.bias"), Tensor::randn([o], f) * 0.1);
                if with_lora && n != "self_attn.k_proj" {
                    let r = 4;
                    w.insert(
                        format!("{p}.{n}.lora_A.weight"),
                        Tensor::randn([r, inp], f) * 0.2,
                    );
                    w.insert(
                        format!("{p}.{n}.lora_B.weight"),
                        Tensor::randn([o, r], f) * 0.2,
                    );
                    lora.insert(format!("{p}.{n}"), (2.0, 0.1));
                }
            }
            for n in ["input_layernorm", "post_attention_layernorm"] {
                w.insert(format!("{p}.{n}.weight"), Tensor::randn([h], f) * 0.1 + 1.0);
            }
        }
        let model = Llama::new(cfg, w, &lora)?;
        let _g = tch::no_grad_guard();
        let dec = model
            .cpu_decoder()?
            .expect("a float32 CPU model without LoRA qualifies");
        let (b, t, steps) = (2i64, 5i64, 4i64);
        let new_cache = || KvCache::new(2, b, 2, hd, t + steps, Kind::Float, Device::Cpu);
        let (mut c1, mut c2) = (new_cache()?, new_cache()?);
        let ids = Tensor::randint(97, [b, t], (Kind::Int64, Device::Cpu));
        let mut mask = Tensor::ones([b, t], (Kind::Int64, Device::Cpu));
        let _ = mask.get(1).narrow(0, 0, 2).fill_(0);
        let pos = (mask.cumsum(-1, Kind::Int64) - 1).clamp_min(0);
        for c in [&mut c1, &mut c2] {
            model.forward(
                Input::Ids(&ids),
                Some(c),
                &ForwardOptions {
                    attention_mask: Some(&mask),
                    position_ids: Some(&pos),
                    last_only: true,
                    ..Default::default()
                },
            )?;
        }
        let mut pos = pos.narrow(1, t - 1, 1);
        let mut tok = Tensor::from_slice(&[5i64, 60]).view([b, 1]);
        for _ in 0..steps {
            mask = Tensor::cat(
                &[&mask, &Tensor::ones([b, 1], (Kind::Int64, Device::Cpu))],
                1,
            );
            pos += 1;
            let want = model
                .forward(
                    Input::Ids(&tok),
                    Some(&mut c1),
                    &ForwardOptions {
                        attention_mask: Some(&mask),
                        position_ids: Some(&pos),
                        last_only: true,
                        ..Default::default()
                    },
                )?
                .logits
                .select(1, 0);
            let v = |t: &Tensor| Vec::<i64>::try_from(t.reshape([-1])).unwrap();
            let got = dec.step(&v(&tok), &v(&pos), Some(&v(&mask)), &mut c2)?;
            let err = f64::try_from((&got - &want).abs().max())?;
            let scale = f64::try_from(want.abs().max())?;
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "max |diff| {err} (logits up to {scale})"
            );
            tok = want.argmax(-1, true);
        }
        Ok(())
    }
}
