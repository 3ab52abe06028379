//! Inflate a 2D patch embedding to 3D.
//!
//! * `Mean` (I3D): repeat the 2D kernel `depth` times along the new axis and divide by `depth`, so
//!   a volume constant along depth gives the 2D response.
//! * `Replicate`: repeat without dividing (what PICG's code does): `depth` times the 2D response.
//! * `Center`: the 2D kernel on the central depth slice, zeros elsewhere.

use tch::Tensor;

use crate::check;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateMode {
    Mean,
    Replicate,
    Center,
}

impl InflateMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(InflateMode::Mean),
            "replicate" => Ok(InflateMode::Replicate),
            "center" => Ok(InflateMode::Center),
            o => Err(Error::config(format!(
                "mode: expected 'mean', 'replicate' or 'center', got '{o}'"
            ))),
        }
    }
}

/// `weight2d [D, C, kh, kw] -> [D, C, depth, kh, kw]`.
pub fn inflate_patch_embedding(weight2d: &Tensor, depth: i64, mode: InflateMode) -> Result<Tensor> {
    check::dims(
        weight2d,
        "weight2d",
        4,
        "[out_channels, in_channels, kh, kw]",
    )?;
    check::float_kind(weight2d, "weight2d")?;
    if depth < 1 {
        return Err(Error::config(format!("depth: expected >= 1, got {depth}")));
    }
    let w = weight2d.f_unsqueeze(2)?;
    Ok(match mode {
        InflateMode::Replicate => w.f_repeat([1, 1, depth, 1, 1])?,
        InflateMode::Mean => w
            .f_repeat([1, 1, depth, 1, 1])?
            .f_div_scalar(depth as f64)?,
        InflateMode::Center => {
            let s = w.size();
            let z = Tensor::f_zeros([s[0], s[1], depth, s[3], s[4]], (w.f_kind()?, w.device()))?;
            // differentiable: cat zeros before and after the centre slice
            let c = depth / 2;
            let before = z.f_narrow(2, 0, c)?;
            let after = z.f_narrow(2, c + 1, depth - c - 1)?;
            Tensor::f_cat(&[before, w, after], 2)?
        }
    })
}

/// Interpolate 2D grid position embeddings `[1, gh*gw (+1 cls), D]` onto a 3D grid
/// `[1, gd*gh'*gw' (+1), D]` (trilinear, align_corners=False): the 2D grid becomes one depth
/// slice that is stretched over `gd`.
pub fn interpolate_pos_embedding(
    pos: &Tensor,
    grid2d: (i64, i64),
    grid3d: (i64, i64, i64),
    has_cls: bool,
) -> Result<Tensor> {
    let s = check::dims(pos, "position_embeddings", 3, "[1, tokens, dim]")?;
    let (gh, gw) = grid2d;
    let extra = i64::from(has_cls);
    if s[1] != gh * gw + extra {
        return Err(Error::shape(format!(
            "position_embeddings: expected {} tokens for a {gh}x{gw} grid{}, got {}",
            gh * gw + extra,
            if has_cls { " plus a class token" } else { "" },
            s[1]
        )));
    }
    let d = s[2];
    let cls = if has_cls {
        Some(pos.f_narrow(1, 0, 1)?)
    } else {
        None
    };
    let grid = pos
        .f_narrow(1, extra, gh * gw)?
        .f_reshape([1, gh, gw, d])?
        .f_permute([0, 3, 1, 2])?
        .f_unsqueeze(2)?; // [1, D, 1, gh, gw]
    let (td, th, tw) = grid3d;
    let up = grid.f_upsample_trilinear3d([td, th, tw].as_slice(), false, None, None, None)?; // [1, D, td, th, tw]
    let flat = up.f_flatten(2, -1)?.f_transpose(1, 2)?; // [1, N, D]
    Ok(match cls {
        Some(c) => Tensor::f_cat(&[c, flat], 1)?,
        None => flat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn mean_inflation_of_a_depth_constant_volume_equals_the_2d_conv() -> Result<()> {
        for (k, depth) in [(14i64, 14i64), (4, 2), (16, 4)] {
            let w2 = Tensor::randn([3, 2, k, k], (Kind::Double, Device::Cpu));
            let img = Tensor::randn([1, 2, 2 * k, 2 * k], (Kind::Double, Device::Cpu));
            let vol = img.unsqueeze(2).repeat([1, 1, depth, 1, 1]);
            let y2 = img.conv2d(&w2, None::<Tensor>, [k, k], [0, 0], [1, 1], 1);
            let w3 = inflate_patch_embedding(&w2, depth, InflateMode::Mean)?;
            let y3 = vol
                .conv3d(&w3, None::<Tensor>, [depth, k, k], [0, 0, 0], [1, 1, 1], 1)
                .squeeze_dim(2);
            assert!(f64::try_from((&y3 - &y2).abs().max())? < 1e-9);
            let w3r = inflate_patch_embedding(&w2, depth, InflateMode::Replicate)?;
            let y3r = vol
                .conv3d(&w3r, None::<Tensor>, [depth, k, k], [0, 0, 0], [1, 1, 1], 1)
                .squeeze_dim(2);
            assert!(f64::try_from((&y3r - &y2 * depth as f64).abs().max())? < 1e-8);
        }
        Ok(())
    }
}
