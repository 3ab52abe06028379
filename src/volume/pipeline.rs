//! Whole-file pipelines in Rust, parallel across files: load (NIfTI) -> reorient to RAS (flips
//! and permutations from the affine) -> intensity window -> resize, written straight into a
//! preallocated batch `[B, 1, D, H, W]`.

use ndarray::{s, Array3, Array5, ArrayView3, Axis, ShapeBuilder};
use rayon::prelude::*;

use super::nifti;
use super::resample::affine_resample_strided;
use super::resize::{resize, resize_strided, Mode};
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Pipeline {
    pub ras: bool,
    /// Target voxel size in mm (MONAI `Spacing`, trilinear, border), after the reorientation.
    pub spacing: Option<[f64; 3]>,
    pub window: Option<(f64, f64, f64, f64, bool)>,
    pub size: Option<[usize; 3]>,
    pub mode: Mode,
}

type M4 = [[f64; 4]; 4];

fn matmul(a: &M4, b: &M4) -> M4 {
    let mut o = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            o[i][j] = (0..4).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    o
}

/// Inverse of a 4x4 matrix by Gauss-Jordan elimination with partial pivoting.
fn inverse(m: &M4) -> Result<M4> {
    let mut a = *m;
    let mut inv = [[0.0; 4]; 4];
    for (i, row) in inv.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for c in 0..4 {
        let p = (c..4)
            .max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs()))
            .unwrap_or(c);
        if a[p][c].abs() < 1e-12 {
            return Err(Error::config("affine is not invertible"));
        }
        a.swap(c, p);
        inv.swap(c, p);
        let d = a[c][c];
        for j in 0..4 {
            a[c][j] /= d;
            inv[c][j] /= d;
        }
        for r in 0..4 {
            if r != c {
                let f = a[r][c];
                for j in 0..4 {
                    a[r][j] -= f * a[c][j];
                    inv[r][j] -= f * inv[c][j];
                }
            }
        }
    }
    Ok(inv)
}

/// MONAI `Spacing` geometry (`compute_shape_offset`, `scale_extent=False`): the new affine and
/// output shape for voxel size `pixdim`.
pub fn spacing_geometry(
    shape: [usize; 3],
    affine: &M4,
    pixdim: [f64; 3],
) -> Result<(M4, [usize; 3])> {
    let mut new = [[0.0; 4]; 4];
    new[3][3] = 1.0;
    for j in 0..3 {
        let n = (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt();
        let n = if n == 0.0 { 1.0 } else { n };
        for i in 0..3 {
            new[i][j] = affine[i][j] / n * pixdim[j];
        }
    }
    let to_out = matmul(&inverse(&new)?, affine);
    let mut corners = Vec::with_capacity(8);
    for a in [0.0, shape[0] as f64 - 1.0] {
        for b in [0.0, shape[1] as f64 - 1.0] {
            for c in [0.0, shape[2] as f64 - 1.0] {
                corners.push([a, b, c, 1.0]);
            }
        }
    }
    let apply = |m: &M4, v: &[f64; 4]| -> [f64; 4] {
        [0, 1, 2, 3].map(|i| (0..4).map(|k| m[i][k] * v[k]).sum())
    };
    let outs: Vec<[f64; 4]> = corners.iter().map(|c| apply(&to_out, c)).collect();
    let mut out_shape = [0usize; 3];
    for i in 0..3 {
        let (lo, hi) = outs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), o| {
                (l.min(o[i] / o[3]), h.max(o[i] / o[3]))
            });
        out_shape[i] = ((hi - lo) + 1.0).round_ties_even().max(1.0) as usize;
    }
    // the corner nearest the origin in output voxel space becomes the new origin
    let mut offset = None;
    for (ci, o) in outs.iter().enumerate() {
        let smallest = (0..3).all(|i| {
            outs.iter()
                .all(|p| p[i] - o[i] >= -1e-3 * o[i].abs().max(1e-8))
        });
        if smallest {
            let w = apply(affine, &corners[ci]);
            offset = Some([w[0], w[1], w[2]]);
            break;
        }
    }
    let offset = match offset {
        Some(o) => o,
        None => {
            let mut o = [0.0; 3];
            for (i, oi) in o.iter_mut().enumerate() {
                *oi = (0..3)
                    .map(|k| affine[i][k] * shape[k] as f64 / 2.0)
                    .sum::<f64>()
                    + affine[i][3]
                    - (0..3)
                        .map(|k| new[i][k] * out_shape[k] as f64 / 2.0)
                        .sum::<f64>();
            }
            o
        }
    };
    for i in 0..3 {
        new[i][3] = offset[i];
    }
    Ok((new, out_shape))
}

