//! Token reducers and projectors:
//! * [`spatial_pool`]: M3D's spatial pooling (`b (p1 p2 p3) d -> b d p1 p2 p3`, `avg_pool3d`,
//!   back to tokens), e.g. an 8x16x16 grid of 2048 tokens -> 256.
//! * [`mlp`]: a chain of linears with exact GELU between them (LLaVA's `mlp2x_gelu`, M3D's
//!   `layer_type="mlp"` projector).

use tch::Tensor;

use crate::check;
use crate::error::{Error, Result};

/// `x [B, g0*g1*g2, D] -> [B, (g0/k)*(g1/k)*(g2/k), D]` by `avg_pool3d(kernel = stride = k)`.
pub fn spatial_pool(x: &Tensor, grid: [i64; 3], k: i64) -> Result<Tensor> {
    let s = check::dims(x, "x", 3, "[B, tokens, dim]")?;
    check::float_kind(x, "x")?;
    let n: i64 = grid.iter().product();
    if s[1] != n {
        return Err(Error::shape(format!(
            "x: expected {n} tokens for the grid {grid:?}, got shape {s:?}"
        )));
    }
    if k < 1 || grid.iter().any(|g| g % k != 0) {
        return Err(Error::config(format!(
            "pooling_size {k} must divide every grid size {grid:?}"
        )));
    }
    let v = x
        .f_transpose(1, 2)?
        .f_reshape([s[0], s[2], grid[0], grid[1], grid[2]])?;
    let p = v.f_avg_pool3d(
        [k, k, k].as_slice(),
        [k, k, k].as_slice(),
        [0i64, 0, 0].as_slice(),
        false,
        true,
        None,
    )?;
    Ok(p.f_flatten(2, -1)?.f_transpose(1, 2)?)
}

/// `x [..., in] -> [..., out]` through `linears` with exact GELU between consecutive ones.
pub fn mlp(x: &Tensor, linears: &[(Tensor, Option<Tensor>)]) -> Result<Tensor> {
    if linears.is_empty() {
        return Err(Error::config("mlp: expected at least one linear layer"));
    }
    let mut h = x.shallow_clone();
    for (i, (w, b)) in linears.iter().enumerate() {
        let ws = check::dims(w, "projector weight", 2, "[out, in]")?;
        let hs = h.size();
        if hs[hs.len() - 1] != ws[1] {
            return Err(Error::shape(format!(
                "projector layer {i}: expected input features {}, got shape {hs:?}",
                ws[1]
            )));
        }
        check::same_kind(&h, "x", w.f_kind()?, "the projector weights")?;
        check::same_device(&h, "x", w.device(), "the projector weights")?;
        if i > 0 {
            h = h.f_gelu("none")?;
        }
        h = h.f_linear(w, b.as_ref())?;
    }
    Ok(h)
}
