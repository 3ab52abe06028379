//! Affine resampling of a channel-first volume `[C, D, H, W]`: every output voxel `o` takes the
//! input at the continuous voxel index `xform @ o` (trilinear or nearest, border padding), as
//! MONAI's `SpatialResample` / `Spacing` do through `grid_sample(align_corners=False)`.

use std::sync::OnceLock;

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
    super::check_alloc("resample", &[c, out[0], out[1], out[2]])?;
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

/// One axis of a sample position: input offsets (index * stride) of the two neighbours and the
/// weight of the upper one (nearest: both the rounded index).
#[derive(Clone, Copy)]
struct Tap {
    lo: isize,
    hi: isize,
    t: f32,
}

#[inline]
fn tap(p: f64, n: usize, stride: isize, mode: Mode) -> Tap {
    if mode == Mode::Nearest {
        // grid_sample's nearest: round half to even
        let r = (p.round_ties_even() as usize).min(n - 1) as isize * stride;
        return Tap {
            lo: r,
            hi: r,
            t: 0.0,
        };
    }
    // p >= 0 after clamping: truncation is floor, without a libm call
    let a0 = p as usize;
    let a1 = (a0 + 1).min(n - 1);
    Tap {
        lo: a0 as isize * stride,
        hi: a1 as isize * stride,
        t: (p - a0 as f64) as f32,
    }
}

/// The inputs of one resampling loop.
struct Job<'a, F> {
    get: &'a F,
    shape: [usize; 3],
    strides: [isize; 3],
    base: isize,
    m: &'a [[f64; 4]; 4],
    out: [usize; 3],
    mode: Mode,
    tables: Option<&'a [Vec<Tap>; 3]>,
}

impl<F: Fn(isize) -> f32 + Sync> Job<'_, F> {
    /// The sample position along input axis `r` of output voxel `f` (the per-voxel formula).
    #[inline(always)]
    fn pos(&self, r: usize, f: [f64; 3]) -> f64 {
        let m = self.m;
        clampf(
            m[r][0] * f[0] + m[r][1] * f[1] + m[r][2] * f[2] + m[r][3],
            self.shape[r],
        )
    }

    #[inline(always)]
    fn sample(&self, t: [Tap; 3]) -> f32 {
        let [ta, tb, tc] = t;
        let get = self.get;
        let base = self.base;
        if self.mode == Mode::Nearest {
            return get(base + ta.lo + tb.lo + tc.lo);
        }
        let at = |a: isize, b: isize, c: isize| get(base + a + b + c);
        let lerp = |u: f32, v: f32, t: f32| u * (1.0 - t) + v * t;
        let c00 = lerp(at(ta.lo, tb.lo, tc.lo), at(ta.lo, tb.lo, tc.hi), tc.t);
        let c01 = lerp(at(ta.lo, tb.hi, tc.lo), at(ta.lo, tb.hi, tc.hi), tc.t);
        let c10 = lerp(at(ta.hi, tb.lo, tc.lo), at(ta.hi, tb.lo, tc.hi), tc.t);
        let c11 = lerp(at(ta.hi, tb.hi, tc.lo), at(ta.hi, tb.hi, tc.hi), tc.t);
        lerp(lerp(c00, c01, tb.t), lerp(c10, c11, tb.t), ta.t)
    }

    /// Fill `buf` laid out as output axes `(A, B, C)` (C innermost), parallel over A.
    fn run<const A: usize, const B: usize, const C: usize>(&self, buf: &mut [f32]) {
        let (n1, n2) = (self.out[B], self.out[C]);
        buf.par_chunks_mut(n1 * n2)
            .enumerate()
            .for_each(|(o0, plane)| {
                let mut f = [0.0f64; 3];
                let mut idx = [0usize; 3];
                f[A] = o0 as f64;
                idx[A] = o0;
                for (o1, row) in plane.chunks_mut(n2).enumerate() {
                    f[B] = o1 as f64;
                    idx[B] = o1;
                    match self.tables {
                        Some(t) => {
                            for (o2, v) in row.iter_mut().enumerate() {
                                idx[C] = o2;
                                *v = self.sample([t[0][idx[0]], t[1][idx[1]], t[2][idx[2]]]);
                            }
                        }
                        None => {
                            for (o2, v) in row.iter_mut().enumerate() {
                                f[C] = o2 as f64;
                                let (sh, st, md) = (self.shape, self.strides, self.mode);
                                *v = self.sample([
                                    tap(self.pos(0, f), sh[0], st[0], md),
                                    tap(self.pos(1, f), sh[1], st[1], md),
                                    tap(self.pos(2, f), sh[2], st[2], md),
                                ]);
                            }
                        }
                    }
                }
            });
    }
}

/// [`affine_resample`] for one channel read through `get(offset)` at
/// `base + i*strides[0] + j*strides[1] + k*strides[2]` (decode on the fly from file bytes).
///
/// The output is computed in the loop order that walks the input's memory most closely (the
/// innermost loop along the output axis whose step moves least through the input's bytes, e.g.
/// the file's x axis of a NIfTI reoriented to RAS), then laid out in C order; an axis-aligned
/// transform (diagonal `xform`, off-diagonal terms moving a sample by at most 1e-12 voxel) takes
/// its per-axis taps from tables. Both give the values of the per-voxel formula (exactly, for an
/// exactly diagonal or any non-diagonal `xform`).
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
    super::check_alloc("resample", &out)?;
    let m = *xform;
    let pos = |r: usize, f: [f64; 3]| -> f64 {
        clampf(
            m[r][0] * f[0] + m[r][1] * f[1] + m[r][2] * f[2] + m[r][3],
            shape[r],
        )
    };
    let order = loop_order(&m, strides);
    let diagonal = is_diagonal(&m, out);
    let tables: Option<[Vec<Tap>; 3]> = diagonal.then(|| {
        [0usize, 1, 2].map(|r| {
            (0..out[r])
                .map(|o| {
                    let mut f = [0.0; 3];
                    f[r] = o as f64;
                    tap(pos(r, f), shape[r], strides[r], mode)
                })
                .collect()
        })
    });
    let (n1, n2) = (out[order[1]], out[order[2]]);
    let mut buf = vec![0f32; out[order[0]] * n1 * n2];
    let job = Job {
        get: &get,
        shape,
        strides,
        base,
        m: &m,
        out,
        mode,
        tables: tables.as_ref(),
    };
    // one monomorphised loop per order: constant axis indices keep the counters in registers
    match order {
        [0, 1, 2] => job.run::<0, 1, 2>(&mut buf),
        [0, 2, 1] => job.run::<0, 2, 1>(&mut buf),
        [1, 0, 2] => job.run::<1, 0, 2>(&mut buf),
        [1, 2, 0] => job.run::<1, 2, 0>(&mut buf),
        [2, 0, 1] => job.run::<2, 0, 1>(&mut buf),
        _ => job.run::<2, 1, 0>(&mut buf),
    }
    reorder(buf, out, order)
}

