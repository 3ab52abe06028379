//! Resampling a channel-first volume `[C, D, H, W]` to a new grid, as
//! `torch.nn.functional.interpolate(..., align_corners=False)`: `trilinear` (source coordinate
//! `(i + 0.5) * in / out - 0.5`, clamped at 0) and `nearest` (`floor(i * in / out)`, scale in
//! float32 as PyTorch computes it). Parallel over output planes with rayon.

use ndarray::{Array4, ArrayView4, Axis};
use rayon::prelude::*;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Trilinear,
    Nearest,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "trilinear" | "linear" | "bilinear" => Ok(Mode::Trilinear),
            "nearest" => Ok(Mode::Nearest),
            o => Err(Error::config(format!(
                "mode: expected 'trilinear' or 'nearest', got '{o}'"
            ))),
        }
    }
}

/// Per output index: (i0, i1, w0, w1) for linear interpolation along one axis.
fn linear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(n_in - 1);
            let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

fn nearest_taps(n_in: usize, n_out: usize) -> Vec<usize> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| ((o as f32 * scale).floor() as usize).min(n_in - 1))
        .collect()
}

/// Resize `x [C, D, H, W]` (any strides) to `[C, size[0], size[1], size[2]]`.
pub fn resize(x: ArrayView4<'_, f32>, size: [usize; 3], mode: Mode) -> Result<Array4<f32>> {
    let (c, d, h, w) = x.dim();
    let mut out = Array4::<f32>::zeros((c, size[0], size[1], size[2]));
    for (mut oc, ic) in out.axis_iter_mut(Axis(0)).zip(x.axis_iter(Axis(0))) {
        let std = ic.as_standard_layout();
        let data = std
            .as_slice()
            .ok_or_else(|| Error::shape("resize: input is not contiguous"))?;
        let strides = [(h * w) as isize, w as isize, 1];
        oc.assign(&resize_strided(
            |i| data[i as usize],
            [d, h, w],
            strides,
            0,
            size,
            mode,
        )?);
    }
    Ok(out)
}

/// Resize a 3D volume read through `get(offset)` at `base + i*strides[0] + j*strides[1] +
/// k*strides[2]` (negative strides for flipped axes), so voxels can be decoded and windowed on
/// the fly, straight from a file's bytes, without materialising the whole volume.
pub fn resize_strided<F: Fn(isize) -> f32 + Sync>(
    get: F,
    shape: [usize; 3],
    strides: [isize; 3],
    base: isize,
    size: [usize; 3],
    mode: Mode,
) -> Result<ndarray::Array3<f32>> {
    let [d, h, w] = shape;
    if size.contains(&0) || d == 0 || h == 0 || w == 0 {
        return Err(Error::shape(format!(
            "resize: sizes must be positive, got input {shape:?} -> {size:?}"
        )));
    }
    let [od, oh, ow] = size;
    let [sd, sh, sw] = strides;
    let mut out = ndarray::Array3::<f32>::zeros((od, oh, ow));
    match mode {
        Mode::Nearest => {
            let (td, th, tw) = (
                nearest_taps(d, od),
                nearest_taps(h, oh),
                nearest_taps(w, ow),
            );
            out.axis_iter_mut(Axis(0))
                .into_par_iter()
                .enumerate()
                .for_each(|(z, mut plane)| {
                    let bz = base + td[z] as isize * sd;
                    for (y, mut row) in plane.axis_iter_mut(Axis(0)).enumerate() {
                        let by = bz + th[y] as isize * sh;
                        for (x, v) in row.iter_mut().enumerate() {
                            *v = get(by + tw[x] as isize * sw);
                        }
                    }
                });
        }
        Mode::Trilinear => {
            let (td, th, tw) = (linear_taps(d, od), linear_taps(h, oh), linear_taps(w, ow));
            out.axis_iter_mut(Axis(0))
                .into_par_iter()
                .enumerate()
                .for_each(|(z, mut plane)| {
                    let (z0, z1, wz0, wz1) = td[z];
                    let (b0, b1) = (base + z0 as isize * sd, base + z1 as isize * sd);
                    for (y, mut row) in plane.axis_iter_mut(Axis(0)).enumerate() {
                        let (y0, y1, wy0, wy1) = th[y];
                        let (r00, r01) = (b0 + y0 as isize * sh, b0 + y1 as isize * sh);
                        let (r10, r11) = (b1 + y0 as isize * sh, b1 + y1 as isize * sh);
                        for (x, v) in row.iter_mut().enumerate() {
                            let (x0, x1, wx0, wx1) = tw[x];
                            let (o0, o1) = (x0 as isize * sw, x1 as isize * sw);
                            *v = wz0
                                * (wy0 * (wx0 * get(r00 + o0) + wx1 * get(r00 + o1))
                                    + wy1 * (wx0 * get(r01 + o0) + wx1 * get(r01 + o1)))
                                + wz1
                                    * (wy0 * (wx0 * get(r10 + o0) + wx1 * get(r10 + o1))
                                        + wy1 * (wx0 * get(r11 + o0) + wx1 * get(r11 + o1)));
                        }
                    }
                });
        }
    }
    Ok(out)
}