/// Voxel axis -> (world axis, direction) by the dominant component of each normalised affine
/// column, most dominant column first (nibabel's `io_orientation` for non-degenerate affines).
pub fn orientation(affine: &[[f64; 4]; 4]) -> [(usize, bool); 3] {
    let mut cols = [[0.0f64; 3]; 3];
    for (j, col) in cols.iter_mut().enumerate() {
        let n = (0..3)
            .map(|i| affine[i][j] * affine[i][j])
            .sum::<f64>()
            .sqrt();
        let n = if n == 0.0 { 1.0 } else { n };
        for i in 0..3 {
            col[i] = affine[i][j] / n;
        }
    }
    let dominance: Vec<f64> = cols
        .iter()
        .map(|c| c.iter().map(|v| v * v).fold(0.0, f64::max))
        .collect();
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| dominance[b].total_cmp(&dominance[a]));
    let mut used = [false; 3];
    let mut out = [(0usize, true); 3];
    for &j in &order {
        let (mut best, mut bv) = (0usize, -1.0f64);
        for i in 0..3 {
            if !used[i] && cols[j][i].abs() > bv {
                bv = cols[j][i].abs();
                best = i;
            }
        }
        used[best] = true;
        out[j] = (best, cols[j][best] >= 0.0);
    }
    out
}

/// A view of `v` in RAS axis order (flips and a permutation of strides; no copy).
fn ras_view<'a>(v: ArrayView3<'a, f32>, affine: &[[f64; 4]; 4]) -> ArrayView3<'a, f32> {
    let o = orientation(affine);
    let mut view = v;
    for (ax, &(_, positive)) in o.iter().enumerate() {
        if !positive {
            view.invert_axis(Axis(ax));
        }
    }
    // output axis k is the voxel axis pointing along world axis k
    let mut perm = [0usize; 3];
    for (ax, &(world, _)) in o.iter().enumerate() {
        perm[world] = ax;
    }
    view.permuted_axes(perm)
}

/// The affine of the RAS view (as MONAI's `Orientation` updates it): column k is the file axis
/// pointing along world axis k, negated if flipped, with the origin moved to the flipped end.
fn ras_affine(shape: [usize; 3], affine: &M4) -> M4 {
    let o = orientation(affine);
    let mut out = [[0.0; 4]; 4];
    out[3][3] = 1.0;
    for i in 0..3 {
        out[i][3] = affine[i][3];
    }
    for (ax, &(world, positive)) in o.iter().enumerate() {
        let s = if positive { 1.0 } else { -1.0 };
        for i in 0..3 {
            out[i][world] = s * affine[i][ax];
            if !positive {
                out[i][3] += affine[i][ax] * (shape[ax] as f64 - 1.0);
            }
        }
    }
    out
}

/// `(shape, strides, base)` of the RAS view of an F-order `(x, y, z)` volume.
fn ras_layout(
    shape: [usize; 3],
    affine: &[[f64; 4]; 4],
    ras: bool,
) -> ([usize; 3], [isize; 3], isize) {
    let mut strides = [1isize, shape[0] as isize, (shape[0] * shape[1]) as isize];
    let mut base = 0isize;
    if !ras {
        return (shape, strides, base);
    }
    let o = orientation(affine);
    for (ax, &(_, positive)) in o.iter().enumerate() {
        if !positive {
            base += (shape[ax] as isize - 1) * strides[ax];
            strides[ax] = -strides[ax];
        }
    }
    let mut out_shape = [0usize; 3];
    let mut out_strides = [0isize; 3];
    for (ax, &(world, _)) in o.iter().enumerate() {
        out_shape[world] = shape[ax];
        out_strides[world] = strides[ax];
    }
    (out_shape, out_strides, base)
}

macro_rules! sampler {
    ($t:ty, $n:expr, $bytes:expr, $le:expr, $f:expr) => {{
        let b = $bytes;
        move |i: isize| {
            let o = i as usize * $n;
            let mut a = [0u8; $n];
            a.copy_from_slice(&b[o..o + $n]);
            let x = if $le {
                <$t>::from_le_bytes(a)
            } else {
                <$t>::from_be_bytes(a)
            };
            $f(x as f64)
        }
    }};
}

/// Run `$body` with `$get` bound to a monomorphised sampler for the file's datatype.
macro_rules! with_sampler {
    ($dt:expr, $bytes:expr, $le:expr, $value:expr, |$get:ident| $body:expr) => {{
        use nifti::DType as D;
        match $dt {
            D::U8 => {
                let $get = sampler!(u8, 1, $bytes, $le, $value);
                $body
            }
            D::I8 => {
                let $get = sampler!(i8, 1, $bytes, $le, $value);
                $body
            }
            D::U16 => {
                let $get = sampler!(u16, 2, $bytes, $le, $value);
                $body
            }
            D::I16 => {
                let $get = sampler!(i16, 2, $bytes, $le, $value);
                $body
            }
            D::U32 => {
                let $get = sampler!(u32, 4, $bytes, $le, $value);
                $body
            }
            D::I32 => {
                let $get = sampler!(i32, 4, $bytes, $le, $value);
                $body
            }
            D::U64 => {
                let $get = sampler!(u64, 8, $bytes, $le, $value);
                $body
            }
            D::I64 => {
                let $get = sampler!(i64, 8, $bytes, $le, $value);
                $body
            }
            D::F32 => {
                let $get = sampler!(f32, 4, $bytes, $le, $value);
                $body
            }
            D::F64 => {
                let $get = sampler!(f64, 8, $bytes, $le, $value);
                $body
            }
        }
    }};
}