/// Whether `xform` is axis-aligned for an output of shape `out`: every off-diagonal term moves
/// a sample by at most 1e-12 voxel (a rotation shared by the input and output grids, as MONAI
/// `Spacing` keeps an oblique scan's directions, cancels to ~1e-17, not to exact zeros).
pub fn is_diagonal(xform: &[[f64; 4]; 4], out: [usize; 3]) -> bool {
    (0..3).all(|r| (0..3).all(|c| r == c || xform[r][c].abs() * (out[c] as f64 - 1.0) <= 1e-12))
}

/// The loop order of [`affine_resample_strided`]: outermost first, the output axis whose step
/// moves furthest through the input's memory.
fn loop_order(m: &[[f64; 4]; 4], strides: [isize; 3]) -> [usize; 3] {
    let cost = |a: usize| -> f64 {
        (0..3)
            .map(|r| m[r][a].abs() * strides[r].unsigned_abs() as f64)
            .sum()
    };
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| cost(b).total_cmp(&cost(a)));
    order
}

/// Array axis p of `buf` (shape `out[order[p]]`) holds output axis `order[p]`: the C-order
/// `[out[0], out[1], out[2]]` array. The copy runs in tiles of [`TILE`] x [`TILE`] over the
/// output's innermost axis and the axis contiguous in `buf`, so each cache line read is used
/// whole (an element-by-element permuted copy reads one line per value).
fn reorder(buf: Vec<f32>, out: [usize; 3], order: [usize; 3]) -> Result<ndarray::Array3<f32>> {
    let n = [out[order[0]], out[order[1]], out[order[2]]];
    if buf.len() != n[0] * n[1] * n[2] {
        return Err(Error::shape(format!(
            "resample: expected {} values for {out:?}, got {}",
            n[0] * n[1] * n[2],
            buf.len()
        )));
    }
    let shape = (out[0], out[1], out[2]);
    if order == [0, 1, 2] {
        return ndarray::Array3::from_shape_vec(shape, buf)
            .map_err(|e| Error::shape(e.to_string()));
    }
    // st[axis]: the step in `buf` of output axis `axis`
    let mut st = [0usize; 3];
    st[order[0]] = n[1] * n[2];
    st[order[1]] = n[2];
    st[order[2]] = 1;
    let mut dst = vec![0f32; buf.len()];
    let (d1, d2) = (out[1] * out[2], out[2]);
    if st[2] == 1 {
        // rows along the innermost axis are contiguous in `buf`: row copies
        for i in 0..out[0] {
            for j in 0..out[1] {
                let s = i * st[0] + j * st[1];
                dst[i * d1 + j * d2..][..d2].copy_from_slice(&buf[s..s + d2]);
            }
        }
    } else {
        // p: the output axis contiguous in `buf` (0 or 1), q the other
        let p = order[2];
        let q = 1 - p;
        for iq in 0..out[q] {
            for pb in (0..out[p]).step_by(TILE) {
                for kb in (0..out[2]).step_by(TILE) {
                    let ke = (kb + TILE).min(out[2]);
                    for ip in pb..(pb + TILE).min(out[p]) {
                        let mut idx = [0usize; 2];
                        idx[q] = iq;
                        idx[p] = ip;
                        let d = idx[0] * d1 + idx[1] * d2;
                        let s = iq * st[q] + ip;
                        for (k, v) in dst[d + kb..d + ke].iter_mut().enumerate() {
                            *v = buf[s + (kb + k) * st[2]];
                        }
                    }
                }
            }
        }
    }
    ndarray::Array3::from_shape_vec(shape, dst).map_err(|e| Error::shape(e.to_string()))
}

/// The tile edge of [`reorder`]'s copy (16 float32: one 64-byte cache line).
const TILE: usize = 16;

/// One output voxel of the axis-aligned trilinear resample: `r[a][b]` are the input rows along
/// loop axis C at the lower (0) / upper (1) neighbour along loop axes A and B, `l` / `h` the
/// two neighbours' indices in those rows, `w[axis]` the upper neighbour's weight per output
/// axis. [`Job::sample`]'s formula (lerp along axis 2, then 1, then 0) on decoded values.
#[inline(always)]
fn voxel<const A: usize, const B: usize, const C: usize, T: Copy, V: Fn(T) -> f32>(
    conv: &V,
    r: &[[&[T]; 2]; 2],
    w: [f32; 3],
    l: usize,
    h: usize,
) -> f32 {
    let lerp = |u: f32, v: f32, t: f32| u * (1.0 - t) + v * t;
    // input value at (lo | hi) along axes 0, 1, 2
    let x = |i: [usize; 3]| -> f32 {
        let k = if i[C] == 0 { l } else { h };
        conv(r[i[A]][i[B]][k])
    };
    let c00 = lerp(x([0, 0, 0]), x([0, 0, 1]), w[2]);
    let c01 = lerp(x([0, 1, 0]), x([0, 1, 1]), w[2]);
    let c10 = lerp(x([1, 0, 0]), x([1, 0, 1]), w[2]);
    let c11 = lerp(x([1, 1, 0]), x([1, 1, 1]), w[2]);
    lerp(lerp(c00, c01, w[1]), lerp(c10, c11, w[1]), w[0])
}

