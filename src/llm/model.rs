//! The LLaMA decoder forward, as transformers' `LlamaForCausalLM` (sdpa attention):
//! RMSNorm in float32, rotary embeddings (default / linear / llama3 frequencies), grouped-query
//! attention through libtorch's `scaled_dot_product_attention`, SwiGLU MLP, optional KV cache.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::cache::KvCache;
use super::config::{LlamaConfig, RopeScaling};
use super::decode_cpu::{CpuDecoder, Dims, LayerWeights, Linear as DLinear, Lora};
use crate::check;
use crate::error::{Error, Result};
use crate::ops::LoraLinear;

/// The inverse rotary frequencies `[head_dim / 2]` (float32), computed with the same ops as
/// transformers' rope init functions.
pub fn rope_inv_freq(cfg: &LlamaConfig) -> Result<Tensor> {
    let dim = cfg.head_dim;
    let exps = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, tch::Device::Cpu))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(dim as f64)?;
    let inv = Tensor::f_pow_scalar(cfg.rope_theta, &exps)?.f_reciprocal()?;
    Ok(match &cfg.rope_scaling {
        RopeScaling::Default => inv,
        RopeScaling::Linear { factor } => inv.f_div_scalar(*factor)?,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = *original_max_position_embeddings as f64;
            let low_wl = old / low_freq_factor;
            let high_wl = old / high_freq_factor;
            let wavelen = inv
                .f_reciprocal()?
                .f_mul_scalar(2.0 * std::f64::consts::PI)?;
            let inv_llama = inv
                .f_div_scalar(*factor)?
                .f_where_self(&wavelen.f_gt(low_wl)?, &inv)?;
            let smooth = wavelen
                .f_reciprocal()?
                .f_mul_scalar(old)?
                .f_sub_scalar(*low_freq_factor)?
                .f_div_scalar(high_freq_factor - low_freq_factor)?;
            let smoothed = smooth
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_mul(&inv_llama)?
                .f_div_scalar(*factor)?
                .f_add(&smooth.f_mul(&inv_llama)?)?;
            let medium = wavelen
                .f_lt(high_wl)?
                .f_logical_not()?
                .f_logical_and(&wavelen.f_gt(low_wl)?.f_logical_not()?)?;
            smoothed.f_where_self(&medium, &inv_llama)?
        }
    })
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    // transformers: w * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(dtype); float32 skips
    // the casts (each is a dispatch; libtorch's composite _fused_rms_norm costs more than this)
    let kind = x.f_kind()?;
    let xf = if kind == Kind::Float {
        x.shallow_clone()
    } else {
        x.f_to_kind(Kind::Float)?
    };
    let var = xf
        .f_pow_tensor_scalar(2)?
        .f_mean_dim([-1i64].as_slice(), true, None::<Kind>)?;
    let normed = xf.f_mul(&var.f_add_scalar(eps)?.f_rsqrt()?)?;
    let normed = if kind == Kind::Float {
        normed
    } else {
        normed.f_to_kind(kind)?
    };
    Ok(w.f_mul(&normed)?)
}

/// `x * cos + rotate_half(x) * sin` with `sin_signed = cat(-sin_half, sin_half)`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin_signed: &Tensor) -> Result<Tensor> {
    let d = x.size()[x.dim() - 1];
    Ok(x.f_mul(cos)?.f_add(
        &x.f_roll([d / 2].as_slice(), [-1i64].as_slice())?
            .f_mul(sin_signed)?,
    )?)
}

/// Inference-only fused projections of a layer without LoRA: `[q; k; v]` and `[gate; up]`.
pub struct Fused {
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    gate_up: Tensor,
    gate_up_bias: Option<Tensor>,
}

struct Layer {
    input_norm: Tensor,
    q: LoraLinear,
    k: LoraLinear,
    v: LoraLinear,
    o: LoraLinear,
    post_norm: Tensor,
    gate: LoraLinear,
    up: LoraLinear,
    down: LoraLinear,
    /// LLaMA-Adapter (V2) gated adaption prompt: `[1, L, H]` prompt and its zero-init gate `[1]`.
    adaption: Option<(Tensor, Tensor)>,
}

/// Model tensors bound by reference (shallow clones of Python-owned parameters).
pub struct Llama {
    pub cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    inv_freq: Tensor,
}

