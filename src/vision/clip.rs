//! CLIP's vision tower (HF `CLIPVisionModel` names and numerics): class token, patch
//! convolution without bias (2D, or 3D after inflation), learned position embeddings,
//! `pre_layrnorm`, pre-norm encoder layers (separate q/k/v/out projections with biases,
//! quick-GELU MLP) and `post_layernorm` on the class token (the pooled output).
//!
//! The 3D form is PICG's inflated CLIP: the patch convolution sees volumes; when the token grid
//! has fewer tokens than CLIP's position table, tokens are zero-padded to reuse it unchanged
//! (PICG: 6x6x7 = 252 tokens padded to 256 for CLIP's 1 + 16x16 positions).

use std::collections::HashMap;

use tch::Tensor;

use super::vit::MAX_LAYERS;
use crate::check;
use crate::error::{Error, Result};
use crate::ops::LoraLinear;
use crate::weights::{self, Bias, Weights};

struct Layer {
    ln1: (Tensor, Tensor),
    q: LoraLinear,
    k: LoraLinear,
    v: LoraLinear,
    o: LoraLinear,
    ln2: (Tensor, Tensor),
    fc1: LoraLinear,
    fc2: LoraLinear,
}

pub struct ClipVision {
    patch: Tensor,
    patch_size: Vec<i64>,
    class_embedding: Tensor,
    pos: Tensor,
    positions: i64,
    pre_ln: (Tensor, Tensor),
    layers: Vec<Layer>,
    post_ln: (Tensor, Tensor),
    heads: i64,
    eps: f64,
    dim: i64,
}

const P: &str = "vision_model";

/// What a forward returns (as `CLIPVisionModel(output_hidden_states=True)`).
pub struct ClipOutput {
    pub last_hidden_state: Tensor,
    pub pooler_output: Tensor,
    pub hidden_states: Vec<Tensor>,
}