/// [`voxel`] then `post` for the outputs `ks` of one row (`inner[k]`: the two neighbours'
/// indices in the row slices and the upper one's weight along loop axis C), into `out` (one
/// value per `k`). When loop axis C is input axis 0, whose lerp is [`voxel`]'s last, and its
/// stride is +-1 (`unit`: neighbouring indices of a row slice are neighbouring voxels), the
/// lerps along axes 2 and 1 are shared between outputs: `g[j]` holds them at row index `j`,
/// computed once per index over the span the outputs read by a straight loop over the four
/// contiguous rows (which the compiler vectorises), and each output is
/// `lerp(g[l], g[h], w[0])`. These are [`voxel`]'s float32 operations in its order, so the
/// values are the same; any other layout computes each output on its own.
#[allow(clippy::too_many_arguments)]
#[inline]
fn row_values<const A: usize, const B: usize, const C: usize, T, V, P, K>(
    conv: &V,
    post: &P,
    r: &[[&[T]; 2]; 2],
    w: [f32; 3],
    inner: &[(usize, usize, f32)],
    unit: bool,
    ks: K,
    out: &mut [f32],
    g: &mut Vec<f32>,
) where
    T: Copy,
    V: Fn(T) -> f32,
    P: Fn(f32) -> f32,
    K: Iterator<Item = usize> + Clone,
{
    let lerp = |u: f32, v: f32, t: f32| u * (1.0 - t) + v * t;
    if C != 0 || !unit {
        for (o, k) in out.iter_mut().zip(ks) {
            let (l, h, t) = inner[k];
            let mut w = w;
            w[C] = t;
            *o = post(voxel::<A, B, C, T, V>(conv, r, w, l, h));
        }
        return;
    }
    let (mut j0, mut j1) = (usize::MAX, 0);
    for k in ks.clone() {
        let (l, h, _) = inner[k];
        j0 = j0.min(l.min(h));
        j1 = j1.max(l.max(h));
    }
    if j0 > j1 {
        return; // no outputs
    }
    g.clear();
    g.resize(j1 + 1 - j0, 0.0);
    // the input row at axis-1 index i1 and axis-2 index i2 (lo 0 / hi 1), over the span
    let row = |i1: usize, i2: usize| -> &[T] {
        let i = [0, i1, i2];
        &r[i[A]][i[B]][j0..=j1]
    };
    let (x00, x01, x10, x11) = (row(0, 0), row(0, 1), row(1, 0), row(1, 1));
    for ((((gj, &a), &b), &c), &d) in g.iter_mut().zip(x00).zip(x01).zip(x10).zip(x11) {
        *gj = lerp(
            lerp(conv(a), conv(b), w[2]),
            lerp(conv(c), conv(d), w[2]),
            w[1],
        );
    }
    for (o, k) in out.iter_mut().zip(ks) {
        let (l, h, t) = inner[k];
        *o = lerp(g[l - j0], g[h - j0], t);
    }
    for o in out.iter_mut() {
        *o = post(*o);
    }
}

/// The inputs of the row kernel of [`resample_diagonal_trilinear`].
struct Rows<'a, T, V, P> {
    data: &'a [T],
    conv: &'a V,
    post: &'a P,
    tabs: &'a [Vec<Tap>; 3],
    /// per output index along the innermost axis: the two neighbours' indices in a row slice
    /// and the upper one's weight
    inner: &'a [(usize, usize, f32)],
    /// offset of a row slice's first element relative to the row's base offset
    shift: isize,
    len: usize,
    unit: bool,
    base: isize,
    out: [usize; 3],
}

impl<T: Copy + Sync, V: Fn(T) -> f32 + Sync, P: Fn(f32) -> f32 + Sync> Rows<'_, T, V, P> {
    /// Fill `buf` laid out as output axes `(A, B, C)`, C innermost: the four input rows along C
    /// that a row of outputs reads are sliced once per row (one bounds check per row, not per
    /// tap), then every output takes [`Job::sample`]'s trilinear formula over them.
    fn run<const A: usize, const B: usize, const C: usize>(&self, buf: &mut [f32]) {
        let (n1, n2) = (self.out[B], self.out[C]);
        buf.par_chunks_mut(n1 * n2)
            .enumerate()
            .for_each_init(Vec::new, |g, (o0, plane)| {
                let ta = self.tabs[A][o0];
                for (o1, row) in plane.chunks_mut(n2).enumerate() {
                    let tb = self.tabs[B][o1];
                    let slice = |off: isize| -> &[T] {
                        let s = (self.base + off + self.shift) as usize;
                        &self.data[s..s + self.len]
                    };
                    let r = [
                        [slice(ta.lo + tb.lo), slice(ta.lo + tb.hi)],
                        [slice(ta.hi + tb.lo), slice(ta.hi + tb.hi)],
                    ];
                    let mut w = [0f32; 3];
                    w[A] = ta.t;
                    w[B] = tb.t;
                    row_values::<A, B, C, T, V, P, _>(
                        self.conv,
                        self.post,
                        &r,
                        w,
                        self.inner,
                        self.unit,
                        0..n2,
                        row,
                        g,
                    );
                }
            });
    }
}

/// The tables of the axis-aligned trilinear row kernel (after checking the inputs).
struct Setup {
    order: [usize; 3],
    tabs: [Vec<Tap>; 3],
    shift: isize,
    inner: Vec<(usize, usize, f32)>,
    len: usize,
    /// loop axis C's input stride is +-1 (or it has one voxel): see [`row_values`]
    unit: bool,
}

