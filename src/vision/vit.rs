//! A ViT over 3D volumes with MONAI's `ViT` key names and numerics: patch embedding by strided
//! 3D convolution (`proj_type="conv"`) or patch flattening + linear (`"perceptron"`, as M3D),
//! learned position embeddings, optional class token, pre-norm transformer blocks (LayerNorm,
//! fused qkv attention, GELU MLP), final LayerNorm. Returns the normed tokens and every block's
//! output, as `monai.networks.nets.ViT`.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use crate::adapters::LoraSettings;
use crate::check;
use crate::error::{Error, Result};
use crate::ops::LoraLinear;
use crate::weights::{self, Bias, Vb, Weights};

/// Largest layer count a constructor accepts (refused before anything is allocated).
pub const MAX_LAYERS: i64 = 4096;

#[derive(Clone, Debug)]
pub struct Vit3dConfig {
    pub in_channels: i64,
    pub img_size: [i64; 3],
    pub patch_size: [i64; 3],
    pub hidden_size: i64,
    pub mlp_dim: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub perceptron: bool,
    pub eps: f64,
}

impl Vit3dConfig {
    pub fn grid(&self) -> [i64; 3] {
        [0, 1, 2].map(|i| self.img_size[i] / self.patch_size[i])
    }
    pub fn n_patches(&self) -> i64 {
        self.grid().iter().product()
    }
    /// Every size positive, the patch dividing the image, heads dividing the width.
    pub fn validate(&self) -> Result<()> {
        weights::positive(self.in_channels, "in_channels")?;
        weights::positive(self.hidden_size, "hidden_size")?;
        weights::positive(self.mlp_dim, "mlp_dim")?;
        weights::count(self.num_layers, "num_layers", MAX_LAYERS)?;
        for i in 0..3 {
            if self.patch_size[i] <= 0
                || self.img_size[i] <= 0
                || self.img_size[i] % self.patch_size[i] != 0
            {
                return Err(Error::config(format!(
                    "patch_size {:?} must divide img_size {:?} along every axis (all positive)",
                    self.patch_size, self.img_size
                )));
            }
        }
        weights::head_dim(self.hidden_size, self.num_heads, "hidden_size", "num_heads")?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::config(format!(
                "eps: expected a positive number, got {}",
                self.eps
            )));
        }
        Ok(())
    }
}

/// Parameter names inside one pre-norm transformer block (MONAI's or timm's layout).
pub struct BlockNames {
    pub norm1: &'static str,
    pub qkv: &'static str,
    pub out: &'static str,
    pub norm2: &'static str,
    pub fc1: &'static str,
    pub fc2: &'static str,
}

/// MONAI `TransformerBlock` names.
pub const MONAI_BLOCK: BlockNames = BlockNames {
    norm1: "norm1",
    qkv: "attn.qkv",
    out: "attn.out_proj",
    norm2: "norm2",
    fc1: "mlp.linear1",
    fc2: "mlp.linear2",
};
/// timm `Block` names (LLaMA-Adapter's visual blocks, PICG's query blocks).
pub const TIMM_BLOCK: BlockNames = BlockNames {
    norm1: "norm1",
    qkv: "attn.qkv",
    out: "attn.proj",
    norm2: "norm2",
    fc1: "mlp.fc1",
    fc2: "mlp.fc2",
};

/// One pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))` (exact GELU).
pub struct Block {
    d: i64,
    n1: (Tensor, Tensor),
    qkv: LoraLinear,
    out: LoraLinear,
    n2: (Tensor, Tensor),
    l1: LoraLinear,
    l2: LoraLinear,
}

enum Patch {
    Conv(Tensor, Option<Tensor>),
    Linear(LoraLinear),
}

pub struct Vit3d {
    pub cfg: Vit3dConfig,
    patch: Patch,
    pos: Tensor,
    cls: Option<Tensor>,
    blocks: Vec<Block>,
    norm: (Tensor, Tensor),
}

