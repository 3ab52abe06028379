//! Whole-file pipelines in Rust, parallel across files: load (NIfTI) -> reorient to RAS (flips
//! and permutations from the affine) -> intensity window -> resize, written straight into a
//! preallocated batch `[B, 1, D, H, W]`.

use ndarray::{s, Array3, Array5, ArrayView3, Axis, ShapeBuilder};
use rayon::prelude::*;

use super::nifti;
use super::resize::{resize, Mode};
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

fn to_ras(v: ArrayView3<'_, f32>, affine: &[[f64; 4]; 4]) -> Array3<f32> {
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
    view.permuted_axes(perm).as_standard_layout().into_owned()
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
    let n: usize = shape.iter().product();
    let data = nifti::decode::<f32>(&raw, h.dtype()?, h.little_endian, h.scaling()?, n);
    drop(raw);
    let vol = Array3::from_shape_vec((shape[0], shape[1], shape[2]).f(), data)
        .map_err(|e| Error::shape(e.to_string()))?;
    let mut vol = if p.ras {
        to_ras(vol.view(), &h.best_affine())
    } else {
        vol.as_standard_layout().into_owned()
    };
    if let Some((a0, a1, b0, b1, clip)) = p.window {
        let width = a1 - a0;
        let (lo, hi) = if b0 <= b1 { (b0, b1) } else { (b1, b0) };
        vol.par_mapv_inplace(|x| {
            let x = x as f64;
            let mut y = if width == 0.0 {
                x - a0 + b0
            } else {
                (x - a0) / width * (b1 - b0) + b0
            };
            if clip {
                y = y.clamp(lo, hi);
            }
            y as f32
        });
    }
    Ok(vol)
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
    let vols: Vec<Result<Array3<f32>>> = pool.install(|| {
        paths
            .par_iter()
            .map(|path| {
                let v = one(path, p)?;
                match p.size {
                    None => Ok(v),
                    Some(size) => {
                        let v4 = v.insert_axis(Axis(0));
                        let r = resize(v4.view(), size, p.mode)?;
                        Ok(r.index_axis_move(Axis(0), 0))
                    }
                }
            })
            .collect()
    });
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