fn setup(
    data_len: usize,
    shape: [usize; 3],
    strides: [isize; 3],
    base: isize,
    xform: &[[f64; 4]; 4],
    out: [usize; 3],
) -> Result<Setup> {
    if out.contains(&0) || shape.contains(&0) {
        return Err(Error::shape(format!(
            "resample: sizes must be positive, got input {shape:?} -> {out:?}"
        )));
    }
    super::check_alloc("resample", &out)?;
    if xform.iter().flatten().any(|v| !v.is_finite()) || !is_diagonal(xform, out) {
        return Err(Error::config(
            "resample: expected a finite axis-aligned transform",
        ));
    }
    // every offset the layout can reach lies inside `data`
    let span = |f: fn(isize) -> isize| -> isize {
        (0..3)
            .map(|r| f((shape[r] as isize - 1) * strides[r]))
            .sum::<isize>()
    };
    let (lo, hi) = (base + span(|v| v.min(0)), base + span(|v| v.max(0)));
    if lo < 0 || hi >= data_len as isize {
        return Err(Error::shape(format!(
            "resample: a layout over offsets {lo}..={hi} does not fit {} values",
            data_len
        )));
    }
    let m = *xform;
    let order = loop_order(&m, strides);
    let tabs: [Vec<Tap>; 3] = [0usize, 1, 2].map(|r| {
        (0..out[r])
            .map(|o| {
                let p = clampf(m[r][r] * o as f64 + m[r][3], shape[r]);
                tap(p, shape[r], strides[r], Mode::Trilinear)
            })
            .collect()
    });
    let c = order[2];
    let shift = ((shape[c] as isize - 1) * strides[c]).min(0);
    let inner: Vec<(usize, usize, f32)> = tabs[c]
        .iter()
        .map(|t| ((t.lo - shift) as usize, (t.hi - shift) as usize, t.t))
        .collect();
    Ok(Setup {
        order,
        tabs,
        shift,
        inner,
        len: (shape[c] - 1) * strides[c].unsigned_abs() + 1,
        unit: strides[c].unsigned_abs() == 1 || shape[c] == 1,
    })
}

/// [`affine_resample_strided`] (trilinear) for an axis-aligned `xform` ([`is_diagonal`]) on a
/// typed buffer `data[base + i*strides[0] + j*strides[1] + k*strides[2]]` decoded by `conv`,
/// each output value then mapped through `post` (the intensity window, fused into the pass).
/// Returns exactly `post` of what [`affine_resample_strided`] returns (the same taps, the same
/// float32 operations in the same order); an error when the layout reaches outside `data` or
/// `xform` is not axis-aligned.
#[allow(clippy::too_many_arguments)]
pub fn resample_diagonal_trilinear<T, V, P>(
    data: &[T],
    conv: V,
    shape: [usize; 3],
    strides: [isize; 3],
    base: isize,
    xform: &[[f64; 4]; 4],
    out: [usize; 3],
    post: P,
) -> Result<ndarray::Array3<f32>>
where
    T: Copy + Sync,
    V: Fn(T) -> f32 + Sync,
    P: Fn(f32) -> f32 + Sync,
{
    let Setup {
        order,
        tabs,
        shift,
        inner,
        len,
        unit,
    } = setup(data.len(), shape, strides, base, xform, out)?;
    let rows = Rows {
        data,
        conv: &conv,
        post: &post,
        tabs: &tabs,
        inner: &inner,
        shift,
        len,
        unit,
        base,
        out,
    };
    let mut buf = vec![0f32; out[0] * out[1] * out[2]];
    match order {
        [0, 1, 2] => rows.run::<0, 1, 2>(&mut buf),
        [0, 2, 1] => rows.run::<0, 2, 1>(&mut buf),
        [1, 0, 2] => rows.run::<1, 0, 2>(&mut buf),
        [1, 2, 0] => rows.run::<1, 2, 0>(&mut buf),
        [2, 0, 1] => rows.run::<2, 0, 1>(&mut buf),
        _ => rows.run::<2, 1, 0>(&mut buf),
    }
    reorder(buf, out, order)
}

/// A source row's values can only bound its outputs up to float32 rounding: every trilinear
/// output of values in `[lo, hi]` lies in `[lo - d, hi + d]` with `d` this fraction of the
/// larger magnitude (three nested lerps of at most ~3 ulp each: < 1e-6; 1e-5 leaves a margin).
const BOUND_SLACK: f64 = 1e-5;

/// How many outputs of a row the foreground search computes at a time from either end.
const SCAN: usize = 32;

/// Element types whose rows [`resample_crop_resize_trilinear`] bounds by their extremes.
pub trait Extremes: Copy {
    /// The smallest and largest value of a non-empty `row`, ignoring NaN (None: no value).
    fn extremes(row: &[Self]) -> Option<(Self, Self)>;
}

impl Extremes for i16 {
    fn extremes(row: &[i16]) -> Option<(i16, i16)> {
        if row.is_empty() {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // one pass, 16 values at a time (SSE2 is part of x86-64)
            use std::arch::x86_64::*;
            let mut chunks = row.chunks_exact(16);
            // SAFETY: SSE2 is always present on x86-64; every load reads 8 values inside a
            // 16-value chunk (unaligned loads), the stores fill local arrays of 8
            let (mut lo, mut hi) = unsafe {
                let (mut mn0, mut mx0) = (_mm_set1_epi16(i16::MAX), _mm_set1_epi16(i16::MIN));
                let (mut mn1, mut mx1) = (mn0, mx0);
                for c in &mut chunks {
                    let a = _mm_loadu_si128(c.as_ptr().cast());
                    let b = _mm_loadu_si128(c.as_ptr().add(8).cast());
                    mn0 = _mm_min_epi16(mn0, a);
                    mx0 = _mm_max_epi16(mx0, a);
                    mn1 = _mm_min_epi16(mn1, b);
                    mx1 = _mm_max_epi16(mx1, b);
                }
                let (mut l, mut h) = ([0i16; 8], [0i16; 8]);
                _mm_storeu_si128(l.as_mut_ptr().cast(), _mm_min_epi16(mn0, mn1));
                _mm_storeu_si128(h.as_mut_ptr().cast(), _mm_max_epi16(mx0, mx1));
                (l.into_iter().min()?, h.into_iter().max()?)
            };
            for &v in chunks.remainder() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
            Some((lo, hi))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Some((row.iter().copied().min()?, row.iter().copied().max()?))
        }
    }
}