/// What a forward returns.
pub struct LlamaOutput {
    /// `[B, T, V]` (or `[B, 1, V]` with `last_only`).
    pub logits: Tensor,
    /// Embeddings, each layer's output, and the final-normed last layer (as transformers).
    pub hidden_states: Vec<Tensor>,
}

/// The input of a forward: token ids `[B, T]` or embeddings `[B, T, H]`.
pub enum Input<'a> {
    Ids(&'a Tensor),
    Embeds(&'a Tensor),
}

fn take(w: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    w.remove(name)
        .ok_or_else(|| Error::checkpoint(format!("missing tensor {name}")))
}

fn expect_shape(t: &Tensor, name: &str, shape: &[i64]) -> Result<()> {
    let s = t.size();
    if s != shape {
        return Err(Error::checkpoint(format!(
            "{name}: expected shape {shape:?} (from config.json), got {s:?}"
        )));
    }
    Ok(())
}

fn adaption(w: &mut HashMap<String, Tensor>, p: &str, h: i64) -> Result<Option<(Tensor, Tensor)>> {
    let (pn, gn) = (
        format!("{p}.self_attn.adaption_prompt"),
        format!("{p}.self_attn.adaption_gate"),
    );
    match (w.remove(&pn), w.remove(&gn)) {
        (None, None) => Ok(None),
        (Some(prompt), Some(gate)) => {
            let s = prompt.size();
            if s.len() != 3 || s[0] != 1 || s[2] != h {
                return Err(Error::checkpoint(format!(
                    "{pn}: expected shape [1, adapter_len, {h}], got {s:?}"
                )));
            }
            expect_shape(&gate, &gn, &[1])?;
            Ok(Some((prompt, gate)))
        }
        _ => Err(Error::checkpoint(format!(
            "{p}.self_attn: adaption_prompt and adaption_gate come together"
        ))),
    }
}

/// LoRA settings of the adapted linears, by module prefix: `(scaling, dropout)`.
pub type LoraSettings = HashMap<String, (f64, f64)>;

fn linear(
    w: &mut HashMap<String, Tensor>,
    lora: &LoraSettings,
    prefix: &str,
    out: i64,
    inp: i64,
    bias: bool,
) -> Result<LoraLinear> {
    let wname = format!("{prefix}.weight");
    let weight = take(w, &wname)?;
    expect_shape(&weight, &wname, &[out, inp])?;
    let b = if bias {
        let bname = format!("{prefix}.bias");
        let b = take(w, &bname)?;
        expect_shape(&b, &bname, &[out])?;
        Some(b)
    } else {
        w.remove(&format!("{prefix}.bias")) // bias tuning adds biases to bias-free configs
    };
    let pair = match lora.get(prefix) {
        None => None,
        Some(&(scaling, dropout)) => Some(crate::ops::LoraWeights {
            a: take(w, &format!("{prefix}.lora_A.weight"))?,
            b: take(w, &format!("{prefix}.lora_B.weight"))?,
            scaling,
            dropout,
        }),
    };
    LoraLinear::new(weight, b, pair).map_err(|e| match e {
        Error::Shape(m) | Error::DType(m) | Error::Device(m) => {
            Error::checkpoint(format!("{prefix}: {m}"))
        }
        other => other,
    })
}

impl Llama {
    /// Bind to tensors by HF name. `model.rotary_emb.inv_freq` may be given (a buffer that
    /// follows the module's device); otherwise it is computed.
    pub fn new(
        cfg: LlamaConfig,
        mut w: HashMap<String, Tensor>,
        lora: &LoraSettings,
    ) -> Result<Self> {
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let embed = take(&mut w, "model.embed_tokens.weight")?;
        expect_shape(&embed, "model.embed_tokens.weight", &[v, h])?;
        let kind = check::float_kind(&embed, "model.embed_tokens.weight")?;
        let device = embed.device();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
            let input_norm = take(&mut w, &format!("{p}.input_layernorm.weight"))?;
            expect_shape(&input_norm, &format!("{p}.input_layernorm.weight"), &[h])?;
            let post_norm = take(&mut w, &format!("{p}.post_attention_layernorm.weight"))?;
            expect_shape(
                &post_norm,
                &format!("{p}.post_attention_layernorm.weight"),
                &[h],
            )?;
            layers.push(Layer {
                input_norm,
                q: linear(
                    &mut w,
                    lora,
                    &format!("{p}.self_attn.q_proj"),
                    nh * hd,
                    h,
                    ab,
                )?,
                k: linear(
                    &mut w,
                    lora,
                    &format!("{p}.self_attn.k_proj"),
                    nkv * hd,
                    h,
                    ab,
                )?,
                v: linear(
                    &mut w,
                    lora,
                    &format!("{p}.self_attn.v_proj"),
                    nkv * hd,
                    h,
                    ab,
                )?,
                o: linear(
                    &mut w,
                    lora,
                    &format!("{p}.self_attn.o_proj"),
                    h,
                    nh * hd,
                    ab,
                )?,
                post_norm,
                gate: linear(&mut w, lora, &format!("{p}.mlp.gate_proj"), i, h, mb)?,
                up: linear(&mut w, lora, &format!("{p}.mlp.up_proj"), i, h, mb)?,
                down: linear(&mut w, lora, &format!("{p}.mlp.down_proj"), h, i, mb)?,
                adaption: adaption(&mut w, &p, h)?,
            });
        }
        let norm = take(&mut w, "model.norm.weight")?;
        expect_shape(&norm, "model.norm.weight", &[h])?;
        let lm_head = match w.remove("lm_head.weight") {
            Some(t) => t,
            None if cfg.tie_word_embeddings => embed.shallow_clone(),
            None => {
                return Err(Error::checkpoint(
                    "missing tensor lm_head.weight (config has tie_word_embeddings false)",
                ))
            }
        };
        expect_shape(&lm_head, "lm_head.weight", &[v, h])?;
        let inv_freq = match w.remove("model.rotary_emb.inv_freq") {
            Some(t) => t,
            None => rope_inv_freq(&cfg)?.f_to_device(device)?,
        };
        for (name, t) in [("model.norm.weight", &norm), ("lm_head.weight", &lm_head)] {
            check::same_kind(t, name, kind, "model.embed_tokens.weight")?;
            check::same_device(t, name, device, "model.embed_tokens.weight")?;
        }
        if let Some(extra) = w.keys().next() {
            return Err(Error::checkpoint(format!(
                "unexpected tensor {extra} (not part of a LLaMA with this config)"
            )));
        }
        Ok(Llama {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }

    pub fn device(&self) -> tch::Device {
        self.embed.device()
    }

    /// Token embeddings `[B, T, H]` of ids `[B, T]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        check::dims(ids, "input_ids", 2, "[B, T]")?;
        let k = check::kind_of(ids, "input_ids")?;
        if !matches!(k, Kind::Int64 | Kind::Int) {
            return Err(Error::dtype(format!(
                "input_ids: expected int64 token ids, got {}",
                check::kind_name(k)
            )));
        }
        check::same_device(ids, "input_ids", self.device(), "the model")?;
        if ids.numel() > 0 {
            let (lo, hi) = (i64::try_from(ids.f_min()?)?, i64::try_from(ids.f_max()?)?);
            if lo < 0 || hi >= self.cfg.vocab_size {
                return Err(Error::config(format!(
                    "input_ids: token ids must lie in [0, {}], got values in [{lo}, {hi}]",
                    self.cfg.vocab_size - 1
                )));
            }
        }
        Ok(Tensor::f_embedding(&self.embed, ids, -1, false, false)?)
    }

    fn rope(&self, position_ids: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
        // freqs = position_ids[..., None].float() * inv_freq; emb = cat(freqs, freqs)
        let freqs = position_ids
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&self.inv_freq.f_to_kind(Kind::Float)?)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        // rotate_half(x) * sin == roll(x, hd/2) * cat(-sin_half, sin_half), bit for bit: one
        // roll instead of narrow/narrow/neg/cat per tensor
        let s = freqs.f_sin()?;
        let sin_signed = Tensor::f_cat(&[&s.f_neg()?, &s], -1)?;
        // [B, 1, T, hd] to broadcast over heads
        Ok((
            emb.f_cos()?.f_to_kind(kind)?.f_unsqueeze(1)?,
            sin_signed.f_to_kind(kind)?.f_unsqueeze(1)?,
        ))
    }

    /// Validate `inputs_embeds` `[B, T, H]` against the model.
    pub fn check_embeds(&self, e: &Tensor) -> Result<()> {
        let s = check::dims(e, "inputs_embeds", 3, "[B, T, hidden_size]")?;
        if s[2] != self.cfg.hidden_size {
            return Err(Error::shape(format!(
                "inputs_embeds: expected last dimension {} (hidden_size), got shape {s:?}",
                self.cfg.hidden_size
            )));
        }
        if s[1] == 0 {
            return Err(Error::shape(
                "input: expected at least one token, got a sequence of length 0",
            ));
        }
        check::same_kind(e, "inputs_embeds", self.kind(), "the model's weights")?;
        check::same_device(e, "inputs_embeds", self.device(), "the model")?;
        Ok(())
    }

    /// Rotary tables and the attention mask for hidden states `x` `[B, T, H]` after `past` cached
    /// tokens: `(cos, sin, mask)`; the mask is None when SDPA's causal mode (or nothing) suffices.
    pub fn prepare(
        &self,
        x: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        past: i64,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let s = x.size();
        let (b, t) = (s[0], s[1]);
        let dev = self.device();
        let pos = match position_ids {
            Some(p) => {
                let ps = check::dims(p, "position_ids", 2, "[B, T]")?;
                if ps[1] != t || (ps[0] != b && ps[0] != 1) {
                    return Err(Error::shape(format!(
                        "position_ids: expected shape [{b}, {t}], got {ps:?}"
                    )));
                }
                check::same_device(p, "position_ids", dev, "the model")?;
                p.shallow_clone()
            }
            None => Tensor::f_arange_start(past, past + t, (Kind::Int64, dev))?.f_unsqueeze(0)?,
        };
        let mask = match attention_mask {
            // no padding: SDPA's is_causal for a prompt, nothing at all for one new token
            None if past == 0 || t == 1 => None,
            m => Some(self.build_mask(m, b, t, past)?),
        };
        let (cos, sin) = self.rope(&pos, x.f_kind()?)?;
        Ok((cos, sin, mask))
    }

    /// One decoder layer: `h [B, T, H] -> [B, T, H]`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_forward(
        &self,
        li: usize,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
        fused: Option<&Fused>,
    ) -> Result<Tensor> {
        let layer = self.layers.get(li).ok_or_else(|| {
            Error::config(format!(
                "layer {li}: the model has {} layers",
                self.layers.len()
            ))
        })?;
        let s = h.size();
        let (b, t) = (s[0], s[1]);
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let xn = rms_norm(h, &layer.input_norm, self.cfg.rms_norm_eps)?;
        let heads = |x: Tensor, n: i64| -> Result<Tensor> {
            Ok(x.f_view([b, t, n, hd])?.f_transpose(1, 2)?)
        };
        let (q, k, v) = match fused {
            Some(f) => {
                let qkv = xn.f_linear(&f.qkv, f.qkv_bias.as_ref())?;
                (
                    heads(qkv.f_narrow(-1, 0, nh * hd)?, nh)?,
                    heads(qkv.f_narrow(-1, nh * hd, nkv * hd)?, nkv)?,
                    heads(qkv.f_narrow(-1, (nh + nkv) * hd, nkv * hd)?, nkv)?,
                )
            }
            None => (
                heads(layer.q.forward(&xn, train)?, nh)?,
                heads(layer.k.forward(&xn, train)?, nkv)?,
                heads(layer.v.forward(&xn, train)?, nkv)?,
            ),
        };
        let q = apply_rope(&q, cos, sin)?;
        let k = apply_rope(&k, cos, sin)?;
        let (k, v) = match cache {
            Some(c) => c.append(li, &k, &v)?,
            None => (k, v),
        };
        let attn = Tensor::f_scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            0.0,
            mask.is_none() && t > 1,
            None,
            nkv != nh,
        )?;
        let attn = attn.f_transpose(1, 2)?.f_reshape([b, t, nh * hd])?;
        let mut out = layer.o.forward(&attn, train)?;
        if let Some((prompt, gate)) = &layer.adaption {
            out = out.f_add(&self.adaption_output(layer, prompt, gate, &q, b, t, train)?)?;
        }
        let h = h.f_add(&out)?;
        let xn = rms_norm(&h, &layer.post_norm, self.cfg.rms_norm_eps)?;
        let (g, u) = match fused {
            Some(f) => {
                let gu = xn.f_linear(&f.gate_up, f.gate_up_bias.as_ref())?;
                let i = self.cfg.intermediate_size;
                (gu.f_narrow(-1, 0, i)?, gu.f_narrow(-1, i, i)?)
            }
            None => (
                layer.gate.forward(&xn, train)?,
                layer.up.forward(&xn, train)?,
            ),
        };
        Ok(h.f_add(&layer.down.forward(&g.f_silu()?.f_mul(&u)?, train)?)?)
    }

    /// Final norm and LM head: `(normed [B, T, H], logits [B, T or 1, V])`.
    pub fn head(&self, h: &Tensor, last_only: bool) -> Result<(Tensor, Tensor)> {
        let h = rms_norm(h, &self.norm, self.cfg.rms_norm_eps)?;
        let t = h.size()[1];
        let hl = if last_only {
            h.f_narrow(1, t - 1, 1)?
        } else {
            h.shallow_clone()
        };
        let logits = hl.f_linear::<Tensor>(&self.lm_head, None)?;
        Ok((h, logits))
    }

    /// Forward. `attention_mask` `[B, past + T]` (1 keep, 0 pad) covers cached and new tokens;
    /// `position_ids` `[B, T]` default to `past..past+T`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        input: Input<'_>,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
        last_only: bool,
        train: bool,
    ) -> Result<LlamaOutput> {
        self.forward_with(
            input,
            attention_mask,
            position_ids,
            cache,
            output_hidden_states,
            last_only,
            train,
            None,
        )
    }

    /// Fused inference projections for layers without LoRA (None for layers with it).
    /// Built once per `generate`: the concatenated weights are copies.
    pub fn fuse_for_inference(&self) -> Result<Vec<Option<Fused>>> {
        let _g = tch::no_grad_guard();
        let cat_bias = |a: &[&LoraLinear]| -> Result<Option<Tensor>> {
            if a.iter().all(|l| l.bias.is_none()) {
                return Ok(None);
            }
            let parts: Vec<Tensor> = a
                .iter()
                .map(|l| match &l.bias {
                    Some(b) => Ok(b.shallow_clone()),
                    None => Ok(l.weight.f_new_zeros(
                        [l.weight.size()[0]],
                        (l.weight.f_kind()?, l.weight.device()),
                    )?),
                })
                .collect::<Result<_>>()?;
            Ok(Some(Tensor::f_cat(&parts, 0)?))
        };
        self.layers
            .iter()
            .map(|l| {
                let parts = [&l.q, &l.k, &l.v, &l.gate, &l.up];
                if parts.iter().any(|p| p.lora.is_some()) {
                    return Ok(None);
                }
                Ok(Some(Fused {
                    qkv: Tensor::f_cat(&[&l.q.weight, &l.k.weight, &l.v.weight], 0)?,
                    qkv_bias: cat_bias(&[&l.q, &l.k, &l.v])?,
                    gate_up: Tensor::f_cat(&[&l.gate.weight, &l.up.weight], 0)?,
                    gate_up_bias: cat_bias(&[&l.gate, &l.up])?,
                }))
            })
            .collect()
    }

    /// The fused float32 CPU decode step over these weights, when the model qualifies: CPU,
    /// float32, no adaption prompt, contiguous weights (unmerged LoRA branches are computed in
    /// the step, without dropout as at inference). It reads the weights in place.
    pub fn cpu_decoder(&self) -> Result<Option<CpuDecoder>> {
        if self.device() != tch::Device::Cpu || self.kind() != Kind::Float {
            return Ok(None);
        }
        let lin = |l: &LoraLinear| DLinear {
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
            DLinear {
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

    /// [`Llama::forward`] with optional fused inference projections.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with(
        &self,
        input: Input<'_>,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        output_hidden_states: bool,
        last_only: bool,
        train: bool,
        fused: Option<&[Option<Fused>]>,
    ) -> Result<LlamaOutput> {
        let x = match input {
            Input::Ids(ids) => self.embed(ids)?,
            Input::Embeds(e) => {
                self.check_embeds(e)?;
                e.shallow_clone()
            }
        };
        let t = x.size()[1];
        if t == 0 {
            return Err(Error::shape(
                "input: expected at least one token, got a sequence of length 0",
            ));
        }
        let past = cache.as_ref().map_or(0, |c| c.len);
        if past + t > self.cfg.max_position_embeddings {
            return Err(Error::shape(format!(
                "input: {} tokens exceed the model's context of {} (max_position_embeddings)",
                past + t,
                self.cfg.max_position_embeddings
            )));
        }
        let (cos, sin, mask) = self.prepare(&x, attention_mask, position_ids, past)?;
        let mut hidden_states = Vec::new();
        let mut h = x;
        for li in 0..self.layers.len() {
            if output_hidden_states {
                hidden_states.push(h.shallow_clone());
            }
            let f = fused.and_then(|f| f.get(li)).and_then(Option::as_ref);
            h = self.layer_forward(
                li,
                &h,
                &cos,
                &sin,
                mask.as_ref(),
                cache.as_deref_mut(),
                train,
                f,
            )?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let (h, logits) = self.head(&h, last_only)?;
        if output_hidden_states {
            hidden_states.push(h);
        }
        Ok(LlamaOutput {
            logits,
            hidden_states,
        })
    }

    /// PEFT's `AdaptedAttention`: queries (after RoPE) attend to the adaption prompt's keys and
    /// values (no RoPE, no mask) with their own float32 softmax scaled by the gate; the result
    /// goes through `o_proj` and is added to the attention output.
    #[allow(clippy::too_many_arguments)]
    fn adaption_output(
        &self,
        layer: &Layer,
        prompt: &Tensor,
        gate: &Tensor,
        q: &Tensor,
        b: i64,
        t: i64,
        train: bool,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let len = prompt.size()[1];
        let kind = q.f_kind()?;
        let heads = |x: Tensor| -> Result<Tensor> {
            let x = x.f_view([1, len, nkv, hd])?.f_transpose(1, 2)?; // [1, nkv, L, hd]
            let x = if nkv != nh {
                x.f_repeat_interleave_self_int(nh / nkv, Some(1), None::<i64>)?
            } else {
                x
            };
            Ok(x.f_to_kind(kind)?)
        };
        let ak = heads(layer.k.forward(prompt, train)?)?;
        let av = heads(layer.v.forward(prompt, train)?)?;
        let scores = q
            .f_matmul(&ak.f_transpose(2, 3)?)?
            .f_div_scalar((hd as f64).sqrt())?;
        let probs = scores
            .f_softmax(-1, Kind::Float)?
            .f_to_kind(kind)?
            .f_mul(gate)?;
        let out = probs
            .f_matmul(&av)?
            .f_transpose(1, 2)?
            .f_reshape([b, t, nh * hd])?;
        layer.o.forward(&out, train)
    }

    /// Boolean mask `[B, 1, T, past + T]`: causal, padding keys removed, and every query allowed to
    /// see itself (so fully padded rows stay finite, as transformers' sdpa path keeps them).
    fn build_mask(
        &self,
        attention_mask: Option<&Tensor>,
        b: i64,
        t: i64,
        past: i64,
    ) -> Result<Tensor> {
        let dev = self.device();
        let total = past + t;
        let qpos = Tensor::f_arange_start(past, total, (Kind::Int64, dev))?.f_view([t, 1])?;
        let kpos = Tensor::f_arange(total, (Kind::Int64, dev))?.f_view([1, total])?;
        let causal = kpos.f_le_tensor(&qpos)?; // [T, S]
        let mut m = causal.f_view([1, 1, t, total])?;
        if let Some(am) = attention_mask {
            let s = check::dims(am, "attention_mask", 2, "[B, past + T]")?;
            if s != [b, total] {
                return Err(Error::shape(format!(
                    "attention_mask: expected shape [{b}, {total}] (batch, cached + new tokens), got {s:?}"
                )));
            }
            check::same_device(am, "attention_mask", dev, "the model")?;
            let keep = am.f_ne(0)?.f_view([b, 1, 1, total])?;
            m = m.f_logical_and(&keep)?;
        }
        let diag = kpos.f_eq_tensor(&qpos)?.f_view([1, 1, t, total])?;
        Ok(m.f_logical_or(&diag)?)
    }
}
