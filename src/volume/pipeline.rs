//! Whole-file pipelines in Rust, parallel across files: load (NIfTI straight from its bytes; any
//! other format through `load::load_3d`) -> reorient to any axis codes (flips and permutations
//! from the affine) -> spacing (trilinear or nearest) -> intensity window -> array steps
//! (`steps::Step`: percentiles, normalisation, foreground crop, pads and crops, resize), written
//! into a preallocated batch `[B, 1, D, H, W]`.

use ndarray::{s, Array3, Array5, ArrayView3, Axis, ShapeBuilder};
use rayon::prelude::*;

use super::load::{self, Format, LoadOptions};
use super::nifti;
use super::resample::affine_resample_strided;
use super::resize::{resize, resize_strided, Mode};
use super::steps::{self, Step};
use crate::error::{Error, Result};

/// Output axis i -> (world axis, positive direction): `RAS` is `[(0, true), (1, true), (2, true)]`.
pub type Axcodes = [(usize, bool); 3];

/// RAS+ axis codes.
pub const RAS: Axcodes = [(0, true), (1, true), (2, true)];

/// Parse axis codes such as "RAS", "LPS", "PLI" (MONAI / nibabel letters).
pub fn parse_axcodes(codes: &str) -> Result<Axcodes> {
    let mut out = [(0usize, true); 3];
    let chars: Vec<char> = codes.chars().collect();
    if chars.len() != 3 {
        return Err(Error::config(format!(
            "axcodes: expected 3 letters (e.g. 'RAS'), got {codes:?}"
        )));
    }
    let mut seen = [false; 3];
    for (i, c) in chars.iter().enumerate() {
        let (ax, pos) = match c {
            'R' => (0, true),
            'L' => (0, false),
            'A' => (1, true),
            'P' => (1, false),
            'S' => (2, true),
            'I' => (2, false),
            _ => {
                return Err(Error::config(format!(
                    "axcodes: unknown code {c:?} in {codes:?} (use L/R, P/A, I/S)"
                )))
            }
        };
        if seen[ax] {
            return Err(Error::config(format!(
                "axcodes: {codes:?} names an axis twice"
            )));
        }
        seen[ax] = true;
        out[i] = (ax, pos);
    }
    Ok(out)
}

#[derive(Clone, Debug)]
pub struct Pipeline {
    /// Reorient to these axis codes first (MONAI `Orientation`), or keep the file's axes.
    pub orient: Option<Axcodes>,
    /// Target voxel size in mm (MONAI `Spacing`, border), after the reorientation.
    pub spacing: Option<[f64; 3]>,
    /// Spacing interpolation (trilinear or nearest).
    pub spacing_mode: Mode,
    pub window: Option<(f64, f64, f64, f64, bool)>,
    /// A final Resize straight after the prefix (resampled from the file's bytes).
    pub size: Option<[usize; 3]>,
    pub mode: Mode,
    /// Array steps after the prefix, in order.
    pub post: Vec<Step>,
    /// DICOM series to read from folders holding several.
    pub series_uid: Option<String>,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            orient: None,
            spacing: None,
            spacing_mode: Mode::Trilinear,
            window: None,
            size: None,
            mode: Mode::Trilinear,
            post: Vec::new(),
            series_uid: None,
        }
    }
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

/// For voxel axis j of `affine`: (output axis, flipped) under target axis codes `t`.
fn axis_map(affine: &M4, t: &Axcodes) -> [(usize, bool); 3] {
    let o = orientation(affine);
    let mut m = [(0usize, false); 3];
    for (j, &(world, positive)) in o.iter().enumerate() {
        let i = t.iter().position(|&(w, _)| w == world).unwrap_or(j);
        m[j] = (i, positive != t[i].1);
    }
    m
}

/// A view of `v` in the target axis order (flips and a permutation of strides; no copy).
fn oriented_view<'a>(v: ArrayView3<'a, f32>, affine: &M4, t: &Axcodes) -> ArrayView3<'a, f32> {
    let m = axis_map(affine, t);
    let mut view = v;
    for (ax, &(_, flip)) in m.iter().enumerate() {
        if flip {
            view.invert_axis(Axis(ax));
        }
    }
    // output axis i is the voxel axis j mapped to it
    let mut perm = [0usize; 3];
    for (j, &(i, _)) in m.iter().enumerate() {
        perm[i] = j;
    }
    view.permuted_axes(perm)
}

/// The affine of the oriented view (as MONAI's `Orientation` updates it): column i is the file
/// axis mapped to output axis i, negated if flipped, with the origin moved to the flipped end.
fn oriented_affine(shape: [usize; 3], affine: &M4, t: &Axcodes) -> M4 {
    let m = axis_map(affine, t);
    let mut out = [[0.0; 4]; 4];
    out[3][3] = 1.0;
    for i in 0..3 {
        out[i][3] = affine[i][3];
    }
    for (ax, &(o, flip)) in m.iter().enumerate() {
        let s = if flip { -1.0 } else { 1.0 };
        for i in 0..3 {
            out[i][o] = s * affine[i][ax];
            if flip {
                out[i][3] += affine[i][ax] * (shape[ax] as f64 - 1.0);
            }
        }
    }
    out
}