impl Extremes for f32 {
    fn extremes(row: &[f32]) -> Option<(f32, f32)> {
        // NaN never turns into foreground: an output with a NaN tap is NaN, so NaN is skipped
        // (a comparison with NaN is false: the running extreme stays)
        let lt = |a: f32, b: f32| if a < b { a } else { b };
        let gt = |a: f32, b: f32| if a > b { a } else { b };
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        #[cfg(target_arch = "x86_64")]
        let row = {
            use std::arch::x86_64::*;
            let mut chunks = row.chunks_exact(8);
            // SAFETY: SSE2 is always present on x86-64; every load reads 4 values inside an
            // 8-value chunk. minps(v, m) is `v < m ? v : m` and keeps m when v is NaN (maxps
            // alike), the same as `lt` / `gt`
            unsafe {
                let (mut mn0, mut mx0) = (_mm_set1_ps(lo), _mm_set1_ps(hi));
                let (mut mn1, mut mx1) = (mn0, mx0);
                for c in &mut chunks {
                    let a = _mm_loadu_ps(c.as_ptr());
                    let b = _mm_loadu_ps(c.as_ptr().add(4));
                    mn0 = _mm_min_ps(a, mn0);
                    mx0 = _mm_max_ps(a, mx0);
                    mn1 = _mm_min_ps(b, mn1);
                    mx1 = _mm_max_ps(b, mx1);
                }
                let (mut l, mut h) = ([0f32; 4], [0f32; 4]);
                _mm_storeu_ps(l.as_mut_ptr(), _mm_min_ps(mn0, mn1));
                _mm_storeu_ps(h.as_mut_ptr(), _mm_max_ps(mx0, mx1));
                lo = l.into_iter().fold(lo, |m, v| lt(v, m));
                hi = h.into_iter().fold(hi, |m, v| gt(v, m));
            }
            chunks.remainder()
        };
        for &v in row {
            lo = lt(v, lo);
            hi = gt(v, hi);
        }
        (lo <= hi).then_some((lo, hi))
    }
}

/// Min and max of `conv` over `row` (`conv` monotone: only the row's extremes are converted);
/// NaN when unknown (no non-NaN value).
fn row_range<T: Extremes, V: Fn(T) -> f32>(row: &[T], conv: &V) -> (f32, f32) {
    let Some((mn, mx)) = T::extremes(row) else {
        return (f32::NAN, f32::NAN);
    };
    let (a, b) = (conv(mn), conv(mx));
    if a <= b {
        (a, b)
    } else if b < a {
        (b, a)
    } else {
        (f32::NAN, f32::NAN)
    }
}

/// The foreground box of loop-order axes (A, B, C): inclusive first and last index per axis.
#[derive(Clone, Copy)]
struct Found {
    lo: [usize; 3],
    hi: [usize; 3],
    any: bool,
}

impl Found {
    const NONE: Found = Found {
        lo: [usize::MAX; 3],
        hi: [0; 3],
        any: false,
    };
    fn add(mut self, at: [usize; 3]) -> Found {
        for (r, &i) in at.iter().enumerate() {
            self.lo[r] = self.lo[r].min(i);
            self.hi[r] = self.hi[r].max(i);
        }
        self.any = true;
        self
    }
    fn join(self, o: Found) -> Found {
        if !o.any {
            return self;
        }
        if !self.any {
            return o;
        }
        let mut f = self;
        for r in 0..3 {
            f.lo[r] = f.lo[r].min(o.lo[r]);
            f.hi[r] = f.hi[r].max(o.hi[r]);
        }
        f
    }
}

/// The inputs of [`resample_crop_resize_trilinear`]'s passes.
struct Sparse<'a, T, V, P, M> {
    data: &'a [T],
    conv: &'a V,
    post: &'a P,
    maybe_fg: &'a M,
    s: &'a Setup,
    strides: [isize; 3],
    shape: [usize; 3],
    base: isize,
    out: [usize; 3],
}