impl Block {
    /// The block under `vb` with width `d` and MLP width `mlp_dim` (biases optional: MONAI's
    /// qkv has none unless `qkv_bias`).
    pub fn load(vb: &Vb<'_>, names: &BlockNames, d: i64, mlp_dim: i64) -> Result<Self> {
        Ok(Block {
            d,
            n1: vb.pp(names.norm1).layer_norm(d)?,
            qkv: vb.pp(names.qkv).linear(3 * d, d, Bias::Optional)?,
            out: vb.pp(names.out).linear(d, d, Bias::Optional)?,
            n2: vb.pp(names.norm2).layer_norm(d)?,
            l1: vb.pp(names.fc1).linear(mlp_dim, d, Bias::Optional)?,
            l2: vb.pp(names.fc2).linear(d, mlp_dim, Bias::Optional)?,
        })
    }

    /// Like [`Block::load`], the MLP width read from `fc1`'s weight.
    pub fn load_infer(vb: &Vb<'_>, names: &BlockNames, d: i64) -> Result<Self> {
        let n1 = vb.pp(names.norm1).layer_norm(d)?;
        let qkv = vb.pp(names.qkv).linear(3 * d, d, Bias::Optional)?;
        let out = vb.pp(names.out).linear(d, d, Bias::Optional)?;
        let n2 = vb.pp(names.norm2).layer_norm(d)?;
        let (l1, mlp_dim, _) = vb.pp(names.fc1).linear_any(None, Some(d), Bias::Optional)?;
        let l2 = vb.pp(names.fc2).linear(d, mlp_dim, Bias::Optional)?;
        Ok(Block {
            d,
            n1,
            qkv,
            out,
            n2,
            l1,
            l2,
        })
    }

    /// `x [B, N, D] -> [B, N, D]` with `heads` attention heads and LayerNorm `eps`.
    pub fn forward(&self, x: &Tensor, heads: i64, eps: f64, train: bool) -> Result<Tensor> {
        let s = check::dims(x, "x", 3, "[B, tokens, dim]")?;
        let (b, n, d) = (s[0], s[1], s[2]);
        if d != self.d {
            return Err(Error::shape(format!(
                "x: expected last dimension {} (the block width), got shape {s:?}",
                self.d
            )));
        }
        let hd = weights::head_dim(d, heads, "width", "heads")?;
        check::same_kind(x, "x", self.n1.0.f_kind()?, "the block weights")?;
        check::same_device(x, "x", self.n1.0.device(), "the block weights")?;
        let xn = x.f_layer_norm(
            [d].as_slice(),
            Some(&self.n1.0),
            Some(&self.n1.1),
            eps,
            true,
        )?;
        let qkv = self
            .qkv
            .forward(&xn, train)?
            .f_reshape([b, n, 3, heads, hd])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k, v) = (qkv.f_get(0)?, qkv.f_get(1)?, qkv.f_get(2)?);
        let a = Tensor::f_scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        )?;
        let a = a.f_transpose(1, 2)?.f_reshape([b, n, d])?;
        let x = x.f_add(&self.out.forward(&a, train)?)?;
        let xn = x.f_layer_norm(
            [d].as_slice(),
            Some(&self.n2.0),
            Some(&self.n2.1),
            eps,
            true,
        )?;
        let m = self
            .l2
            .forward(&self.l1.forward(&xn, train)?.f_gelu("none")?, train)?;
        Ok(x.f_add(&m)?)
    }
}

