//! The LLaMA decoder forward, as transformers' `LlamaForCausalLM` (sdpa attention):
//! RMSNorm in float32, rotary embeddings ([`super::rope`]), grouped-query attention through
//! libtorch's `scaled_dot_product_attention`, SwiGLU MLP, optional KV cache. The fused float32
//! CPU decode step over the same weights is built in [`super::decode_cpu`].

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::cache::KvCache;
use super::config::LlamaConfig;
use super::rope::{apply_rope, rope_inv_freq, tables};
use crate::adapters::LoraSettings;
use crate::check;
use crate::error::{Error, Result};
use crate::ops::LoraLinear;
use crate::weights::{Bias, Vb, Weights};

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

/// Inference-only fused projections of a layer without LoRA: `[q; k; v]` and `[gate; up]`.
pub struct Fused {
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    gate_up: Tensor,
    gate_up_bias: Option<Tensor>,
}

pub(super) struct Layer {
    pub(super) input_norm: Tensor,
    pub(super) q: LoraLinear,
    pub(super) k: LoraLinear,
    pub(super) v: LoraLinear,
    pub(super) o: LoraLinear,
    pub(super) post_norm: Tensor,
    pub(super) gate: LoraLinear,
    pub(super) up: LoraLinear,
    pub(super) down: LoraLinear,
    /// LLaMA-Adapter (V2) gated adaption prompt: `[1, L, H]` prompt and its zero-init gate `[1]`.
    pub(super) adaption: Option<(Tensor, Tensor)>,
}

/// Model tensors bound by reference (shallow clones of Python-owned parameters).
pub struct Llama {
    pub cfg: LlamaConfig,
    pub(super) embed: Tensor,
    pub(super) layers: Vec<Layer>,
    pub(super) norm: Tensor,
    pub(super) lm_head: Tensor,
    pub(super) inv_freq: Tensor,
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

/// The options of [`Llama::forward`] (defaults: no mask, positions `past..past+T`, logits for
/// every position, inference).
#[derive(Clone, Copy, Default)]
pub struct ForwardOptions<'a> {
    /// `[B, past + T]`, 1 keep / 0 pad, covering cached and new tokens.
    pub attention_mask: Option<&'a Tensor>,
    /// `[B, T]` (or `[1, T]`).
    pub position_ids: Option<&'a Tensor>,
    /// Also return the embeddings, each layer's output and the final-normed last layer.
    pub output_hidden_states: bool,
    /// Logits of the last position only (`[B, 1, V]`).
    pub last_only: bool,
    /// Training mode (LoRA dropout).
    pub train: bool,
    /// Fused inference projections per layer ([`Llama::fuse_for_inference`]).
    pub fused: Option<&'a [Option<Fused>]>,
}

/// Rotary tables and mask of one forward: what every layer receives.
pub struct Prepared {
    /// `[B, 1, T, head_dim]`.
    pub cos: Tensor,
    /// `[B, 1, T, head_dim]` (`cat(-sin_half, sin_half)`).
    pub sin: Tensor,
    /// Boolean `[B, 1, T, past + T]`, or None when SDPA's causal mode (or nothing) suffices.
    pub mask: Option<Tensor>,
}

fn adaption(vb: &Vb<'_>, h: i64) -> Result<Option<(Tensor, Tensor)>> {
    match (vb.contains("adaption_prompt"), vb.contains("adaption_gate")) {
        (false, false) => Ok(None),
        (true, true) => {
            let (prompt, s) = vb.take_dims("adaption_prompt", 3, "[1, adapter_len, hidden]")?;
            if s[0] != 1 || s[2] != h {
                return Err(Error::checkpoint(format!(
                    "{}: expected shape [1, adapter_len, {h}], got {s:?}",
                    vb.path("adaption_prompt")
                )));
            }
            Ok(Some((prompt, vb.take("adaption_gate", &[1])?)))
        }
        _ => Err(Error::checkpoint(format!(
            "{}: adaption_prompt and adaption_gate come together",
            vb.prefix()
        ))),
    }
}

fn bias(on: bool) -> Bias {
    // bias tuning adds biases to bias-free configs: optional then
    if on {
        Bias::Required
    } else {
        Bias::Optional
    }
}

