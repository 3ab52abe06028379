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
    trilinear(shape, [sd, sh], base, size, row, |r: &[f32], x| r[x])
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
    trilinear_taps(
        &taps,
        [(n[1] * n[2]) as isize, n[2] as isize],
        0,
        row,
        |r: &[f32], x| r[x],
    )
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
) -> Result<ndarray::Array3<f32>> {
    let [d, h, w] = shape;
    let [od, oh, ow] = size;
    let taps = [linear_taps(d, od), linear_taps(h, oh), linear_taps(w, ow)];
    trilinear_taps(&taps, [sd, sh], base, row, at)
}

/// [`trilinear`]'s loop over given per-axis taps (`taps[r][o] = (i0, i1, w0, w1)`, the input
/// indices along axis r and their weights): the output has `taps[r].len()` voxels along axis r.
///
/// Each output voxel is `wz0 * (wy0 * X(z0, y0) + wy1 * X(z0, y1)) + wz1 * (wy0 * X(z1, y0) +
/// wy1 * X(z1, y1))` with `X(z, y) = wx0 * in[z, y, x0] + wx1 * in[z, y, x1]`, PyTorch's
/// `upsample_trilinear3d` order. `X` of an input row is computed once per output plane into a
/// row of `ow` values ([`XRows`]; an upsampled row is reused by the output rows that share it),
/// then the output row combines four such rows in a straight loop the compiler vectorises.
/// The same float32 operations per voxel as evaluating the expression directly.
fn trilinear_taps<R: Copy, Row: Fn(isize) -> R + Sync, At: Fn(R, usize) -> f32 + Sync>(
    taps: &[Vec<(usize, usize, f32, f32)>; 3],
    [sd, sh]: [isize; 2],
    base: isize,
    row: Row,
    at: At,
) -> Result<ndarray::Array3<f32>> {
    let [td, th, tw] = taps;
    let (od, oh, ow) = (td.len(), th.len(), tw.len());
    let mut out = vec![0f32; od * oh * ow];
    // X of the input row starting at `offset`, into `t` (ow values)
    let along_x = |offset: isize, t: &mut [f32]| {
        let r = row(offset);
        for (v, &(x0, x1, wx0, wx1)) in t.iter_mut().zip(tw) {
            *v = wx0 * at(r, x0) + wx1 * at(r, x1);
        }
    };
    if oh * ow > 0 {
        out.par_chunks_mut(oh * ow).enumerate().for_each_init(
            || XRows::new(ow),
            |xr, (z, plane)| {
                let (z0, z1, wz0, wz1) = td[z];
                let b = [base + z0 as isize * sd, base + z1 as isize * sd];
                xr.clear();
                for (orow, &(y0, y1, wy0, wy1)) in plane.chunks_mut(ow).zip(th) {
                    let mut at_z =
                        |s: usize| xr.ensure(s, y0, y1, |y, t| along_x(b[s] + y as isize * sh, t));
                    let ((a0, a1), (c0, c1)) = (at_z(0), at_z(1));
                    let [t00, t01] = [&xr.buf[0][a0], &xr.buf[0][a1]];
                    let [t10, t11] = [&xr.buf[1][c0], &xr.buf[1][c1]];
                    for ((((v, &p), &q), &r), &u) in
                        orow.iter_mut().zip(t00).zip(t01).zip(t10).zip(t11)
                    {
                        *v = wz0 * (wy0 * p + wy1 * q) + wz1 * (wy0 * r + wy1 * u);
                    }
                }
            },
        );
    }
    ndarray::Array3::from_shape_vec((od, oh, ow), out).map_err(|e| Error::shape(e.to_string()))
}

/// For [`trilinear_taps`]: per input z slice of an output plane (0: z0, 1: z1), two x-resized
/// input rows and their y indices (`usize::MAX`: none yet).
struct XRows {
    idx: [[usize; 2]; 2],
    buf: [[Vec<f32>; 2]; 2],
}

impl XRows {
    fn new(ow: usize) -> Self {
        let row = || vec![0f32; ow];
        XRows {
            idx: [[usize::MAX; 2]; 2],
            buf: [[row(), row()], [row(), row()]],
        }
    }

    fn clear(&mut self) {
        self.idx = [[usize::MAX; 2]; 2];
    }

    /// Make slice `s` hold the rows `y0` and `y1` (computing a missing one with `fill`, over
    /// the slot not holding the other), and return their slots.
    fn ensure(
        &mut self,
        s: usize,
        y0: usize,
        y1: usize,
        fill: impl Fn(usize, &mut [f32]),
    ) -> (usize, usize) {
        let idx = &mut self.idx[s];
        let i0 = match idx.iter().position(|&i| i == y0) {
            Some(i) => i,
            None => {
                let i = usize::from(idx[0] == y1);
                fill(y0, &mut self.buf[s][i]);
                idx[i] = y0;
                i
            }
        };
        let i1 = match idx.iter().position(|&i| i == y1) {
            Some(i) => i,
            None => {
                let i = 1 - i0;
                fill(y1, &mut self.buf[s][i]);
                idx[i] = y1;
                i
            }
        };
        (i0, i1)
    }
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
            trilinear(shape, [sd, sh], base, size, |o| o, at)?
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
        // both equal PyTorch's per-voxel expression evaluated directly
        let direct = |shape: [usize; 3], size: [usize; 3]| {
            let [d, h, w] = shape;
            let t = [
                linear_taps(d, size[0]),
                linear_taps(h, size[1]),
                linear_taps(w, size[2]),
            ];
            let at = |z: usize, y: usize, x: usize| data[base as usize + z * 108 + y * 12 + x];
            ndarray::Array3::from_shape_fn((size[0], size[1], size[2]), |(i, j, k)| {
                let ((z0, z1, wz0, wz1), (y0, y1, wy0, wy1)) = (t[0][i], t[1][j]);
                let (x0, x1, wx0, wx1) = t[2][k];
                let x = |z, y| wx0 * at(z, y, x0) + wx1 * at(z, y, x1);
                wz0 * (wy0 * x(z0, y0) + wy1 * x(z0, y1))
                    + wz1 * (wy0 * x(z1, y0) + wy1 * x(z1, y1))
            })
        };
        for size in [[3, 8, 5], [10, 2, 17], [1, 1, 1], [5, 5, 8], [9, 11, 3]] {
            let fast = resize_slice(&data, [5, 5, 8], strides, base, size, Mode::Trilinear)?;
            assert_eq!(fast, direct([5, 5, 8], size), "{size:?}");
        }
        // a box reaching past the buffer: the checked path, no panic
        let r = resize_slice(&data, [7, 9, 13], strides, 0, [2, 2, 2], Mode::Trilinear)?;
        assert_eq!(r.dim(), (2, 2, 2));
        Ok(())
    }
}