impl Vit3d {
    pub fn new(cfg: Vit3dConfig, w: HashMap<String, Tensor>, lora: &LoraSettings) -> Result<Self> {
        cfg.validate()?;
        crate::adapters::validate(lora)?;
        let w = Weights::new(w, "this ViT").with_lora(lora);
        let vb = w.root();
        let (d, c) = (cfg.hidden_size, cfg.in_channels);
        let [p1, p2, p3] = cfg.patch_size;
        let pe = vb.pp("patch_embedding");
        let patch = if cfg.perceptron {
            Patch::Linear(pe.pp("patch_embeddings.1").linear(
                d,
                p1 * p2 * p3 * c,
                Bias::Optional,
            )?)
        } else {
            let pw = pe.pp("patch_embeddings");
            Patch::Conv(
                pw.take("weight", &[d, c, p1, p2, p3])?,
                pw.opt("bias", &[d])?,
            )
        };
        let pos = pe.take("position_embeddings", &[1, cfg.n_patches(), d])?;
        let cls = vb.opt("cls_token", &[1, 1, d])?;
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::load(&vb.pp("blocks").pp(i), &MONAI_BLOCK, d, cfg.mlp_dim))
            .collect::<Result<Vec<_>>>()?;
        let norm = vb.pp("norm").layer_norm(d)?;
        w.finish()?;
        Ok(Vit3d {
            cfg,
            patch,
            pos,
            cls,
            blocks,
            norm,
        })
    }

    /// Patch tokens plus position embeddings: `[B, C, D, H, W] -> [B, N, hidden]`.
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let s = check::dims(x, "x", 5, "[B, C, D, H, W]")?;
        let c = &self.cfg;
        if s[1] != c.in_channels {
            return Err(Error::shape(format!(
                "x: expected {} channels, got shape {s:?}",
                c.in_channels
            )));
        }
        if s[2..] != c.img_size {
            return Err(Error::shape(format!(
                "x: expected spatial size {:?} (img_size; patch_size {:?}), got {:?}",
                c.img_size,
                c.patch_size,
                &s[2..]
            )));
        }
        let tokens = match &self.patch {
            Patch::Conv(w, b) => {
                check::same_kind(x, "x", w.f_kind()?, "the patch embedding")?;
                check::same_device(x, "x", w.device(), "the patch embedding")?;
                x.f_conv3d(
                    w,
                    b.as_ref(),
                    c.patch_size.as_slice(),
                    [0i64, 0, 0].as_slice(),
                    [1i64, 1, 1].as_slice(),
                    1,
                )?
                .f_flatten(2, -1)?
                .f_transpose(-1, -2)?
            }
            Patch::Linear(l) => {
                let [p1, p2, p3] = c.patch_size;
                let [g1, g2, g3] = c.grid();
                // b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)
                let t = x
                    .f_reshape([s[0], s[1], g1, p1, g2, p2, g3, p3])?
                    .f_permute([0, 2, 4, 6, 3, 5, 7, 1])?
                    .f_reshape([s[0], g1 * g2 * g3, p1 * p2 * p3 * s[1]])?;
                l.forward(&t, false)?
            }
        };
        Ok(tokens.f_add(&self.pos)?)
    }

    /// Block `i` (for activation checkpointing from Python).
    pub fn block_forward(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        let blk = self.blocks.get(i).ok_or_else(|| {
            Error::config(format!(
                "block {i}: the ViT has {} blocks",
                self.blocks.len()
            ))
        })?;
        blk.forward(x, self.cfg.num_heads, self.cfg.eps, train)
    }

    /// Patch embedding plus the class token, if any: the input of block 0.
    pub fn tokens(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.embed(x)?;
        if let Some(c) = &self.cls {
            let b = h.size()[0];
            h = Tensor::f_cat(&[c.f_expand([b, 1, self.cfg.hidden_size], false)?, h], 1)?;
        }
        Ok(h)
    }

    /// The final LayerNorm.
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        let d = self.cfg.hidden_size;
        let s = check::dims(h, "h", 3, "[B, tokens, hidden]")?;
        if s[2] != d {
            return Err(Error::shape(format!(
                "h: expected last dimension {d} (hidden_size), got shape {s:?}"
            )));
        }
        check::same_kind(h, "h", self.kind(), "the ViT weights")?;
        check::same_device(h, "h", self.pos.device(), "the ViT weights")?;
        Ok(h.f_layer_norm(
            [d].as_slice(),
            Some(&self.norm.0),
            Some(&self.norm.1),
            self.cfg.eps,
            true,
        )?)
    }

    /// `x [B, C, D, H, W] -> (normed tokens [B, N(+1), hidden], every block's output)`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = self.tokens(x)?;
        let mut hidden = Vec::with_capacity(self.blocks.len());
        for i in 0..self.blocks.len() {
            h = self.block_forward(i, &h, train)?;
            hidden.push(h.shallow_clone());
        }
        Ok((self.final_norm(&h)?, hidden))
    }

    pub fn kind(&self) -> Kind {
        self.pos.kind()
    }
}