/// `(shape, strides, base)` of the oriented view of a volume laid out with `strides`.
fn oriented_layout(
    shape: [usize; 3],
    strides_in: [isize; 3],
    affine: &M4,
    orient: Option<&Axcodes>,
) -> ([usize; 3], [isize; 3], isize) {
    let mut strides = strides_in;
    let mut base = 0isize;
    let t = match orient {
        None => return (shape, strides, base),
        Some(t) => t,
    };
    let m = axis_map(affine, t);
    for (ax, &(_, flip)) in m.iter().enumerate() {
        if flip {
            base += (shape[ax] as isize - 1) * strides[ax];
            strides[ax] = -strides[ax];
        }
    }
    let mut out_shape = [0usize; 3];
    let mut out_strides = [0isize; 3];
    for (ax, &(o, _)) in m.iter().enumerate() {
        out_shape[o] = shape[ax];
        out_strides[o] = strides[ax];
    }
    (out_shape, out_strides, base)
}

fn f_strides(shape: [usize; 3]) -> [isize; 3] {
    [1isize, shape[0] as isize, (shape[0] * shape[1]) as isize]
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
    let vol = if load::sniff(path)? == Format::Nifti {
        one_nifti(path, p)?
    } else {
        one_generic(path, p)?
    };
    steps::run(vol, &p.post).map_err(|e| match e {
        Error::Shape(m) => Error::Shape(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Any non-NIfTI format: decoded to float32 once, then the same prefix through strided views.
fn one_generic(path: &std::path::Path, p: &Pipeline) -> Result<Array3<f32>> {
    let opts = LoadOptions {
        series_uid: p.series_uid.clone(),
    };
    let (vol, affine) = load::load_3d(path, &opts)?;
    let (d0, d1, d2) = vol.dim();
    let dims = [d0, d1, d2];
    let st = vol.strides();
    let strides = [st[0], st[1], st[2]];
    let flat = vol
        .as_slice_memory_order()
        .ok_or_else(|| Error::shape("volume is not contiguous"))?;
    let window = p.window;
    let (sh, st, base) = oriented_layout(dims, strides, &affine, p.orient.as_ref());
    if let Some(pixdim) = p.spacing {
        let src_aff = match &p.orient {
            Some(t) => oriented_affine(dims, &affine, t),
            None => affine,
        };
        let (new_aff, out_shape) = spacing_geometry(sh, &src_aff, pixdim)?;
        let xform = matmul(&inverse(&src_aff)?, &new_aff);
        let get = |i: isize| flat.get(i as usize).copied().unwrap_or(0.0);
        let mut spaced =
            affine_resample_strided(get, sh, st, base, &xform, out_shape, p.spacing_mode)?;
        if window.is_some() {
            spaced.par_mapv_inplace(|x| window_value(x, window));
        }
        return match p.size {
            Some(size) => Ok(resize(spaced.insert_axis(Axis(0)).view(), size, p.mode)?
                .index_axis_move(Axis(0), 0)),
            None => Ok(spaced),
        };
    }
    let get = |i: isize| window_value(flat.get(i as usize).copied().unwrap_or(0.0), window);
    if let Some(size) = p.size {
        return resize_strided(get, sh, st, base, size, p.mode);
    }
    let view = match &p.orient {
        Some(t) => oriented_view(vol.view(), &affine, t),
        None => vol.view(),
    };
    let mut out = view.as_standard_layout().into_owned();
    if window.is_some() {
        out.par_mapv_inplace(|x| window_value(x, window));
    }
    Ok(out)
}

fn one_nifti(path: &std::path::Path, p: &Pipeline) -> Result<Array3<f32>> {
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
    let aff = h.best_affine();
    if let Some(pixdim) = p.spacing {
        // MONAI order: Orientation -> Spacing (on raw values) -> window -> Resize
        let (sh, st, base) = oriented_layout(dims, f_strides(dims), &aff, p.orient.as_ref());
        let src_aff = match &p.orient {
            Some(t) => oriented_affine(dims, &aff, t),
            None => aff,
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
        let mode = p.spacing_mode;
        let mut spaced = with_sampler!(h.dtype()?, bytes, le, raw_value, |get| {
            affine_resample_strided(get, sh, st, base, &xform, out_shape, mode)
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
        // resample straight from the file's bytes through the oriented view: no decoded copy
        let (sh, st, base) = oriented_layout(dims, f_strides(dims), &aff, p.orient.as_ref());
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
    let view = match &p.orient {
        Some(t) => oriented_view(vol.view(), &aff, t),
        None => vol.view(),
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
    if let Some((a0, a1, b0, b1, _)) = p.window {
        super::intensity::check_window(a0, a1, b0, b1)?;
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
