//! Whole-file pipelines in Rust, parallel across files: load (NIfTI) -> reorient to RAS (flips
//! and permutations from the affine) -> intensity window -> resize, written straight into a
//! preallocated batch `[B, 1, D, H, W]`.

use ndarray::{s, Array3, Array5, ArrayView3, Axis, ShapeBuilder};
use rayon::prelude::*;

use super::nifti;
use super::resize::{resize_strided, Mode};
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Pipeline {
    pub ras: bool,
    pub window: Option<(f64, f64, f64, f64, bool)>,
    pub size: Option<[usize; 3]>,
    pub mode: Mode,
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

fn one(path: &std::path::Path, p: &Pipeline) -> Result<Array3<f32>> {
    let (h, raw) = nifti::read_raw(path)?;
    let shape = h.shape();
    if shape.len() < 3 || shape[3..].iter().any(|&d| d != 1) {
        return Err(Error::shape(format!(
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
    if let Some(size) = p.size {
        // resample straight from the file's bytes through the RAS view: no decoded copy
        let (sh, st, base) = ras_layout(dims, &h.best_affine(), p.ras);
        let bytes = raw.bytes();
        let le = h.little_endian;
        use nifti::DType as D;
        return match h.dtype()? {
            D::U8 => resize_strided(
                sampler!(u8, 1, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
            D::I8 => resize_strided(
                sampler!(i8, 1, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
            D::U16 => resize_strided(
                sampler!(u16, 2, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
            D::I16 => resize_strided(
                sampler!(i16, 2, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
            D::U32 => resize_strided(
                sampler!(u32, 4, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
            D::I32 => resize_strided(
                sampler!(i32, 4, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
            D::U64 => resize_strided(
                sampler!(u64, 8, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
            D::I64 => resize_strided(
                sampler!(i64, 8, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
            D::F32 => resize_strided(
                sampler!(f32, 4, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
            D::F64 => resize_strided(
                sampler!(f64, 8, bytes, le, value),
                sh,
                st,
                base,
                size,
                p.mode,
            ),
        };
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
        Some((a0, a1, b0, b1, clip)) => {
            let width = a1 - a0;
            let v = v as f64;
            let mut y = if width == 0.0 {
                v - a0 + b0
            } else {
                (v - a0) / width * (b1 - b0) + b0
            };
            if clip {
                let (lo, hi) = if b0 <= b1 { (b0, b1) } else { (b1, b0) };
                y = y.clamp(lo, hi);
            }
            y as f32
        }
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
