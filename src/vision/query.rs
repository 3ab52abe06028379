//! PICG's adapter query blocks (LLaMA-Adapter V2's visual branch): learned visual queries are
//! concatenated with projected vision features, pass through timm-style transformer blocks, and
//! the query positions are projected to the LLM width:
//! `clip_proj -> clip_proj_norm -> [visual_query ; feats] -> visual_blocks -> [:query_len] ->
//! visual_proj -> visual_proj_norm`.

use std::collections::HashMap;

use tch::Tensor;

use super::vit::{linear, norm, Block, TIMM_BLOCK};
use super::{expect_shape, take};
use crate::check;
use crate::error::{Error, Result};
use crate::ops::LoraLinear;

pub struct QueryBlocks {
    clip_proj: LoraLinear,
    clip_norm: (Tensor, Tensor),
    query: Tensor,
    blocks: Vec<Block>,
    proj: LoraLinear,
    proj_norm: (Tensor, Tensor),
    heads: i64,
    dim: i64,
    clip_dim: i64,
    out_dim: i64,
}

impl QueryBlocks {
    pub fn new(mut w: HashMap<String, Tensor>, depth: i64, heads: i64) -> Result<Self> {
        let none = HashMap::new();
        let query = take(&mut w, "visual_query.weight")?;
        let qs = check::dims(&query, "visual_query.weight", 2, "[query_len, dim]")?;
        let dim = qs[1];
        let cw = take(&mut w, "clip_proj.weight")?;
        let cs = check::dims(&cw, "clip_proj.weight", 2, "[dim, clip_dim]")?;
        w.insert("clip_proj.weight".into(), cw);
        let pw = take(&mut w, "visual_proj.weight")?;
        let ps = check::dims(&pw, "visual_proj.weight", 2, "[out_dim, dim]")?;
        w.insert("visual_proj.weight".into(), pw);
        if dim % heads != 0 {
            return Err(Error::config(format!(
                "dim {dim} must be divisible by heads {heads}"
            )));
        }
        let mut blocks = Vec::new();
        for i in 0..depth {
            let fc1 = take(&mut w, &format!("visual_blocks.{i}.mlp.fc1.weight"))?;
            let mlp = fc1.size()[0];
            w.insert(format!("visual_blocks.{i}.mlp.fc1.weight"), fc1);
            blocks.push(Block::load(
                &mut w,
                &none,
                &format!("visual_blocks.{i}"),
                &TIMM_BLOCK,
                dim,
                mlp,
            )?);
        }
        let q = QueryBlocks {
            clip_proj: linear(&mut w, &none, "clip_proj", dim, cs[1])?,
            clip_norm: norm(&mut w, "clip_proj_norm", dim)?,
            query,
            blocks,
            proj: linear(&mut w, &none, "visual_proj", ps[0], dim)?,
            proj_norm: norm(&mut w, "visual_proj_norm", ps[0])?,
            heads,
            dim,
            clip_dim: cs[1],
            out_dim: ps[0],
        };
        expect_shape(&q.query, "visual_query.weight", &[qs[0], dim])?;
        if let Some(extra) = w.keys().next() {
            return Err(Error::checkpoint(format!(
                "unexpected tensor {extra} (not part of the query blocks)"
            )));
        }
        Ok(q)
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
        let ql = self.query.size()[0];
        let q = self
            .query
            .f_unsqueeze(0)?
            .f_expand([s[0], ql, self.dim], false)?;
        let mut h = Tensor::f_cat(&[q, f], 1)?;
        for b in &self.blocks {
            h = b.forward(&h, self.heads, 1e-6, train)?;
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
