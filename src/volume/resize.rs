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
pub(crate) fn linear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32, f32)> {
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
    super::check_alloc("resize", &[c, size[0], size[1], size[2]])?;
    if c == 1 {
        // one channel: the resized volume itself, without a copy into a new batch array
        let ic = x.index_axis(Axis(0), 0);
        let std = ic.as_standard_layout();
        let data = std
            .as_slice()
            .ok_or_else(|| Error::shape("resize: input is not contiguous"))?;
        let strides = [(h * w) as isize, w as isize, 1];
        return Ok(resize_slice(data, [d, h, w], strides, 0, size, mode)?.insert_axis(Axis(0)));
    }
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

/// [`resize_strided`] on a float32 buffer `data[base + i*strides[0] + j*strides[1] + k]`
/// (rows contiguous, e.g. a crop box of a C-order volume): trilinear slices the four input rows
/// an output row reads once per row; the same float32 operations as [`resize_strided`], so
/// the same values. Other layouts and nearest go through [`resize_strided`].
pub fn resize_slice(
    data: &[f32],
    shape: [usize; 3],
    strides: [isize; 3],
    base: isize,
    size: [usize; 3],
    mode: Mode,
) -> Result<ndarray::Array3<f32>> {
    let [d, h, w] = shape;
    super::check_alloc("resize", &size)?;
    let get = |i: isize| data.get(i as usize).copied().unwrap_or(0.0);
    let [sd, sh, sw] = strides;
    let fits = base >= 0
        && sd >= 0
        && sh >= 0
        && sw == 1
        && !size.contains(&0)
        && d > 0
        && h > 0
        && w > 0
        && base + (d as isize - 1) * sd + (h as isize - 1) * sh + w as isize <= data.len() as isize;
    if mode != Mode::Trilinear || !fits {
        return resize_strided(get, shape, strides, base, size, mode);
    }
    let row = |o: isize| -> &[f32] { &data[o as usize..o as usize + w] };
    Ok(trilinear(
        shape,
        [sd, sh],
        base,
        size,
        row,
        |r: &[f32], x| r[x],
    ))
}

/// The input indices a trilinear resize of `n_in` voxels to `n_out` reads along one axis
/// (sorted, distinct): what [`resize_slice`] reads of that axis, no more.
pub(crate) fn linear_reads(n_in: usize, n_out: usize) -> Vec<usize> {
    let mut v: Vec<usize> = linear_taps(n_in, n_out)
        .iter()
        .flat_map(|&(i0, i1, _, _)| [i0, i1])
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The trilinear [`resize_slice`] of a `box_shape` volume to `size`, given only the voxels it
/// reads: `data` is C-order `[reads[0].len(), reads[1].len(), reads[2].len()]` holding the
/// input at the indices `reads[r]` (from [`linear_reads`]) along each axis. The same taps and
/// the same float32 expression per output voxel as [`resize_slice`] on the whole box, so the
/// same values.
pub(crate) fn resize_reads_trilinear(
    data: &[f32],
    box_shape: [usize; 3],
    reads: &[Vec<usize>; 3],
    size: [usize; 3],
) -> Result<ndarray::Array3<f32>> {
    super::check_alloc("resize", &size)?;
    if size.contains(&0) || box_shape.contains(&0) {
        return Err(Error::shape(format!(
            "resize: sizes must be positive, got input {box_shape:?} -> {size:?}"
        )));
    }
    let n = [reads[0].len(), reads[1].len(), reads[2].len()];
    if data.len() != n[0] * n[1] * n[2] {
        return Err(Error::shape(format!(
            "resize: expected {} read voxels, got {}",
            n[0] * n[1] * n[2],
            data.len()
        )));
    }
    let mut taps: [Vec<(usize, usize, f32, f32)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for r in 0..3 {
        let pos = |i: usize| -> Result<usize> {
            reads[r]
                .binary_search(&i)
                .map_err(|_| Error::shape(format!("resize: index {i} of axis {r} not read")))
        };
        taps[r] = linear_taps(box_shape[r], size[r])
            .into_iter()
            .map(|(i0, i1, w0, w1)| Ok((pos(i0)?, pos(i1)?, w0, w1)))
            .collect::<Result<_>>()?;
    }
    let w = n[2];
    let row = |o: isize| -> &[f32] { &data[o as usize..o as usize + w] };
    Ok(trilinear_taps(
        &taps,
        [(n[1] * n[2]) as isize, n[2] as isize],
        0,
        row,
        |r: &[f32], x| r[x],
    ))
}

/// The trilinear resize's one loop, for both layouts: `row(offset)` is the input row that starts
/// at `offset` (a slice, or the offset itself) and `at(row, x)` its voxel `x`; each output voxel
/// is the same float32 expression of its eight taps.
fn trilinear<R: Copy, Row: Fn(isize) -> R + Sync, At: Fn(R, usize) -> f32 + Sync>(
    shape: [usize; 3],
    [sd, sh]: [isize; 2],
    base: isize,
    size: [usize; 3],
    row: Row,
    at: At,
) -> ndarray::Array3<f32> {
    let [d, h, w] = shape;
    let [od, oh, ow] = size;
    let taps = [linear_taps(d, od), linear_taps(h, oh), linear_taps(w, ow)];
    trilinear_taps(&taps, [sd, sh], base, row, at)
}

/// [`trilinear`]'s loop over given per-axis taps (`taps[r][o] = (i0, i1, w0, w1)`, the input
/// indices along axis r and their weights): the output has `taps[r].len()` voxels along axis r.
fn trilinear_taps<R: Copy, Row: Fn(isize) -> R + Sync, At: Fn(R, usize) -> f32 + Sync>(
    taps: &[Vec<(usize, usize, f32, f32)>; 3],
    [sd, sh]: [isize; 2],
    base: isize,
    row: Row,
    at: At,
) -> ndarray::Array3<f32> {
    let [td, th, tw] = taps;
    let (od, oh, ow) = (td.len(), th.len(), tw.len());
    let mut out = ndarray::Array3::<f32>::zeros((od, oh, ow));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(z, mut plane)| {
            let (z0, z1, wz0, wz1) = td[z];
            let (b0, b1) = (base + z0 as isize * sd, base + z1 as isize * sd);
            for (y, mut orow) in plane.axis_iter_mut(Axis(0)).enumerate() {
                let (y0, y1, wy0, wy1) = th[y];
                let r00 = row(b0 + y0 as isize * sh);
                let r01 = row(b0 + y1 as isize * sh);
                let r10 = row(b1 + y0 as isize * sh);
                let r11 = row(b1 + y1 as isize * sh);
                for (v, &(x0, x1, wx0, wx1)) in orow.iter_mut().zip(tw.iter()) {
                    *v = wz0
                        * (wy0 * (wx0 * at(r00, x0) + wx1 * at(r00, x1))
                            + wy1 * (wx0 * at(r01, x0) + wx1 * at(r01, x1)))
                        + wz1
                            * (wy0 * (wx0 * at(r10, x0) + wx1 * at(r10, x1))
                                + wy1 * (wx0 * at(r11, x0) + wx1 * at(r11, x1)));
                }
            }
        });
    out
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
    super::check_alloc("resize", &size)?;
    let [od, oh, ow] = size;
    let [sd, sh, sw] = strides;
    Ok(match mode {
        Mode::Nearest => {
            let (td, th, tw) = (
                nearest_taps(d, od),
                nearest_taps(h, oh),
                nearest_taps(w, ow),
            );
            let mut out = ndarray::Array3::<f32>::zeros((od, oh, ow));
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
            out
        }
        Mode::Trilinear => {
            let at = |r: isize, x: usize| get(r + x as isize * sw);
            trilinear(shape, [sd, sh], base, size, |o| o, at)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_kernel_equals_the_strided_resize() -> Result<()> {
        // a crop box [1..6, 2..7, 3..11] of a 7 x 9 x 12 C-order volume
        let data: Vec<f32> = (0..7 * 9 * 12)
            .map(|i| ((i * 37) % 101) as f32 * 0.5 - 20.0)
            .collect();
        let (strides, base) = ([108isize, 12, 1], 108 + 2 * 12 + 3);
        for size in [[3, 8, 5], [10, 2, 17]] {
            for mode in [Mode::Trilinear, Mode::Nearest] {
                let fast = resize_slice(&data, [5, 5, 8], strides, base, size, mode)?;
                let slow =
                    resize_strided(|i| data[i as usize], [5, 5, 8], strides, base, size, mode)?;
                assert_eq!(fast, slow, "{size:?} {mode:?}");
            }
        }
        // a box reaching past the buffer: the checked path, no panic
        let r = resize_slice(&data, [7, 9, 13], strides, 0, [2, 2, 2], Mode::Trilinear)?;
        assert_eq!(r.dim(), (2, 2, 2));
        Ok(())
    }
}
