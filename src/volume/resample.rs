//! Affine resampling of a channel-first volume `[C, D, H, W]`: every output voxel `o` takes the
//! input at the continuous voxel index `xform @ o` (trilinear or nearest, border padding), as
//! MONAI's `SpatialResample` / `Spacing` do through `grid_sample(align_corners=False)`.

use ndarray::{Array4, ArrayView4, Axis};
use rayon::prelude::*;

use super::resize::Mode;
use crate::error::{Error, Result};

#[inline]
fn clampf(v: f64, hi: usize) -> f64 {
    v.clamp(0.0, (hi - 1) as f64)
}

/// `x [C, D, H, W]` -> `[C, out[0], out[1], out[2]]`, `xform` maps output voxel indices to input
/// voxel indices (a 4x4 affine). Coordinates outside the input are clamped to its border.
pub fn affine_resample(
    x: ArrayView4<'_, f32>,
    xform: &[[f64; 4]; 4],
    out: [usize; 3],
    mode: Mode,
) -> Result<Array4<f32>> {
    let (c, d, h, w) = x.dim();
    if xform.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::config(
            "resample: the transform has non-finite entries",
        ));
    }
    let mut y = Array4::<f32>::zeros((c, out[0], out[1], out[2]));
    for (mut oc, ic) in y.axis_iter_mut(Axis(0)).zip(x.axis_iter(Axis(0))) {
        let std = ic.as_standard_layout();
        let data = std
            .as_slice()
            .ok_or_else(|| Error::shape("resample: input is not contiguous"))?;
        let strides = [(h * w) as isize, w as isize, 1];
        oc.assign(&affine_resample_strided(
            |i| data[i as usize],
            [d, h, w],
            strides,
            0,
            xform,
            out,
            mode,
        )?);
    }
    Ok(y)
}

/// [`affine_resample`] for one channel read through `get(offset)` at
/// `base + i*strides[0] + j*strides[1] + k*strides[2]` (decode on the fly from file bytes).
pub fn affine_resample_strided<F: Fn(isize) -> f32 + Sync>(
    get: F,
    shape: [usize; 3],
    strides: [isize; 3],
    base: isize,
    xform: &[[f64; 4]; 4],
    out: [usize; 3],
    mode: Mode,
) -> Result<ndarray::Array3<f32>> {
    let [d, h, w] = shape;
    if out.contains(&0) || d == 0 || h == 0 || w == 0 {
        return Err(Error::shape(format!(
            "resample: sizes must be positive, got input {shape:?} -> {out:?}"
        )));
    }
    let m = *xform;
    let [sd, sh, sw] = strides;
    let mut y = ndarray::Array3::<f32>::zeros((out[0], out[1], out[2]));
    y.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut plane)| {
            for (j, mut row) in plane.axis_iter_mut(Axis(0)).enumerate() {
                for (k, v) in row.iter_mut().enumerate() {
                    let (fi, fj, fk) = (i as f64, j as f64, k as f64);
                    let p0 = clampf(m[0][0] * fi + m[0][1] * fj + m[0][2] * fk + m[0][3], d);
                    let p1 = clampf(m[1][0] * fi + m[1][1] * fj + m[1][2] * fk + m[1][3], h);
                    let p2 = clampf(m[2][0] * fi + m[2][1] * fj + m[2][2] * fk + m[2][3], w);
                    let at = |a: usize, b: usize, c: usize| {
                        get(base + a as isize * sd + b as isize * sh + c as isize * sw)
                    };
                    if mode == Mode::Nearest {
                        // grid_sample's nearest: round half to even
                        let r = |p: f64, n: usize| (p.round_ties_even() as usize).min(n - 1);
                        *v = at(r(p0, d), r(p1, h), r(p2, w));
                        continue;
                    }
                    // p >= 0 after clamping: truncation is floor, without a libm call
                    let (a0, b0, c0) = (p0 as usize, p1 as usize, p2 as usize);
                    let (a1, b1, c1) = (
                        (a0 + 1).min(d - 1),
                        (b0 + 1).min(h - 1),
                        (c0 + 1).min(w - 1),
                    );
                    let (ta, tb, tc) = (
                        (p0 - a0 as f64) as f32,
                        (p1 - b0 as f64) as f32,
                        (p2 - c0 as f64) as f32,
                    );
                    let lerp = |u: f32, v: f32, t: f32| u * (1.0 - t) + v * t;
                    let c00 = lerp(at(a0, b0, c0), at(a0, b0, c1), tc);
                    let c01 = lerp(at(a0, b1, c0), at(a0, b1, c1), tc);
                    let c10 = lerp(at(a1, b0, c0), at(a1, b0, c1), tc);
                    let c11 = lerp(at(a1, b1, c0), at(a1, b1, c1), tc);
                    *v = lerp(lerp(c00, c01, tb), lerp(c10, c11, tb), ta);
                }
            }
        });
    Ok(y)
}
