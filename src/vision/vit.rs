//! A ViT over 3D volumes with MONAI's `ViT` key names and numerics: patch embedding by strided
//! 3D convolution (`proj_type="conv"`) or patch flattening + linear (`"perceptron"`, as M3D),
//! learned position embeddings, optional class token, pre-norm transformer blocks (LayerNorm,
//! fused qkv attention, GELU MLP), final LayerNorm. Returns the normed tokens and every block's
//! output, as `monai.networks.nets.ViT`.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::{expect_shape, take};
use crate::check;
use crate::error::{Error, Result};
use crate::llm::model::LoraSettings;
use crate::ops::{LoraLinear, LoraWeights};

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
    fn validate(&self) -> Result<()> {
        for i in 0..3 {
            if self.patch_size[i] <= 0
                || self.img_size[i] <= 0
                || self.img_size[i] % self.patch_size[i] != 0
            {
                return Err(Error::config(format!(
                    "patch_size {:?} must divide img_size {:?} along every axis",
                    self.patch_size, self.img_size
                )));
            }
        }
        if self.hidden_size % self.num_heads != 0 {
            return Err(Error::config(format!(
                "hidden_size {} must be divisible by num_heads {}",
                self.hidden_size, self.num_heads
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

pub(crate) fn linear(
    w: &mut HashMap<String, Tensor>,
    lora: &LoraSettings,
    p: &str,
    out: i64,
    inp: i64,
) -> Result<LoraLinear> {
    let weight = take(w, &format!("{p}.weight"))?;
    expect_shape(&weight, &format!("{p}.weight"), &[out, inp])?;
    let bias = w.remove(&format!("{p}.bias"));
    let pair = match lora.get(p) {
        None => None,
        Some(&(scaling, dropout)) => Some(LoraWeights {
            a: take(w, &format!("{p}.lora_A.weight"))?,
            b: take(w, &format!("{p}.lora_B.weight"))?,
            scaling,
            dropout,
        }),
    };
    LoraLinear::new(weight, bias, pair).map_err(|e| match e {
        Error::Shape(m) | Error::DType(m) | Error::Device(m) => {
            Error::checkpoint(format!("{p}: {m}"))
        }
        o => o,
    })
}

pub(crate) fn norm(w: &mut HashMap<String, Tensor>, p: &str, d: i64) -> Result<(Tensor, Tensor)> {
    let (wt, b) = (
        take(w, &format!("{p}.weight"))?,
        take(w, &format!("{p}.bias"))?,
    );
    expect_shape(&wt, &format!("{p}.weight"), &[d])?;
    expect_shape(&b, &format!("{p}.bias"), &[d])?;
    Ok((wt, b))
}

impl Block {
    pub fn load(
        w: &mut HashMap<String, Tensor>,
        lora: &LoraSettings,
        p: &str,
        names: &BlockNames,
        d: i64,
        mlp_dim: i64,
    ) -> Result<Self> {
        Ok(Block {
            n1: norm(w, &format!("{p}.{}", names.norm1), d)?,
            qkv: linear(w, lora, &format!("{p}.{}", names.qkv), 3 * d, d)?,
            out: linear(w, lora, &format!("{p}.{}", names.out), d, d)?,
            n2: norm(w, &format!("{p}.{}", names.norm2), d)?,
            l1: linear(w, lora, &format!("{p}.{}", names.fc1), mlp_dim, d)?,
            l2: linear(w, lora, &format!("{p}.{}", names.fc2), d, mlp_dim)?,
        })
    }

    /// `x [B, N, D] -> [B, N, D]` with `heads` attention heads and LayerNorm `eps`.
    pub fn forward(&self, x: &Tensor, heads: i64, eps: f64, train: bool) -> Result<Tensor> {
        let s = check::dims(x, "x", 3, "[B, tokens, dim]")?;
        let (b, n, d) = (s[0], s[1], s[2]);
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
            .f_reshape([b, n, 3, heads, d / heads])?
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
    pub fn new(
        cfg: Vit3dConfig,
        mut w: HashMap<String, Tensor>,
        lora: &LoraSettings,
    ) -> Result<Self> {
        cfg.validate()?;
        let (d, c) = (cfg.hidden_size, cfg.in_channels);
        let [p1, p2, p3] = cfg.patch_size;
        let patch = if cfg.perceptron {
            Patch::Linear(linear(
                &mut w,
                lora,
                "patch_embedding.patch_embeddings.1",
                d,
                p1 * p2 * p3 * c,
            )?)
        } else {
            let pw = take(&mut w, "patch_embedding.patch_embeddings.weight")?;
            expect_shape(
                &pw,
                "patch_embedding.patch_embeddings.weight",
                &[d, c, p1, p2, p3],
            )?;
            Patch::Conv(pw, w.remove("patch_embedding.patch_embeddings.bias"))
        };
        let pos = take(&mut w, "patch_embedding.position_embeddings")?;
        expect_shape(
            &pos,
            "patch_embedding.position_embeddings",
            &[1, cfg.n_patches(), d],
        )?;
        let cls = w.remove("cls_token");
        if let Some(t) = &cls {
            expect_shape(t, "cls_token", &[1, 1, d])?;
        }
        let mut blocks = Vec::new();
        for i in 0..cfg.num_layers {
            blocks.push(Block::load(
                &mut w,
                lora,
                &format!("blocks.{i}"),
                &MONAI_BLOCK,
                d,
                cfg.mlp_dim,
            )?);
        }
        let norm = norm(&mut w, "norm", d)?;
        if let Some(extra) = w.keys().next() {
            return Err(Error::checkpoint(format!(
                "unexpected tensor {extra} (not part of this ViT)"
            )));
        }
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
