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
    if grid.iter().any(|&g| g <= 0) {
        return Err(Error::config(format!(
            "grid: expected positive sizes, got {grid:?}"
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
    check::min_dims(x, "x", 1, "[..., in_features]")?;
    let mut h = x.shallow_clone();
    for (i, (w, b)) in linears.iter().enumerate() {
        let ws = check::dims(w, "projector weight", 2, "[out, in]")?;
        check::float_kind(w, "projector weight")?;
        if let Some(b) = b {
            check::dims(b, "projector bias", 1, "[out]")?;
            if b.size() != [ws[0]] {
                return Err(Error::shape(format!(
                    "projector layer {i}: expected a bias of shape [{}], got {:?}",
                    ws[0],
                    b.size()
                )));
            }
            check::same_kind(b, "projector bias", w.f_kind()?, "the projector weights")?;
            check::same_device(b, "projector bias", w.device(), "the projector weights")?;
        }
        let hs = check::min_dims(&h, "x", 1, "[..., in_features]")?;
        if hs.last() != Some(&ws[1]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn rankless_and_mismatched_inputs_are_named() {
        let f = (Kind::Float, Device::Cpu);
        let w = Tensor::zeros([8, 4], f);
        let scalar = Tensor::from(1.0f32);
        assert!(matches!(
            mlp(&scalar, &[(w.shallow_clone(), None)]),
            Err(Error::Shape(_))
        ));
        let x = Tensor::zeros([2, 4], f);
        let bad_bias = Tensor::zeros([3], f);
        assert!(matches!(
            mlp(&x, &[(w.shallow_clone(), Some(bad_bias))]),
            Err(Error::Shape(_))
        ));
        assert!(matches!(mlp(&x, &[]), Err(Error::Config(_))));
        let y = mlp(&x, &[(w.shallow_clone(), None)]);
        assert!(matches!(y, Ok(t) if t.size() == [2, 8]));
        let toks = Tensor::zeros([1, 8, 4], f);
        assert!(matches!(
            spatial_pool(&toks, [2, 2, 2], 0),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            spatial_pool(&toks, [-2, -2, 2], 2),
            Err(Error::Config(_))
        ));
        assert!(matches!(spatial_pool(&toks, [2, 2, 2], 2), Ok(t) if t.size() == [1, 1, 4]));
    }
}
