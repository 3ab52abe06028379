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

use super::{expect_shape, take};
use crate::check;
use crate::error::{Error, Result};
use crate::ops::LoraLinear;

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
    class_embedding: Tensor,
    pos: Tensor,
    pre_ln: (Tensor, Tensor),
    layers: Vec<Layer>,
    post_ln: (Tensor, Tensor),
    heads: i64,
    eps: f64,
    dim: i64,
}

const P: &str = "vision_model";

fn ln(w: &mut HashMap<String, Tensor>, p: &str, d: i64) -> Result<(Tensor, Tensor)> {
    let (a, b) = (
        take(w, &format!("{p}.weight"))?,
        take(w, &format!("{p}.bias"))?,
    );
    expect_shape(&a, &format!("{p}.weight"), &[d])?;
    expect_shape(&b, &format!("{p}.bias"), &[d])?;
    Ok((a, b))
}

fn lin(w: &mut HashMap<String, Tensor>, p: &str, out: i64, inp: i64) -> Result<LoraLinear> {
    let weight = take(w, &format!("{p}.weight"))?;
    expect_shape(&weight, &format!("{p}.weight"), &[out, inp])?;
    let bias = take(w, &format!("{p}.bias"))?;
    LoraLinear::new(weight, Some(bias), None)
}

/// What a forward returns (as `CLIPVisionModel(output_hidden_states=True)`).
pub struct ClipOutput {
    pub last_hidden_state: Tensor,
    pub pooler_output: Tensor,
    pub hidden_states: Vec<Tensor>,
}

impl ClipVision {
    pub fn new(mut w: HashMap<String, Tensor>, layers: i64, heads: i64, eps: f64) -> Result<Self> {
        let class_embedding = take(&mut w, &format!("{P}.embeddings.class_embedding"))?;
        let dim = check::dims(&class_embedding, "class_embedding", 1, "[hidden]")?[0];
        let patch = take(&mut w, &format!("{P}.embeddings.patch_embedding.weight"))?;
        let ps = patch.size();
        if !(ps.len() == 4 || ps.len() == 5) || ps[0] != dim {
            return Err(Error::checkpoint(format!(
                "{P}.embeddings.patch_embedding.weight: expected [{dim}, C, (kd,) kh, kw], got {ps:?}"
            )));
        }
        let pos = take(&mut w, &format!("{P}.embeddings.position_embedding.weight"))?;
        check::dims(&pos, "position_embedding.weight", 2, "[positions, hidden]")?;
        w.remove(&format!("{P}.embeddings.position_ids"));
        if dim % heads != 0 {
            return Err(Error::config(format!(
                "hidden size {dim} must be divisible by num_attention_heads {heads}"
            )));
        }
        let pre_ln = ln(&mut w, &format!("{P}.pre_layrnorm"), dim)?;
        let mut ls = Vec::new();
        for i in 0..layers {
            let p = format!("{P}.encoder.layers.{i}");
            let fc1 = take(&mut w, &format!("{p}.mlp.fc1.weight"))?;
            let inter = fc1.size()[0];
            w.insert(format!("{p}.mlp.fc1.weight"), fc1);
            ls.push(Layer {
                ln1: ln(&mut w, &format!("{p}.layer_norm1"), dim)?,
                q: lin(&mut w, &format!("{p}.self_attn.q_proj"), dim, dim)?,
                k: lin(&mut w, &format!("{p}.self_attn.k_proj"), dim, dim)?,
                v: lin(&mut w, &format!("{p}.self_attn.v_proj"), dim, dim)?,
                o: lin(&mut w, &format!("{p}.self_attn.out_proj"), dim, dim)?,
                ln2: ln(&mut w, &format!("{p}.layer_norm2"), dim)?,
                fc1: lin(&mut w, &format!("{p}.mlp.fc1"), inter, dim)?,
                fc2: lin(&mut w, &format!("{p}.mlp.fc2"), dim, inter)?,
            });
        }
        let post_ln = ln(&mut w, &format!("{P}.post_layernorm"), dim)?;
        if let Some(extra) = w.keys().next() {
            return Err(Error::checkpoint(format!(
                "unexpected tensor {extra} (not part of a CLIP vision tower)"
            )));
        }
        Ok(ClipVision {
            patch,
            class_embedding,
            pos,
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
        let ps = self.patch.size();
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
        let n = tokens.size()[1];
        let positions = self.pos.size()[0] - 1;
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
        let d = [self.dim];
        let lnorm = |t: &Tensor, p: &(Tensor, Tensor)| {
            t.f_layer_norm(d.as_slice(), Some(&p.0), Some(&p.1), self.eps, true)
        };
        let mut h = lnorm(&h, &self.pre_ln)?;
        let mut hidden = vec![h.shallow_clone()];
        let (nh, hd) = (self.heads, self.dim / self.heads);
        let t = h.size()[1];
        for l in &self.layers {
            let xn = lnorm(&h, &l.ln1)?;
            let split =
                |y: Tensor| -> Result<Tensor> { Ok(y.f_view([b, t, nh, hd])?.f_transpose(1, 2)?) };
            let q = split(l.q.forward(&xn, false)?)?;
            let k = split(l.k.forward(&xn, false)?)?;
            let v = split(l.v.forward(&xn, false)?)?;
            let a = Tensor::f_scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, false, None, false,
            )?;
            let a = a.f_transpose(1, 2)?.f_reshape([b, t, self.dim])?;
            h = h.f_add(&l.o.forward(&a, false)?)?;
            let xn = lnorm(&h, &l.ln2)?;
            let m = l.fc1.forward(&xn, false)?;
            let m = m.f_mul(&m.f_mul_scalar(1.702)?.f_sigmoid()?)?; // quick_gelu
            h = h.f_add(&l.fc2.forward(&m, false)?)?;
            hidden.push(h.shallow_clone());
        }
        let pooled = lnorm(&h.f_select(1, 0)?, &self.post_ln)?;
        Ok(ClipOutput {
            last_hidden_state: h,
            pooler_output: pooled,
            hidden_states: hidden,
        })
    }
}