impl Llama {
    /// Bind to tensors by HF name. `model.rotary_emb.inv_freq` may be given (a buffer that
    /// follows the module's device); otherwise it is computed.
    pub fn new(cfg: LlamaConfig, w: HashMap<String, Tensor>, lora: &LoraSettings) -> Result<Self> {
        cfg.validate()?;
        crate::adapters::validate(lora)?;
        let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (nh, nkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let w = Weights::new(w, "a LLaMA with this config").with_lora(lora);
        let root = w.root();
        let m = root.pp("model");
        let embed = m.pp("embed_tokens").take("weight", &[v, h])?;
        check::float_kind(&embed, "model.embed_tokens.weight")?;
        let device = embed.device();
        let (ab, mb) = (bias(cfg.attention_bias), bias(cfg.mlp_bias));
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for l in 0..cfg.num_hidden_layers {
            let p = m.pp("layers").pp(l);
            let (a, f) = (p.pp("self_attn"), p.pp("mlp"));
            layers.push(Layer {
                input_norm: p.pp("input_layernorm").rms_norm(h)?,
                q: a.pp("q_proj").linear(nh * hd, h, ab)?,
                k: a.pp("k_proj").linear(nkv * hd, h, ab)?,
                v: a.pp("v_proj").linear(nkv * hd, h, ab)?,
                o: a.pp("o_proj").linear(h, nh * hd, ab)?,
                post_norm: p.pp("post_attention_layernorm").rms_norm(h)?,
                gate: f.pp("gate_proj").linear(i, h, mb)?,
                up: f.pp("up_proj").linear(i, h, mb)?,
                down: f.pp("down_proj").linear(h, i, mb)?,
                adaption: adaption(&a, h)?,
            });
        }
        let norm = m.pp("norm").rms_norm(h)?;
        let lm_head = match root.opt("lm_head.weight", &[v, h])? {
            Some(t) => t,
            None if cfg.tie_word_embeddings => embed.shallow_clone(),
            None => {
                return Err(Error::checkpoint(
                    "missing tensor lm_head.weight (config has tie_word_embeddings false)",
                ))
            }
        };
        let inv_freq = match m.pp("rotary_emb").take_any_kind("inv_freq", &[hd / 2])? {
            Some(t) => {
                check::float_kind(&t, "model.rotary_emb.inv_freq")?;
                check::same_device(
                    &t,
                    "model.rotary_emb.inv_freq",
                    device,
                    "model.embed_tokens.weight",
                )?;
                t
            }
            None => rope_inv_freq(&cfg)?.f_to_device(device)?,
        };
        w.finish()?;
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
    ) -> Result<Prepared> {
        let s = check::dims(x, "hidden_states", 3, "[B, T, hidden_size]")?;
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
        let (cos, sin) = tables(&pos, &self.inv_freq, x.f_kind()?)?;
        Ok(Prepared { cos, sin, mask })
    }

    /// One decoder layer on hidden states and tables from outside (activation checkpointing
    /// from Python): every argument is checked against the model first.
    pub fn layer(&self, li: usize, h: &Tensor, prep: &Prepared, train: bool) -> Result<Tensor> {
        self.check_embeds(h)?;
        let s = h.size();
        let (b, t) = (s[0], s[1]);
        let hd = self.cfg.head_dim;
        for (name, x) in [("cos", &prep.cos), ("sin", &prep.sin)] {
            let xs = check::dims(x, name, 4, "[B, 1, T, head_dim]")?;
            if (xs[0] != b && xs[0] != 1) || xs[1] != 1 || xs[2] != t || xs[3] != hd {
                return Err(Error::shape(format!(
                    "{name}: expected shape [{b}, 1, {t}, {hd}], got {xs:?}"
                )));
            }
            check::same_kind(x, name, self.kind(), "the model's weights")?;
            check::same_device(x, name, self.device(), "the model")?;
        }
        if let Some(m) = &prep.mask {
            let ms = check::dims(m, "mask", 4, "[B, 1, T, T]")?;
            if (ms[0] != b && ms[0] != 1) || ms[1] != 1 || ms[2] != t || ms[3] != t {
                return Err(Error::shape(format!(
                    "mask: expected shape [{b}, 1, {t}, {t}], got {ms:?}"
                )));
            }
            if check::kind_of(m, "mask")? != Kind::Bool {
                return Err(Error::dtype(format!(
                    "mask: expected a bool tensor, got {}",
                    check::kind_name(check::kind_of(m, "mask")?)
                )));
            }
            check::same_device(m, "mask", self.device(), "the model")?;
        }
        self.layer_forward(li, h, prep, None, train, None)
    }

    /// One decoder layer: `h [B, T, H] -> [B, T, H]` (arguments as [`Llama::prepare`] made them).
    pub fn layer_forward(
        &self,
        li: usize,
        h: &Tensor,
        prep: &Prepared,
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
        let s = check::dims(h, "hidden_states", 3, "[B, T, hidden_size]")?;
        let (b, t) = (s[0], s[1]);
        let (cos, sin, mask) = (&prep.cos, &prep.sin, prep.mask.as_ref());
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
        self.check_embeds(h)?;
        let t = h.size()[1];
        let h = rms_norm(h, &self.norm, self.cfg.rms_norm_eps)?;
        let hl = if last_only {
            h.f_narrow(1, t - 1, 1)?
        } else {
            h.shallow_clone()
        };
        let logits = hl.f_linear::<Tensor>(&self.lm_head, None)?;
        Ok((h, logits))
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

    /// Forward of token ids or embeddings after the `cache`'s tokens (see [`ForwardOptions`]).
    pub fn forward(
        &self,
        input: Input<'_>,
        mut cache: Option<&mut KvCache>,
        opts: &ForwardOptions<'_>,
    ) -> Result<LlamaOutput> {
        let ForwardOptions {
            attention_mask,
            position_ids,
            output_hidden_states,
            last_only,
            train,
            fused,
        } = *opts;
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
        let prep = self.prepare(&x, attention_mask, position_ids, past)?;
        let mut hidden_states = Vec::new();
        let mut h = x;
        for li in 0..self.layers.len() {
            if output_hidden_states {
                hidden_states.push(h.shallow_clone());
            }
            let f = fused.and_then(|f| f.get(li)).and_then(Option::as_ref);
            h = self.layer_forward(li, &h, &prep, cache.as_deref_mut(), train, f)?;
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

/// A tiny random model for the core's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use tch::Device;

    /// vocab 50, hidden 32, 2 layers, 4 heads (2 KV heads), 64 positions.
    pub fn tiny(seed: i64) -> Result<Llama> {
        let cfg = LlamaConfig::from_json(
            r#"{"vocab_size":50,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64}"#,
        )?;
        tch::manual_seed(seed);
        let f = (Kind::Float, Device::Cpu);
        let mut w: HashMap<String, Tensor> = HashMap::new();
        w.insert(
            "model.embed_tokens.weight".into(),
            Tensor::randn([50, 32], f),
        );
        w.insert("lm_head.weight".into(), Tensor::randn([50, 32], f) * 0.3);
        w.insert("model.norm.weight".into(), Tensor::ones([32], f));
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            for (n, o, i) in [
                ("self_attn.q_proj", 32, 32),
                ("self_attn.k_proj", 16, 32),
                ("self_attn.v_proj", 16, 32),
                ("self_attn.o_proj", 32, 32),
                ("mlp.gate_proj", 48, 32),
                ("mlp.up_proj", 48, 32),
                ("mlp.down_proj", 32, 48),
            ] {
                w.insert(format!("{p}.{n}.weight"), Tensor::randn([o, i], f) * 0.2);
            }
            for n in ["input_layernorm", "post_attention_layernorm"] {
                w.insert(format!("{p}.{n}.weight"), Tensor::ones([32], f));
            }
        }
        Llama::new(cfg, w, &LoraSettings::new())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::tiny;
    use super::*;
    use tch::Device;

    #[test]
    fn rankless_and_misshapen_inputs_are_named_errors() -> Result<()> {
        let m = tiny(0)?;
        let scalar = Tensor::from(1.0f32);
        let prep = Prepared {
            cos: scalar.shallow_clone(),
            sin: scalar.shallow_clone(),
            mask: None,
        };
        assert!(matches!(
            m.layer(0, &scalar, &prep, false),
            Err(Error::Shape(_))
        ));
        assert!(matches!(m.head(&scalar, false), Err(Error::Shape(_))));
        let h = Tensor::zeros([1, 3, 32], (Kind::Float, Device::Cpu));
        assert!(matches!(m.layer(0, &h, &prep, false), Err(Error::Shape(_))));
        let good = m.prepare(&h, None, None, 0)?;
        assert!(m.layer(0, &h, &good, false).is_ok());
        assert!(matches!(
            m.layer(7, &h, &good, false),
            Err(Error::Config(_))
        ));
        let wrong = Tensor::zeros([1, 3, 31], (Kind::Float, Device::Cpu));
        assert!(matches!(m.head(&wrong, false), Err(Error::Shape(_))));
        let ids = Tensor::from_slice(&[60i64]).view([1, 1]);
        assert!(matches!(
            m.forward(Input::Ids(&ids), None, &ForwardOptions::default()),
            Err(Error::Config(_))
        ));
        Ok(())
    }

    #[test]
    fn checkpoint_mismatches_are_named() -> Result<()> {
        let cfg = tiny(0)?.cfg;
        let t = |s: &[i64]| Tensor::zeros(s, (Kind::Float, Device::Cpu));
        let mut w = HashMap::new();
        w.insert("model.embed_tokens.weight".to_string(), t(&[50, 31]));
        match Llama::new(cfg.clone(), w, &LoraSettings::new()) {
            Err(Error::Checkpoint(msg)) => {
                assert!(msg.contains("model.embed_tokens.weight"), "{msg}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        let mut w = HashMap::new();
        w.insert("model.embed_tokens.weight".to_string(), t(&[50, 32]));
        match Llama::new(cfg, w, &LoraSettings::new()) {
            Err(Error::Checkpoint(msg)) => {
                assert!(msg.contains("missing tensor model.layers.0"), "{msg}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        Ok(())
    }
}