fn one(path: &std::path::Path, p: &Pipeline) -> Result<Array3<f32>> {
    let (h, raw) = nifti::read_raw(path)?;
    let shape = h.shape();
    if shape.len() < 3 || shape[3..].iter().any(|&d| d != 1) {
        return Err(Error::volume(format!(
            "{}: expected a 3D volume, got dims {shape:?}",
            path.display()
        )));
    }
    let scaling = h.scaling()?;
    let (slope, inter) = scaling.unwrap_or((1.0, 0.0));
    let window = p.window;
    // the voxel value decode() then the window give: f32(raw * slope + inter), then windowed
    let value = move |x: f64| -> f32 {
        let v = if scaling.is_some() {
            x * slope + inter
        } else {
            x
        };
        window_value(v as f32, window)
    };
    let dims = [shape[0], shape[1], shape[2]];
    if let Some(pixdim) = p.spacing {
        // MONAI order: Orientation -> Spacing (on raw values) -> window -> Resize
        let (sh, st, base) = ras_layout(dims, &h.best_affine(), p.ras);
        let src_aff = if p.ras {
            ras_affine(dims, &h.best_affine())
        } else {
            h.best_affine()
        };
        let (new_aff, out_shape) = spacing_geometry(sh, &src_aff, pixdim)?;
        let xform = matmul(&inverse(&src_aff)?, &new_aff);
        let raw_value = move |x: f64| -> f32 {
            (if scaling.is_some() {
                x * slope + inter
            } else {
                x
            }) as f32
        };
        let (bytes, le) = (raw.bytes(), h.little_endian);
        let mut spaced = with_sampler!(h.dtype()?, bytes, le, raw_value, |get| {
            affine_resample_strided(get, sh, st, base, &xform, out_shape, Mode::Trilinear)
        })?;
        drop(raw);
        if window.is_some() {
            spaced.par_mapv_inplace(|x| window_value(x, window));
        }
        return match p.size {
            Some(size) => Ok(resize(spaced.insert_axis(Axis(0)).view(), size, p.mode)?
                .index_axis_move(Axis(0), 0)),
            None => Ok(spaced),
        };
    }
    if let Some(size) = p.size {
        // resample straight from the file's bytes through the RAS view: no decoded copy
        let (sh, st, base) = ras_layout(dims, &h.best_affine(), p.ras);
        let (bytes, le) = (raw.bytes(), h.little_endian);
        return with_sampler!(h.dtype()?, bytes, le, value, |get| resize_strided(
            get, sh, st, base, size, p.mode
        ));
    }
    let n: usize = shape.iter().product();
    let data = nifti::decode::<f32>(raw.bytes(), h.dtype()?, h.little_endian, scaling, n);
    drop(raw);
    let mut vol =
        Array3::from_shape_vec(dims.f(), data).map_err(|e| Error::shape(e.to_string()))?;
    if window.is_some() {
        vol.par_mapv_inplace(|x| window_value(x, window));
    }
    let view = if p.ras {
        ras_view(vol.view(), &h.best_affine())
    } else {
        vol.view()
    };
    Ok(view.as_standard_layout().into_owned())
}

/// MONAI's ScaleIntensityRange on one value (as `volume::intensity`, computed in f64).
fn window_value(v: f32, window: Option<(f64, f64, f64, f64, bool)>) -> f32 {
    match window {
        None => v,
        Some((a0, a1, b0, b1, clip)) => super::intensity::window(v as f64, a0, a1, b0, b1, clip),
    }
}

/// Run `p` on every file, `num_threads` files at a time; volumes must share a shape unless
/// `p.size` resizes them. Returns `[B, 1, D, H, W]`.
pub fn load_batch(
    paths: &[std::path::PathBuf],
    p: &Pipeline,
    num_threads: usize,
) -> Result<Array5<f32>> {
    if paths.is_empty() {
        return Err(Error::shape("paths: expected at least one file"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(num_threads.max(1))
        .build()
        .map_err(|e| Error::config(format!("num_threads: {e}")))?;
    let vols: Vec<Result<Array3<f32>>> =
        pool.install(|| paths.par_iter().map(|path| one(path, p)).collect());
    let mut out_vols = Vec::with_capacity(vols.len());
    for v in vols {
        out_vols.push(v?);
    }
    let shape = out_vols[0].dim();
    if let Some((i, v)) = out_vols.iter().enumerate().find(|(_, v)| v.dim() != shape) {
        return Err(Error::shape(format!(
            "{}: shape {:?} differs from the first volume's {:?} (resize to a common size)",
            paths[i].display(),
            v.dim(),
            shape
        )));
    }
    let mut batch = Array5::<f32>::zeros((out_vols.len(), 1, shape.0, shape.1, shape.2));
    batch
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(out_vols.par_iter())
        .for_each(|(mut dst, src)| dst.slice_mut(s![0, .., .., ..]).assign(src));
    Ok(batch)
}
