//! PICG's adapter query blocks (LLaMA-Adapter V2's visual branch): learned visual queries are
//! concatenated with projected vision features, pass through timm-style transformer blocks, and
//! the query positions are projected to the LLM width:
//! `clip_proj -> clip_proj_norm -> [visual_query ; feats] -> visual_blocks -> [:query_len] ->
//! visual_proj -> visual_proj_norm`.

use std::collections::HashMap;

use tch::Tensor;

use super::vit::{Block, MAX_LAYERS, TIMM_BLOCK};
use crate::check;
use crate::error::{Error, Result};
use crate::ops::LoraLinear;
use crate::weights::{self, Bias, Weights};

pub struct QueryBlocks {
    clip_proj: LoraLinear,
    clip_norm: (Tensor, Tensor),
    query: Tensor,
    query_len: i64,
    blocks: Vec<Block>,
    proj: LoraLinear,
    proj_norm: (Tensor, Tensor),
    heads: i64,
    dim: i64,
    clip_dim: i64,
    out_dim: i64,
    eps: f64,
}

impl QueryBlocks {
    /// `eps`: the LayerNorm epsilon of the transformer blocks (timm 0.3-0.6's `Block`, which
    /// LLaMA-Adapter and PICG build: `nn.LayerNorm`'s 1e-5; timm 1.x's `Block`: 1e-6).
    pub fn new(w: HashMap<String, Tensor>, depth: i64, heads: i64, eps: f64) -> Result<Self> {
        let depth = weights::count(depth, "depth", MAX_LAYERS)?;
        weights::positive(heads, "heads")?;
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(Error::config(format!(
                "eps: expected a number in (0, 1), got {eps}"
            )));
        }
        let w = Weights::new(w, "the query blocks");
        let vb = w.root();
        let (query, qs) = vb
            .pp("visual_query")
            .take_dims("weight", 2, "[query_len, dim]")?;
        let dim = qs[1];
        weights::head_dim(dim, heads, "dim", "heads")?;
        let (clip_proj, _, clip_dim) =
            vb.pp("clip_proj")
                .linear_any(Some(dim), None, Bias::Optional)?;
        let clip_norm = vb.pp("clip_proj_norm").layer_norm(dim)?;
        let blocks = (0..depth)
            .map(|i| Block::load_infer(&vb.pp("visual_blocks").pp(i), &TIMM_BLOCK, dim))
            .collect::<Result<Vec<_>>>()?;
        let (proj, out_dim, _) =
            vb.pp("visual_proj")
                .linear_any(None, Some(dim), Bias::Optional)?;
        let proj_norm = vb.pp("visual_proj_norm").layer_norm(out_dim)?;
        w.finish()?;
        Ok(QueryBlocks {
            clip_proj,
            clip_norm,
            query,
            query_len: qs[0],
            blocks,
            proj,
            proj_norm,
            heads,
            dim,
            clip_dim,
            out_dim,
            eps,
        })
    }

    /// `feats [B, N, clip_dim] -> [B, query_len, out_dim]`.
    pub fn forward(&self, feats: &Tensor, train: bool) -> Result<Tensor> {
        let s = check::dims(feats, "feats", 3, "[B, tokens, clip_dim]")?;
        if s[2] != self.clip_dim {
            return Err(Error::shape(format!(
                "feats: expected last dimension {} (clip_dim), got shape {s:?}",
                self.clip_dim
            )));
        }
        let f = self.clip_proj.forward(feats, train)?;
        let f = f.f_layer_norm(
            [self.dim].as_slice(),
            Some(&self.clip_norm.0),
            Some(&self.clip_norm.1),
            1e-5,
            true,
        )?;
        check::same_kind(feats, "feats", self.query.f_kind()?, "the query blocks")?;
        check::same_device(feats, "feats", self.query.device(), "the query blocks")?;
        let ql = self.query_len;
        let q = self
            .query
            .f_unsqueeze(0)?
            .f_expand([s[0], ql, self.dim], false)?;
        let mut h = Tensor::f_cat(&[q, f], 1)?;
        for b in &self.blocks {
            h = b.forward(&h, self.heads, self.eps, train)?;
        }
        let h = self.proj.forward(&h.f_narrow(1, 0, ql)?, train)?;
        Ok(h.f_layer_norm(
            [self.out_dim].as_slice(),
            Some(&self.proj_norm.0),
            Some(&self.proj_norm.1),
            1e-5,
            true,
        )?)
    }
}