impl<T, V, P, M> Sparse<'_, T, V, P, M>
where
    T: Copy + Sync + Extremes,
    V: Fn(T) -> f32 + Sync,
    P: Fn(f32) -> f32 + Sync,
    M: Fn(f64, f64) -> bool + Sync,
{
    fn slice(&self, off: isize) -> &[T] {
        let st = (self.base + off + self.s.shift) as usize;
        &self.data[st..st + self.s.len]
    }

    /// The input index of a tap offset along input axis `r`.
    fn index(&self, r: usize, off: isize) -> usize {
        match self.strides[r] {
            0 => 0,
            st => (off / st) as usize,
        }
    }

    /// The four input rows (along loop axis C) output row `(oa, ob)` reads, and its weights.
    fn rows<const A: usize, const B: usize>(
        &self,
        oa: usize,
        ob: usize,
    ) -> ([[&[T]; 2]; 2], [f32; 3]) {
        let (ta, tb) = (self.s.tabs[A][oa], self.s.tabs[B][ob]);
        let r = [
            [self.slice(ta.lo + tb.lo), self.slice(ta.lo + tb.hi)],
            [self.slice(ta.hi + tb.lo), self.slice(ta.hi + tb.hi)],
        ];
        let mut w = [0f32; 3];
        w[A] = ta.t;
        w[B] = tb.t;
        (r, w)
    }

    /// The outputs `ks` of row `(r, w)` through `post`, into `out` ([`row_values`]).
    #[inline(always)]
    fn values<const A: usize, const B: usize, const C: usize, K>(
        &self,
        r: &[[&[T]; 2]; 2],
        w: [f32; 3],
        ks: K,
        out: &mut [f32],
        g: &mut Vec<f32>,
    ) where
        K: Iterator<Item = usize> + Clone,
    {
        row_values::<A, B, C, T, V, P, K>(
            self.conv,
            self.post,
            r,
            w,
            &self.s.inner,
            self.s.unit,
            ks,
            out,
            g,
        );
    }

    /// The first (`rev` false) or last output `k` in `ks` of row `(r, w)` whose value is
    /// foreground (> 0), computed a block of [`SCAN`] outputs at a time from that end.
    fn scan<const A: usize, const B: usize, const C: usize>(
        &self,
        r: &[[&[T]; 2]; 2],
        w: [f32; 3],
        ks: std::ops::Range<usize>,
        rev: bool,
        g: &mut Vec<f32>,
    ) -> Option<usize> {
        let mut buf = [0f32; SCAN];
        let (mut s, mut e) = (ks.start, ks.end);
        while s < e {
            let (a, b) = if rev {
                (e.saturating_sub(SCAN).max(s), e)
            } else {
                (s, (s + SCAN).min(e))
            };
            let out = &mut buf[..b - a];
            self.values::<A, B, C, _>(r, w, a..b, out, g);
            let hit = if rev {
                out.iter().rposition(|&v| v > 0.0)
            } else {
                out.iter().position(|&v| v > 0.0)
            };
            if let Some(i) = hit {
                return Some(a + i);
            }
            if rev {
                e = a;
            } else {
                s = b;
            }
        }
        None
    }

    /// Pass 1: the foreground box (`post(value) > 0`). A row whose four input rows' values
    /// keep every output out of the foreground (`maybe_fg` false on their bound) is not
    /// computed; any other row is scanned from both ends up to its first / last foreground
    /// voxel, and once its plane holds foreground and the row lies inside the box found so
    /// far along B, only the parts outside the box along C are scanned (nothing inside them
    /// can widen the box).
    fn find<const A: usize, const B: usize, const C: usize>(&self) -> Found {
        let [sa, sb] = [self.shape[A], self.shape[B]];
        // the value ranges of the rows of input slice `a` along A, computed when an output
        // plane first reads the slice: its rows are then in cache for the scans that follow
        let slabs: Vec<OnceLock<Vec<(f32, f32)>>> = (0..sa).map(|_| OnceLock::new()).collect();
        let slab = |a: usize| -> &[(f32, f32)] {
            slabs[a].get_or_init(|| {
                let range = |b: usize| {
                    let off = a as isize * self.strides[A] + b as isize * self.strides[B];
                    row_range(self.slice(off), self.conv)
                };
                // rows in ascending address order (a flipped axis B has a negative stride):
                // the hardware prefetchers follow ascending streams best
                if self.strides[B] < 0 {
                    let mut v: Vec<(f32, f32)> = (0..sb).rev().map(range).collect();
                    v.reverse();
                    v
                } else {
                    (0..sb).map(range).collect()
                }
            })
        };
        let nc = self.out[C];
        let maybe = |ra: [&[(f32, f32)]; 2], ib: [usize; 2]| -> bool {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for ranges in ra {
                for b in ib {
                    let (l, h) = ranges[b];
                    if l.is_nan() || h.is_nan() {
                        return true;
                    }
                    lo = lo.min(l);
                    hi = hi.max(h);
                }
            }
            let d = BOUND_SLACK * (lo.abs().max(hi.abs()) as f64) + 1e-30;
            (self.maybe_fg)(lo as f64 - d, hi as f64 + d)
        };
        (0..self.out[A])
            .into_par_iter()
            .fold(
                || (Found::NONE, Vec::new()),
                |(mut f, mut g), oa| {
                    let ta = self.s.tabs[A][oa];
                    let ra = [slab(self.index(A, ta.lo)), slab(self.index(A, ta.hi))];
                    let mut plane_fg = false;
                    for ob in 0..self.out[B] {
                        let tb = self.s.tabs[B][ob];
                        if !maybe(ra, [self.index(B, tb.lo), self.index(B, tb.hi)]) {
                            continue;
                        }
                        let (r, w) = self.rows::<A, B>(oa, ob);
                        let mut fg = |ks, rev| self.scan::<A, B, C>(&r, w, ks, rev, &mut g);
                        if plane_fg && f.lo[1] <= ob && ob <= f.hi[1] {
                            if let Some(k) = fg(0..f.lo[2], false) {
                                f = f.add([oa, ob, k]);
                            }
                            if let Some(k) = fg(f.hi[2] + 1..nc, true) {
                                f = f.add([oa, ob, k]);
                            }
                            continue;
                        }
                        let Some(first) = fg(0..nc, false) else {
                            continue;
                        };
                        let last = fg(first..nc, true).unwrap_or(first);
                        f = f.add([oa, ob, first]).add([oa, ob, last]);
                        plane_fg = true;
                    }
                    (f, g)
                },
            )
            .map(|(f, _)| f)
            .reduce(|| Found::NONE, Found::join)
    }

    /// Pass 2: the outputs at `reads` (per loop axis A, B, C), in that loop order.
    fn fill<const A: usize, const B: usize, const C: usize>(
        &self,
        reads: [&[usize]; 3],
    ) -> Vec<f32> {
        let [ra, rb, rc] = reads;
        let mut buf = vec![0f32; ra.len() * rb.len() * rc.len()];
        if buf.is_empty() {
            return buf;
        }
        buf.par_chunks_mut(rb.len() * rc.len())
            .zip(ra.par_iter())
            .for_each_init(Vec::new, |g, (plane, &oa)| {
                let mut row = |(row, &ob): (&mut [f32], &usize)| {
                    let (r, w) = self.rows::<A, B>(oa, ob);
                    self.values::<A, B, C, _>(&r, w, rc.iter().copied(), row, g);
                };
                // input rows in ascending address order, as in `find`
                let rows = plane.chunks_mut(rc.len()).zip(rb);
                if self.strides[B] < 0 {
                    rows.rev().for_each(&mut row);
                } else {
                    rows.for_each(&mut row);
                }
            });
        buf
    }

    fn run<const A: usize, const B: usize, const C: usize>(
        &self,
        margin: [usize; 3],
        size: [usize; 3],
    ) -> Result<Option<ndarray::Array3<f32>>> {
        let f = self.find::<A, B, C>();
        if !f.any {
            return Ok(None);
        }
        // CropForeground's box (margin, clipped) per output axis, then what Resize reads of it
        let order = [A, B, C];
        let mut st = [0usize; 3];
        let mut len = [0usize; 3];
        let mut reads: [Vec<usize>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (p, &ax) in order.iter().enumerate() {
            st[ax] = f.lo[p].saturating_sub(margin[ax]);
            let en = (f.hi[p] + 1 + margin[ax]).min(self.out[ax]);
            len[ax] = en - st[ax];
            reads[ax] = super::resize::linear_reads(len[ax], size[ax]);
        }
        let abs: [Vec<usize>; 3] =
            [0, 1, 2].map(|ax| reads[ax].iter().map(|&i| i + st[ax]).collect());
        let buf = self.fill::<A, B, C>([&abs[A], &abs[B], &abs[C]]);
        let n = [reads[0].len(), reads[1].len(), reads[2].len()];
        let compact = reorder(buf, n, order)?;
        let flat = compact
            .as_slice()
            .ok_or_else(|| Error::shape("resample: output is not contiguous"))?;
        super::resize::resize_reads_trilinear(flat, len, &reads, size).map(Some)
    }
}

/// Axis-aligned trilinear resample (as [`resample_diagonal_trilinear`], each value through
/// `post`) -> MONAI `CropForeground(select_fn = x > 0, margin)` -> trilinear `Resize(size)`,
/// computing only what the result depends on: the foreground box is found by scanning each
/// output row from both ends (rows that `maybe_fg` rules out from their input rows' value
/// range, `maybe_fg(lo, hi)` = "some value in [lo, hi] may map through `post` above 0", are
/// skipped), then only the voxels the resize reads inside the box are resampled. Each computed
/// voxel is the same float32 expression as in [`resample_diagonal_trilinear`] and the resize's
/// taps are those of `resize_slice` on the box, so the result is bit-identical to resampling
/// everything, cropping, then resizing. `Ok(None)`: no voxel is foreground.
#[allow(clippy::too_many_arguments)]
pub fn resample_crop_resize_trilinear<T, V, P, M>(
    data: &[T],
    conv: V,
    shape: [usize; 3],
    strides: [isize; 3],
    base: isize,
    xform: &[[f64; 4]; 4],
    out: [usize; 3],
    post: P,
    maybe_fg: M,
    margin: [usize; 3],
    size: [usize; 3],
) -> Result<Option<ndarray::Array3<f32>>>
where
    T: Copy + Sync + Extremes,
    V: Fn(T) -> f32 + Sync,
    P: Fn(f32) -> f32 + Sync,
    M: Fn(f64, f64) -> bool + Sync,
{
    if size.contains(&0) {
        return Err(Error::shape(format!(
            "resize: sizes must be positive, got {size:?}"
        )));
    }
    let s = setup(data.len(), shape, strides, base, xform, out)?;
    let sp = Sparse {
        data,
        conv: &conv,
        post: &post,
        maybe_fg: &maybe_fg,
        s: &s,
        strides,
        shape,
        base,
        out,
    };
    match s.order {
        [0, 1, 2] => sp.run::<0, 1, 2>(margin, size),
        [0, 2, 1] => sp.run::<0, 2, 1>(margin, size),
        [1, 0, 2] => sp.run::<1, 0, 2>(margin, size),
        [1, 2, 0] => sp.run::<1, 2, 0>(margin, size),
        [2, 0, 1] => sp.run::<2, 0, 1>(margin, size),
        _ => sp.run::<2, 1, 0>(margin, size),
    }
}

/// The per-voxel formula [`affine_resample_strided`] implements (kept for the unit tests).
#[cfg(test)]
fn reference_resample(
    x: &ndarray::Array3<f32>,
    m: &[[f64; 4]; 4],
    out: [usize; 3],
    mode: Mode,
) -> ndarray::Array3<f32> {
    let (d, h, w) = x.dim();
    ndarray::Array3::from_shape_fn((out[0], out[1], out[2]), |(i, j, k)| {
        let (fi, fj, fk) = (i as f64, j as f64, k as f64);
        let p0 = clampf(m[0][0] * fi + m[0][1] * fj + m[0][2] * fk + m[0][3], d);
        let p1 = clampf(m[1][0] * fi + m[1][1] * fj + m[1][2] * fk + m[1][3], h);
        let p2 = clampf(m[2][0] * fi + m[2][1] * fj + m[2][2] * fk + m[2][3], w);
        if mode == Mode::Nearest {
            let r = |p: f64, n: usize| (p.round_ties_even() as usize).min(n - 1);
            return x[[r(p0, d), r(p1, h), r(p2, w)]];
        }
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
        let at = |a: usize, b: usize, c: usize| x[[a, b, c]];
        let c00 = lerp(at(a0, b0, c0), at(a0, b0, c1), tc);
        let c01 = lerp(at(a0, b1, c0), at(a0, b1, c1), tc);
        let c10 = lerp(at(a1, b0, c0), at(a1, b0, c1), tc);
        let c11 = lerp(at(a1, b1, c0), at(a1, b1, c1), tc);
        lerp(lerp(c00, c01, tb), lerp(c10, c11, tb), ta)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ShapeBuilder;

    fn sample() -> ndarray::Array3<f32> {
        ndarray::Array3::from_shape_fn((9, 7, 8), |(i, j, k)| {
            ((i * 31 + j * 17 + k * 7) % 23) as f32 * 0.5 - 3.0
        })
    }

    fn run(
        x: &ndarray::Array3<f32>,
        m: &[[f64; 4]; 4],
        out: [usize; 3],
        mode: Mode,
    ) -> Result<ndarray::Array3<f32>> {
        let flat: Vec<f32> = x.iter().copied().collect();
        let (_, h, w) = x.dim();
        affine_resample_strided(
            |i| flat[i as usize],
            [x.dim().0, h, w],
            [(h * w) as isize, w as isize, 1],
            0,
            m,
            out,
            mode,
        )
    }

    #[test]
    fn reorder_equals_the_permuted_array() -> Result<()> {
        let out = [17usize, 5, 33];
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let n = [out[order[0]], out[order[1]], out[order[2]]];
            let buf: Vec<f32> = (0..n[0] * n[1] * n[2]).map(|i| i as f32 * 0.5).collect();
            let arr = ndarray::Array3::from_shape_vec((n[0], n[1], n[2]), buf.clone()).unwrap();
            let mut back = [0usize; 3];
            for (p, &a) in order.iter().enumerate() {
                back[a] = p;
            }
            let want = arr.permuted_axes(back).as_standard_layout().into_owned();
            assert_eq!(reorder(buf, out, order)?, want, "{order:?}");
        }
        assert!(matches!(
            reorder(vec![0.0; 3], [2, 2, 1], [1, 0, 2]),
            Err(Error::Shape(_))
        ));
        Ok(())
    }

    #[test]
    fn every_loop_order_and_the_tables_equal_the_formula() -> Result<()> {
        let x = sample();
        let (c, s) = (0.3f64.cos(), 0.3f64.sin());
        let xforms = [
            // diagonal (tables), zoom + shift, some samples outside (border clamp)
            [
                [0.6, 0.0, 0.0, -0.5],
                [0.0, 1.3, 0.0, 0.25],
                [0.0, 0.0, 0.7, 1.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            // rotation in the (1, 2) plane
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, c, -s, 2.0],
                [0.0, s, c, -1.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            // a permutation: output axis 2 runs along input axis 0 (another loop order)
            [
                [0.0, 0.0, 0.9, 0.0],
                [0.0, 1.1, 0.0, 0.0],
                [0.8, 0.0, 0.0, 0.5],
                [0.0, 0.0, 0.0, 1.0],
            ],
        ];
        for m in &xforms {
            for mode in [Mode::Trilinear, Mode::Nearest] {
                let out = [6, 8, 10];
                let got = run(&x, m, out, mode)?;
                let want = reference_resample(&x, m, out, mode);
                assert_eq!(got, want, "{m:?} {mode:?}");
            }
        }
        // near-diagonal (a shared rotation cancelled to ~1e-17): the tables, within 1e-6
        let mut nd = xforms[0];
        nd[0][1] = 1e-17;
        nd[2][0] = -2e-17;
        let got = run(&x, &nd, [6, 8, 10], Mode::Trilinear)?;
        let want = reference_resample(&x, &nd, [6, 8, 10], Mode::Trilinear);
        assert!(got
            .iter()
            .zip(want.iter())
            .all(|(a, b)| (a - b).abs() <= 1e-6));
        // a Fortran-order input read through its strides gives the same result
        let f = ndarray::Array3::from_shape_vec((9, 7, 8).f(), x.t().iter().copied().collect())
            .map_err(|e| Error::shape(e.to_string()))?;
        assert_eq!(f, x);
        let flat = f
            .as_slice_memory_order()
            .ok_or_else(|| Error::shape("layout"))?;
        let got = affine_resample_strided(
            |i| flat[i as usize],
            [9, 7, 8],
            [1, 9, 63],
            0,
            &xforms[1],
            [5, 5, 5],
            Mode::Trilinear,
        )?;
        assert_eq!(
            got,
            reference_resample(&x, &xforms[1], [5, 5, 5], Mode::Trilinear)
        );
        Ok(())
    }

    #[test]
    fn the_row_kernel_equals_the_per_tap_path_bit_for_bit() -> Result<()> {
        // i16 values in a flipped, permuted layout (a NIfTI x-fastest file reoriented), zooms
        // in and out, samples past the border (clamped), a near-diagonal transform
        let (nx, ny, nz) = (9usize, 7usize, 8usize);
        let raw: Vec<i16> = (0..nx * ny * nz)
            .map(|i| ((i * 7919) % 2001) as i16 - 1000)
            .collect();
        let m = [
            [0.6, 0.0, 1e-17, -0.5],
            [0.0, 1.3, 0.0, 0.25],
            [-2e-17, 0.0, 0.7, 1.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let layouts: [([usize; 3], [isize; 3], isize); 4] = [
            ([nx, ny, nz], [1, nx as isize, (nx * ny) as isize], 0),
            // x contiguous, y slowest: loop order (y, z, x)
            ([nx, ny, nz], [1, (nx * nz) as isize, nx as isize], 0),
            (
                [nx, ny, nz],
                [-1, -(nx as isize), (nx * ny) as isize],
                (nx - 1 + (ny - 1) * nx) as isize,
            ),
            // axes permuted (z, x, y) and z flipped
            (
                [nz, nx, ny],
                [-((nx * ny) as isize), 1, nx as isize],
                ((nz - 1) * nx * ny) as isize,
            ),
        ];
        let conv = |x: i16| (x as f64 * 0.5 - 3.0) as f32;
        let post = |x: f32| (x / 100.0).clamp(-1.0, 1.0);
        for (shape, strides, base) in layouts {
            for out in [[6, 8, 10], [12, 3, 5]] {
                let fast =
                    resample_diagonal_trilinear(&raw, conv, shape, strides, base, &m, out, post)?;
                let slow = affine_resample_strided(
                    |i| conv(raw[i as usize]),
                    shape,
                    strides,
                    base,
                    &m,
                    out,
                    Mode::Trilinear,
                )?
                .mapv(post);
                assert_eq!(fast, slow, "{shape:?} {strides:?} {out:?}");
            }
        }
        // a layout reaching outside the buffer, a rotation: errors, not panics
        let too_far = resample_diagonal_trilinear(
            &raw,
            conv,
            [nx + 1, ny, nz],
            [1, 9, 63],
            0,
            &m,
            [2, 2, 2],
            post,
        );
        assert!(matches!(too_far, Err(Error::Shape(_))));
        let mut rot = m;
        rot[0][1] = 0.3;
        let r = resample_diagonal_trilinear(
            &raw,
            conv,
            [nx, ny, nz],
            [1, 9, 63],
            0,
            &rot,
            [2, 2, 2],
            post,
        );
        assert!(matches!(r, Err(Error::Config(_))));
        Ok(())
    }

    #[test]
    fn bad_sizes_and_transforms_are_errors() {
        let x = sample().insert_axis(Axis(0));
        let mut m = [[0.0; 4]; 4];
        m[0][0] = f64::NAN;
        assert!(matches!(
            affine_resample(x.view(), &m, [2, 2, 2], Mode::Trilinear),
            Err(Error::Config(_))
        ));
        let id = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert!(matches!(
            affine_resample(x.view(), &id, [0, 2, 2], Mode::Trilinear),
            Err(Error::Shape(_))
        ));
        let y = affine_resample(x.view(), &id, [9, 7, 8], Mode::Trilinear);
        assert!(y.map(|y| y == x).unwrap_or(false));
    }
}
