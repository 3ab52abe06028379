//! The Flamingo/RadFM perceiver resampler (Dia-LLaMA: 32 latents, depth 6): latents attend to
//! `[media ; latents]` (pre-LayerNorm, no biases, max-subtracted softmax), then a LayerNorm-GELU
//! feed-forward, both residual; a final LayerNorm. Key names as the reference module
//! (`latents`, `layers.{i}.0.{norm_media,norm_latents,to_q,to_kv,to_out}`,
//! `layers.{i}.1.{0,1,3}`, `norm`).

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::{expect_shape, take};
use crate::check;
use crate::error::{Error, Result};

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
    layers: Vec<Layer>,
    norm: (Tensor, Tensor),
    heads: i64,
    dim_head: i64,
    dim: i64,
}

fn ln(w: &mut HashMap<String, Tensor>, p: &str, d: i64) -> Result<(Tensor, Tensor)> {
    let (a, b) = (
        take(w, &format!("{p}.weight"))?,
        take(w, &format!("{p}.bias"))?,
    );
    expect_shape(&a, &format!("{p}.weight"), &[d])?;
    expect_shape(&b, &format!("{p}.bias"), &[d])?;
    Ok((a, b))
}

impl Perceiver {
    pub fn new(
        mut w: HashMap<String, Tensor>,
        depth: i64,
        heads: i64,
        dim_head: i64,
    ) -> Result<Self> {
        let latents = take(&mut w, "latents")?;
        let ls = check::dims(&latents, "latents", 2, "[num_latents, dim]")?;
        let dim = ls[1];
        let inner = heads * dim_head;
        let mut layers = Vec::new();
        for i in 0..depth {
            let p = format!("layers.{i}");
            let get = |w: &mut HashMap<String, Tensor>, n: &str, shape: &[i64]| -> Result<Tensor> {
                let t = take(w, &format!("{p}.{n}"))?;
                expect_shape(&t, &format!("{p}.{n}"), shape)?;
                Ok(t)
            };
            let ff1 = take(&mut w, &format!("{p}.1.1.weight"))?;
            let hidden = ff1.size()[0];
            expect_shape(&ff1, &format!("{p}.1.1.weight"), &[hidden, dim])?;
            layers.push(Layer {
                norm_media: ln(&mut w, &format!("{p}.0.norm_media"), dim)?,
                norm_latents: ln(&mut w, &format!("{p}.0.norm_latents"), dim)?,
                to_q: get(&mut w, "0.to_q.weight", &[inner, dim])?,
                to_kv: get(&mut w, "0.to_kv.weight", &[2 * inner, dim])?,
                to_out: get(&mut w, "0.to_out.weight", &[dim, inner])?,
                ff_norm: ln(&mut w, &format!("{p}.1.0"), dim)?,
                ff1,
                ff2: get(&mut w, "1.3.weight", &[dim, hidden])?,
            });
        }
        let norm = ln(&mut w, "norm", dim)?;
        if let Some(extra) = w.keys().next() {
            return Err(Error::checkpoint(format!(
                "unexpected tensor {extra} (not part of this perceiver)"
            )));
        }
        Ok(Perceiver {
            latents,
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
        let n_lat = self.latents.size()[0];
        let ln = |t: &Tensor, p: &(Tensor, Tensor)| {
            t.f_layer_norm([d].as_slice(), Some(&p.0), Some(&p.1), 1e-5, true)
        };
        let split = |t: Tensor| -> Result<Tensor> {
            let ts = t.size();
            Ok(t.f_reshape([ts[0], ts[1], h, dh])?.f_transpose(1, 2)?)
        };
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
