//! The Flamingo/RadFM perceiver resampler (Dia-LLaMA: 32 latents, depth 6): latents attend to
//! `[media ; latents]` (pre-LayerNorm, no biases, max-subtracted softmax), then a LayerNorm-GELU
//! feed-forward, both residual; a final LayerNorm. Key names as the reference module
//! (`latents`, `layers.{i}.0.{norm_media,norm_latents,to_q,to_kv,to_out}`,
//! `layers.{i}.1.{0,1,3}`, `norm`).

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::vit::MAX_LAYERS;
use crate::check;
use crate::error::{Error, Result};
use crate::weights::{self, Weights};

struct Layer {
    norm_media: (Tensor, Tensor),
    norm_latents: (Tensor, Tensor),
    to_q: Tensor,
    to_kv: Tensor,
    to_out: Tensor,
    ff_norm: (Tensor, Tensor),
    ff1: Tensor,
    ff2: Tensor,
}

pub struct Perceiver {
    latents: Tensor,
    n_latents: i64,
    layers: Vec<Layer>,
    norm: (Tensor, Tensor),
    heads: i64,
    dim_head: i64,
    dim: i64,
}

impl Perceiver {
    pub fn new(w: HashMap<String, Tensor>, depth: i64, heads: i64, dim_head: i64) -> Result<Self> {
        let depth = weights::count(depth, "depth", MAX_LAYERS)?;
        weights::positive(heads, "heads")?;
        weights::positive(dim_head, "dim_head")?;
        let inner = heads
            .checked_mul(dim_head)
            .filter(|&i| i <= 1 << 24)
            .ok_or_else(|| {
                Error::config(format!(
                    "heads x dim_head: {heads} x {dim_head} is larger than voxlm supports"
                ))
            })?;
        let w = Weights::new(w, "this perceiver");
        let vb = w.root();
        let (latents, ls) = vb.take_dims("latents", 2, "[num_latents, dim]")?;
        let (n_latents, dim) = (ls[0], ls[1]);
        let mut layers = Vec::with_capacity(depth);
        for i in 0..depth {
            let p = vb.pp("layers").pp(i);
            let (a, f) = (p.pp(0), p.pp(1));
            let (ff1, hidden) = {
                let (t, s) = f.pp(1).take_dims("weight", 2, "[hidden, dim]")?;
                if s[1] != dim {
                    return Err(Error::checkpoint(format!(
                        "{}: expected shape [hidden, {dim}], got {s:?}",
                        f.pp(1).path("weight")
                    )));
                }
                (t, s[0])
            };
            layers.push(Layer {
                norm_media: a.pp("norm_media").layer_norm(dim)?,
                norm_latents: a.pp("norm_latents").layer_norm(dim)?,
                to_q: a.pp("to_q").take("weight", &[inner, dim])?,
                to_kv: a.pp("to_kv").take("weight", &[2 * inner, dim])?,
                to_out: a.pp("to_out").take("weight", &[dim, inner])?,
                ff_norm: f.pp(0).layer_norm(dim)?,
                ff1,
                ff2: f.pp(3).take("weight", &[dim, hidden])?,
            });
        }
        let norm = vb.pp("norm").layer_norm(dim)?;
        w.finish()?;
        Ok(Perceiver {
            latents,
            n_latents,
            layers,
            norm,
            heads,
            dim_head,
            dim,
        })
    }

    /// `x [B, N, dim] -> [B, num_latents, dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = check::dims(x, "x", 3, "[B, tokens, dim]")?;
        if s[2] != self.dim {
            return Err(Error::shape(format!(
                "x: expected last dimension {} (perceiver dim), got shape {s:?}",
                self.dim
            )));
        }
        check::same_kind(x, "x", self.latents.f_kind()?, "the perceiver weights")?;
        check::same_device(x, "x", self.latents.device(), "the perceiver weights")?;
        let (b, d, h, dh) = (s[0], self.dim, self.heads, self.dim_head);
        let n_lat = self.n_latents;
        let ln = |t: &Tensor, p: &(Tensor, Tensor)| {
            t.f_layer_norm([d].as_slice(), Some(&p.0), Some(&p.1), 1e-5, true)
        };
        let split =
            |t: Tensor| -> Result<Tensor> { Ok(t.f_reshape([b, -1, h, dh])?.f_transpose(1, 2)?) };
        let mut lat = self
            .latents
            .f_unsqueeze(0)?
            .f_expand([b, n_lat, d], false)?;
        for l in &self.layers {
            let xm = ln(x, &l.norm_media)?;
            let ll = ln(&lat, &l.norm_latents)?;
            let q = split(ll.f_linear::<Tensor>(&l.to_q, None)?)?
                .f_mul_scalar((dh as f64).powf(-0.5))?;
            let kv = Tensor::f_cat(&[&xm, &ll], 1)?.f_linear::<Tensor>(&l.to_kv, None)?;
            let kv = kv.f_chunk(2, -1)?;
            let (k, v) = (split(kv[0].shallow_clone())?, split(kv[1].shallow_clone())?);
            let sim = q.f_matmul(&k.f_transpose(-1, -2)?)?;
            let sim = sim.f_sub(&sim.f_amax([-1i64].as_slice(), true)?.f_detach()?)?;
            let attn = sim.f_softmax(-1, None::<Kind>)?;
            let out = attn
                .f_matmul(&v)?
                .f_transpose(1, 2)?
                .f_reshape([b, n_lat, h * dh])?;
            lat = out.f_linear::<Tensor>(&l.to_out, None)?.f_add(&lat)?;
            let f = ln(&lat, &l.ff_norm)?
                .f_linear::<Tensor>(&l.ff1, None)?
                .f_gelu("none")?
                .f_linear::<Tensor>(&l.ff2, None)?;
            lat = f.f_add(&lat)?;
        }
        Ok(ln(&lat, &self.norm)?)
    }
}