impl ClipVision {
    pub fn new(w: HashMap<String, Tensor>, layers: i64, heads: i64, eps: f64) -> Result<Self> {
        let layers = weights::count(layers, "num_layers", MAX_LAYERS)?;
        weights::positive(heads, "num_heads")?;
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(Error::config(format!(
                "eps: expected a number in (0, 1), got {eps}"
            )));
        }
        let w = Weights::new(w, "a CLIP vision tower");
        w.discard(&format!("{P}.embeddings.position_ids"));
        let vb = w.root().pp(P);
        let emb = vb.pp("embeddings");
        let (class_embedding, cs) = emb.take_dims("class_embedding", 1, "[hidden]")?;
        let dim = cs[0];
        weights::head_dim(dim, heads, "hidden size", "num_attention_heads")?;
        let pe = emb.pp("patch_embedding");
        let rank = pe.shape_of("weight").map_or(4, |s| s.len());
        let patch = if rank == 5 {
            pe.take_dims("weight", 5, "[hidden, C, kd, kh, kw]")?
        } else {
            pe.take_dims("weight", 4, "[hidden, C, kh, kw] (or 5-d when inflated)")?
        };
        let (patch, ps) = patch;
        if ps[0] != dim {
            return Err(Error::checkpoint(format!(
                "{}: expected [{dim}, C, (kd,) kh, kw], got {ps:?}",
                pe.path("weight")
            )));
        }
        let (pos, pos_s) =
            emb.pp("position_embedding")
                .take_dims("weight", 2, "[positions, hidden]")?;
        if pos_s[1] != dim || pos_s[0] < 2 {
            return Err(Error::checkpoint(format!(
                "{}: expected [positions >= 2, {dim}], got {pos_s:?}",
                emb.pp("position_embedding").path("weight")
            )));
        }
        let pre_ln = vb.pp("pre_layrnorm").layer_norm(dim)?;
        let mut ls = Vec::with_capacity(layers);
        for i in 0..layers {
            let p = vb.pp("encoder.layers").pp(i);
            let a = p.pp("self_attn");
            let ln1 = p.pp("layer_norm1").layer_norm(dim)?;
            let q = a.pp("q_proj").linear(dim, dim, Bias::Required)?;
            let k = a.pp("k_proj").linear(dim, dim, Bias::Required)?;
            let v = a.pp("v_proj").linear(dim, dim, Bias::Required)?;
            let o = a.pp("out_proj").linear(dim, dim, Bias::Required)?;
            let ln2 = p.pp("layer_norm2").layer_norm(dim)?;
            let (fc1, inter, _) = p
                .pp("mlp.fc1")
                .linear_any(None, Some(dim), Bias::Required)?;
            let fc2 = p.pp("mlp.fc2").linear(dim, inter, Bias::Required)?;
            ls.push(Layer {
                ln1,
                q,
                k,
                v,
                o,
                ln2,
                fc1,
                fc2,
            });
        }
        let post_ln = vb.pp("post_layernorm").layer_norm(dim)?;
        w.finish()?;
        Ok(ClipVision {
            patch,
            patch_size: ps,
            class_embedding,
            pos,
            positions: pos_s[0] - 1,
            pre_ln,
            layers: ls,
            post_ln,
            heads,
            eps,
            dim,
        })
    }

    /// `x [B, C, H, W]` (2D) or `[B, C, D, H, W]` (inflated 3D).
    pub fn forward(&self, x: &Tensor) -> Result<ClipOutput> {
        let (h, hidden) = self.run(x, self.layers.len(), true)?;
        let pooled = self.layer_norm(&h.f_select(1, 0)?, &self.post_ln)?;
        Ok(ClipOutput {
            last_hidden_state: h,
            pooler_output: pooled,
            hidden_states: hidden,
        })
    }

    /// `hidden_states[layer]` of [`ClipVision::forward`] (`layer` indexes the `num_layers + 1`
    /// hidden states, negative from the end as in Python: LLaVA's `mm_vision_select_layer = -2`),
    /// running only the encoder layers that it needs and keeping no other hidden state.
    pub fn hidden_state(&self, x: &Tensor, layer: i64) -> Result<Tensor> {
        let n = self.layers.len() as i64 + 1;
        if !(-n..n).contains(&layer) {
            return Err(Error::config(format!(
                "layer: expected an index into the {n} hidden states ({}..={}), got {layer}",
                -n,
                n - 1
            )));
        }
        let stop = if layer < 0 { layer + n } else { layer };
        Ok(self.run(x, stop as usize, false)?.0)
    }

    fn layer_norm(&self, t: &Tensor, p: &(Tensor, Tensor)) -> Result<Tensor> {
        Ok(t.f_layer_norm(
            [self.dim].as_slice(),
            Some(&p.0),
            Some(&p.1),
            self.eps,
            true,
        )?)
    }

    /// Embeddings, `pre_layrnorm` and the first `run` encoder layers: the last hidden state and,
    /// when `keep`, every hidden state on the way. Where no gradient is recorded (frozen tower
    /// or no_grad), the residual adds and quick-GELU run in place on fresh outputs.
    fn run(&self, x: &Tensor, run: usize, keep: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let ps = &self.patch_size;
        let spatial = ps.len() - 2;
        let xs = check::dims(
            x,
            "x",
            spatial + 2,
            if spatial == 2 {
                "[B, C, H, W]"
            } else {
                "[B, C, D, H, W]"
            },
        )?;
        if xs[1] != ps[1] {
            return Err(Error::shape(format!(
                "x: expected {} channels, got shape {xs:?}",
                ps[1]
            )));
        }
        for i in 0..spatial {
            if xs[2 + i] % ps[2 + i] != 0 {
                return Err(Error::shape(format!(
                    "x: spatial size {:?} is not divisible by the patch size {:?}",
                    &xs[2..],
                    &ps[2..]
                )));
            }
        }
        check::same_kind(x, "x", self.patch.f_kind()?, "the CLIP weights")?;
        check::same_device(x, "x", self.patch.device(), "the CLIP weights")?;
        let stride = &ps[2..];
        let zeros = vec![0i64; spatial];
        let ones = vec![1i64; spatial];
        let emb = if spatial == 2 {
            x.f_conv2d::<Tensor>(
                &self.patch,
                None,
                stride,
                zeros.as_slice(),
                ones.as_slice(),
                1,
            )?
        } else {
            x.f_conv3d::<Tensor>(
                &self.patch,
                None,
                stride,
                zeros.as_slice(),
                ones.as_slice(),
                1,
            )?
        };
        let mut tokens = emb.f_flatten(2, -1)?.f_transpose(1, 2)?; // [B, N, D]
        let b = xs[0];
        let n: i64 = (0..spatial).map(|i| xs[2 + i] / ps[2 + i]).product();
        let positions = self.positions;
        if n > positions {
            return Err(Error::shape(format!(
                "x: {n} patch tokens exceed the {positions} position embeddings (pass a smaller volume or interpolate the positions)"
            )));
        }
        if n < positions {
            let pad = Tensor::f_zeros(
                [b, positions - n, self.dim],
                (tokens.f_kind()?, tokens.device()),
            )?;
            tokens = Tensor::f_cat(&[tokens, pad], 1)?;
        }
        let cls = self
            .class_embedding
            .f_view([1, 1, self.dim])?
            .f_expand([b, 1, self.dim], false)?;
        let h = Tensor::f_cat(&[cls, tokens], 1)?.f_add(&self.pos.f_unsqueeze(0)?)?;
        let mut h = self.layer_norm(&h, &self.pre_ln)?;
        let mut hidden = Vec::new();
        if keep {
            hidden.push(h.shallow_clone());
        }
        let (nh, hd) = (self.heads, self.dim / self.heads);
        let t = positions + 1;
        for l in self.layers.iter().take(run) {
            let xn = self.layer_norm(&h, &l.ln1)?;
            let split =
                |y: Tensor| -> Result<Tensor> { Ok(y.f_view([b, t, nh, hd])?.f_transpose(1, 2)?) };
            let q = split(l.q.forward(&xn, false)?)?;
            let k = split(l.k.forward(&xn, false)?)?;
            let v = split(l.v.forward(&xn, false)?)?;
            let a = Tensor::f_scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, false, None, false,
            )?;
            let a = a.f_transpose(1, 2)?.f_reshape([b, t, self.dim])?;
            h = residual(l.o.forward(&a, false)?, &h)?;
            let xn = self.layer_norm(&h, &l.ln2)?;
            let m = quick_gelu(l.fc1.forward(&xn, false)?)?;
            h = residual(l.fc2.forward(&m, false)?, &h)?;
            if keep {
                hidden.push(h.shallow_clone());
            }
        }
        Ok((h, hidden))
    }
}

/// `y + h` (the residual); in place on `y`, a fresh projection output, when no gradient is
/// recorded for it.
fn residual(mut y: Tensor, h: &Tensor) -> Result<Tensor> {
    if y.requires_grad() || h.requires_grad() {
        return Ok(y.f_add(h)?);
    }
    let _ = y.f_add_(h)?;
    Ok(y)
}

/// CLIP's `quick_gelu`, `m * sigmoid(1.702 m)`: one temporary instead of two when no gradient
/// is recorded.
fn quick_gelu(m: Tensor) -> Result<Tensor> {
    if m.requires_grad() {
        return Ok(m.f_mul(&m.f_mul_scalar(1.702)?.f_sigmoid()?)?);
    }
    let mut g = m.f_mul_scalar(1.702)?;
    let _ = g.f_sigmoid_()?;
    let _ = g.f_mul_(&m)?;
    Ok(g)
}
