//! Whole-file pipelines in Rust, parallel across files: load (NIfTI straight from its bytes; any
//! other format through `load::load_3d`) -> reorient to any axis codes (flips and permutations
//! from the affine) -> spacing (trilinear or nearest) -> intensity window -> array steps
//! (`steps::Step`: percentiles, normalisation, foreground crop, pads and crops, resize), written
//! into a preallocated batch `[B, C, D, H, W]`.
//!
//! An item is one file (C = 1) or several sequences of one study (MRI T2W / ADC / DWI): every
//! sequence after the first is resampled onto the first one's voxel grid (MONAI
//! `ResampleToMatch`, trilinear, border), the prefix runs on each channel, and the array steps
//! see the stacked `[C, D, H, W]` image (as MONAI's transforms on a multi-channel image). The
//! geometry (orientation, spacing grid, grid matching) is `geometry.rs`, shared with the Python
//! transforms.

use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4, Array5, Axis};
use rayon::prelude::*;

use super::geometry::{self, M4};
pub use super::geometry::{parse_axcodes, Axcodes, RAS};
use super::load::{self, Format, LoadOptions};
use super::nifti;
use super::resample::{
    affine_resample_strided, is_diagonal, resample_crop_resize_trilinear,
    resample_diagonal_trilinear,
};
use super::resize::{resize_slice, resize_strided, Mode};
use super::steps::{self, Step};
use crate::error::{Error, Result};

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

/// A volume read through `get(base + i*strides[0] + j*strides[1] + k*strides[2])`.
#[derive(Clone, Copy, Debug)]
struct Layout {
    shape: [usize; 3],
    strides: [isize; 3],
    base: isize,
}

/// The layout and affine of the reoriented view of `l` (flips and a permutation of strides; no
/// copy): `geometry::reorient`, the same computation as `voxlm.transforms.Orientation`.
fn oriented(l: Layout, affine: &M4, orient: Option<&Axcodes>) -> Result<(Layout, M4)> {
    let t = match orient {
        None => return Ok((l, *affine)),
        Some(t) => t,
    };
    let r = geometry::reorient(affine, &l.shape, t)?;
    let mut strides = l.strides;
    let mut base = l.base;
    for (ax, &(_, flip)) in r.ornt.iter().enumerate() {
        if flip {
            base += (l.shape[ax] as isize - 1) * strides[ax];
            strides[ax] = -strides[ax];
        }
    }
    let mut out = Layout {
        shape: [0; 3],
        strides: [0; 3],
        base,
    };
    for (i, &j) in r.perm.iter().enumerate() {
        out.shape[i] = l.shape[j];
        out.strides[i] = strides[j];
    }
    Ok((out, r.affine))
}

fn f_strides(shape: [usize; 3]) -> [isize; 3] {
    [1isize, shape[0] as isize, (shape[0] * shape[1]) as isize]
}

/// Gather the view `l` into a C-order array, mapping each value through `f`.
fn gather<F: Fn(isize) -> f32 + Sync>(get: F, l: Layout) -> Array3<f32> {
    let [d, h, w] = l.shape;
    let [sd, sh, sw] = l.strides;
    let mut out = Array3::<f32>::zeros((d, h, w));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut plane)| {
            let bi = l.base + i as isize * sd;
            for (j, mut row) in plane.axis_iter_mut(Axis(0)).enumerate() {
                let bj = bi + j as isize * sh;
                for (k, v) in row.iter_mut().enumerate() {
                    *v = get(bj + k as isize * sw);
                }
            }
        });
    out
}

/// A channel's voxels as a typed buffer (besides the `get` sampler), for the row kernel of the
/// axis-aligned trilinear spacing resample: values are `f32(x * slope + inter)` (f64), as
/// `get` gives them.
#[derive(Clone, Copy)]
enum Typed<'a> {
    None,
    I16(&'a [i16], Option<(f64, f64)>),
    F32(&'a [f32], Option<(f64, f64)>),
}

#[inline(always)]
fn scaled(x: f64, scaling: Option<(f64, f64)>) -> f32 {
    match scaling {
        Some((s, b)) => (x * s + b) as f32,
        None => x as f32,
    }
}

/// The spacing resample of one channel (then the window): the row kernel on a typed buffer
/// when the grid is axis-aligned and trilinear (bit-identical to the per-tap path), else
/// `affine_resample_strided` through `get`.
fn spacing_resample<F: Fn(isize) -> f32 + Sync>(
    get: F,
    typed: Typed<'_>,
    lo: Layout,
    g: &geometry::SpacingGrid,
    p: &Pipeline,
) -> Result<Array3<f32>> {
    let window = p.window;
    let post = move |x: f32| window_value(x, window);
    if p.spacing_mode == Mode::Trilinear && is_diagonal(&g.xform, g.shape) {
        let (sh, st, b) = (lo.shape, lo.strides, lo.base);
        match typed {
            Typed::I16(d, sc) => {
                let conv = move |x: i16| scaled(x as f64, sc);
                return resample_diagonal_trilinear(d, conv, sh, st, b, &g.xform, g.shape, post);
            }
            Typed::F32(d, sc) => {
                let conv = move |x: f32| scaled(x as f64, sc);
                return resample_diagonal_trilinear(d, conv, sh, st, b, &g.xform, g.shape, post);
            }
            Typed::None => {}
        }
    }
    let mut spaced = affine_resample_strided(
        get,
        lo.shape,
        lo.strides,
        lo.base,
        &g.xform,
        g.shape,
        p.spacing_mode,
    )?;
    if window.is_some() {
        spaced.par_mapv_inplace(post);
    }
    Ok(spaced)
}

/// The leading `CropForeground(margin)` + trilinear `Resize(size)` of `p.post`, when the
/// spacing resample can compute only what they read ([`resample_crop_resize_trilinear`]).
fn crop_resize_head(p: &Pipeline) -> Option<([usize; 3], [usize; 3])> {
    match p.post.as_slice() {
        [Step::CropForeground(m), Step::Resize(size, Mode::Trilinear), ..]
            if p.size.is_none() && p.spacing_mode == Mode::Trilinear =>
        {
            Some((*m, *size))
        }
        _ => None,
    }
}

/// [`spacing_resample`] -> CropForeground -> Resize ([`crop_resize_head`]) on a typed buffer,
/// resampling only the voxels the crop box search and the resize read; None when the grid is
/// not axis-aligned or there is no typed buffer (the caller takes the general path).
fn spacing_crop_resize(
    typed: Typed<'_>,
    lo: Layout,
    g: &geometry::SpacingGrid,
    p: &Pipeline,
    (margin, size): ([usize; 3], [usize; 3]),
) -> Option<Result<Array3<f32>>> {
    if !is_diagonal(&g.xform, g.shape) {
        return None;
    }
    let window = p.window;
    let post = move |x: f32| window_value(x, window);
    // the window is monotone in its input (f64 operations, then a clamp and one rounding)
    let maybe_fg = move |a: f64, b: f64| {
        let f = |v: f64| match window {
            None => v as f32,
            Some((a0, a1, b0, b1, clip)) => super::intensity::window(v, a0, a1, b0, b1, clip),
        };
        !(f(a) <= 0.0 && f(b) <= 0.0)
    };
    let (sh, st, b) = (lo.shape, lo.strides, lo.base);
    let r = match typed {
        Typed::I16(d, sc) => {
            let conv = move |x: i16| scaled(x as f64, sc);
            resample_crop_resize_trilinear(
                d, conv, sh, st, b, &g.xform, g.shape, post, maybe_fg, margin, size,
            )
        }
        Typed::F32(d, sc) => {
            let conv = move |x: f32| scaled(x as f64, sc);
            resample_crop_resize_trilinear(
                d, conv, sh, st, b, &g.xform, g.shape, post, maybe_fg, margin, size,
            )
        }
        Typed::None => return None,
    };
    Some(r.and_then(|v| {
        v.ok_or_else(|| {
            Error::shape("Resize: the volume is empty (CropForeground found no voxel > 0)")
        })
    }))
}

/// The prefix (orientation -> spacing -> window -> a final resize) on one channel read through
/// `get` (decoded values, before the window) with layout `l` and `affine` (`typed`: the same
/// voxels as a typed buffer, or `Typed::None`). MONAI's order:
/// Orientation -> Spacing (on the decoded values) -> window -> Resize. With `fuse_post` (one
/// channel), a leading CropForeground + Resize of `p.post` may be fused into the spacing
/// resample: returns the volume and how many steps of `p.post` it already applied.
fn prefix<F: Fn(isize) -> f32 + Sync>(
    get: F,
    typed: Typed<'_>,
    l: Layout,
    affine: &M4,
    p: &Pipeline,
    fuse_post: bool,
) -> Result<(Array3<f32>, usize)> {
    let window = p.window;
    let (lo, aff_o) = oriented(l, affine, p.orient.as_ref())?;
    if let Some(pixdim) = p.spacing {
        let g = geometry::spacing_grid(lo.shape, &aff_o, pixdim)?;
        if !g.identity {
            if let Some(head) = crop_resize_head(p).filter(|_| fuse_post) {
                if let Some(r) = spacing_crop_resize(typed, lo, &g, p, head) {
                    return Ok((r?, 2));
                }
            }
            let spaced = spacing_resample(get, typed, lo, &g, p)?;
            return match p.size {
                Some(size) => {
                    let flat = spaced
                        .as_slice()
                        .ok_or_else(|| Error::shape("resample: output is not contiguous"))?;
                    let [_, b, c] = g.shape;
                    Ok((
                        resize_slice(
                            flat,
                            g.shape,
                            [(b * c) as isize, c as isize, 1],
                            0,
                            size,
                            p.mode,
                        )?,
                        0,
                    ))
                }
                None => Ok((spaced, 0)),
            };
        }
    }
    let wget = |i: isize| window_value(get(i), window);
    match p.size {
        Some(size) => Ok((
            resize_strided(wget, lo.shape, lo.strides, lo.base, size, p.mode)?,
            0,
        )),
        None => Ok((gather(wget, lo), 0)),
    }
}

/// MONAI's ScaleIntensityRange on one value (as `volume::intensity`, computed in f64).
fn window_value(v: f32, window: Option<(f64, f64, f64, f64, bool)>) -> f32 {
    match window {
        None => v,
        Some((a0, a1, b0, b1, clip)) => super::intensity::window(v as f64, a0, a1, b0, b1, clip),
    }
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

/// The prefix on one NIfTI file, resampled straight from its bytes (no decoded copy); with the
/// number of `p.post` steps it applied (`prefix`'s `fuse_post`).
fn prefix_nifti(path: &Path, p: &Pipeline) -> Result<(Array3<f32>, usize)> {
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
    // the voxel value decode() gives: f32(raw * slope + inter)
    let value = move |x: f64| -> f32 {
        (if scaling.is_some() {
            x * slope + inter
        } else {
            x
        }) as f32
    };
    let dims = [shape[0], shape[1], shape[2]];
    let l = Layout {
        shape: dims,
        strides: f_strides(dims),
        base: 0,
    };
    let aff = h.best_affine();
    let (bytes, le) = (raw.bytes(), h.little_endian);
    let dtype = h.dtype()?;
    let native = le == cfg!(target_endian = "little");
    let typed = match dtype {
        nifti::DType::I16 if native => {
            typed_i16(bytes).map_or(Typed::None, |d| Typed::I16(d, scaling))
        }
        nifti::DType::F32 if native => {
            typed_f32(bytes).map_or(Typed::None, |d| Typed::F32(d, scaling))
        }
        _ => Typed::None,
    };
    let out = with_sampler!(dtype, bytes, le, value, |get| prefix(
        get, typed, l, &aff, p, true
    ));
    super::scratch::give(raw.into_buf());
    out
}

/// `bytes` as native-endian i16 values when they are aligned and a whole number of values.
fn typed_i16(bytes: &[u8]) -> Option<&[i16]> {
    // SAFETY: every bit pattern is a valid i16; `align_to` only yields aligned, in-bounds values
    let (head, mid, tail) = unsafe { bytes.align_to::<i16>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// `bytes` as native-endian f32 values when they are aligned and a whole number of values.
fn typed_f32(bytes: &[u8]) -> Option<&[f32]> {
    // SAFETY: every bit pattern is a valid f32; `align_to` only yields aligned, in-bounds values
    let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
    (head.is_empty() && tail.is_empty()).then_some(mid)
}

/// A decoded float32 volume, its layout and affine.
fn decoded(path: &Path, p: &Pipeline) -> Result<(Array3<f32>, Layout, M4)> {
    let opts = LoadOptions {
        series_uid: p.series_uid.clone(),
    };
    let (vol, affine) = load::load_3d(path, &opts)?;
    let (d0, d1, d2) = vol.dim();
    let st = vol.strides();
    let l = Layout {
        shape: [d0, d1, d2],
        strides: [st[0], st[1], st[2]],
        base: 0,
    };
    Ok((vol, l, affine))
}

fn slice_of(vol: &Array3<f32>) -> Result<&[f32]> {
    vol.as_slice_memory_order()
        .ok_or_else(|| Error::shape("volume is not contiguous"))
}

/// Any non-NIfTI format: decoded to float32 once, then the prefix through strided views; with
/// the number of `p.post` steps it applied.
fn prefix_generic(path: &Path, p: &Pipeline) -> Result<(Array3<f32>, usize)> {
    let (vol, l, affine) = decoded(path, p)?;
    let flat = slice_of(&vol)?;
    prefix(
        |i: isize| flat.get(i as usize).copied().unwrap_or(0.0),
        Typed::F32(flat, None),
        l,
        &affine,
        p,
        true,
    )
}

/// Several sequences of one study as channels on the first one's grid, each through the prefix:
/// `[C, D, H, W]`.
fn prefix_stacked(paths: &[PathBuf], p: &Pipeline) -> Result<Array4<f32>> {
    let (ref_vol, ref_l, ref_aff) = decoded(&paths[0], p)?;
    let mut chans = Vec::with_capacity(paths.len());
    {
        let flat = slice_of(&ref_vol)?;
        chans.push(
            prefix(
                |i: isize| flat.get(i as usize).copied().unwrap_or(0.0),
                Typed::F32(flat, None),
                ref_l,
                &ref_aff,
                p,
                false,
            )?
            .0,
        );
    }
    drop(ref_vol);
    for path in &paths[1..] {
        let (vol, l, aff) = decoded(path, p).map_err(|e| name_file(e, path))?;
        let flat = slice_of(&vol)?;
        let get = |i: isize| flat.get(i as usize).copied().unwrap_or(0.0);
        let (xform, same) = geometry::match_grid(l.shape, &aff, ref_l.shape, &ref_aff)
            .map_err(|e| name_file(e, path))?;
        let chan = if same {
            prefix(get, Typed::F32(flat, None), l, &ref_aff, p, false)?.0
        } else {
            // MONAI ResampleToMatch (bilinear = trilinear in 3D, border padding)
            let m = affine_resample_strided(
                get,
                l.shape,
                l.strides,
                l.base,
                &xform,
                ref_l.shape,
                Mode::Trilinear,
            )?;
            let mflat = m
                .as_slice()
                .ok_or_else(|| Error::shape("resample: output is not contiguous"))?;
            let [_, b, c] = ref_l.shape;
            let ml = Layout {
                shape: ref_l.shape,
                strides: [(b * c) as isize, c as isize, 1],
                base: 0,
            };
            prefix(
                |i: isize| mflat[i as usize],
                Typed::F32(mflat, None),
                ml,
                &ref_aff,
                p,
                false,
            )?
            .0
        };
        chans.push(chan);
    }
    let dim = chans[0].dim();
    let mut out = Array4::<f32>::zeros((chans.len(), dim.0, dim.1, dim.2));
    for (mut dst, src) in out.axis_iter_mut(Axis(0)).zip(&chans) {
        if src.dim() != dim {
            return Err(Error::shape(format!(
                "sequences: a channel of shape {:?} differs from the first's {dim:?}",
                src.dim()
            )));
        }
        dst.assign(src);
    }
    Ok(out)
}

fn name_file(e: Error, path: &Path) -> Error {
    let name = path.display().to_string();
    match e {
        Error::Shape(m) if !m.starts_with(&name) => Error::Shape(format!("{name}: {m}")),
        Error::Config(m) if !m.starts_with(&name) => Error::Config(format!("{name}: {m}")),
        other => other,
    }
}

/// One item (a file, or the sequences of one study) through the whole pipeline.
fn one(paths: &[PathBuf], p: &Pipeline) -> Result<Array4<f32>> {
    let first = paths
        .first()
        .ok_or_else(|| Error::shape("an item: expected at least one file, got none"))?;
    let (vol, done) = if paths.len() > 1 {
        (prefix_stacked(paths, p)?, 0)
    } else {
        let (v, done) = if load::sniff(first)? == Format::Nifti {
            prefix_nifti(first, p)
        } else {
            prefix_generic(first, p)
        }
        .map_err(|e| name_file(e, first))?;
        (v.insert_axis(Axis(0)), done)
    };
    let rest = p.post.get(done..).unwrap_or(&[]);
    steps::run(vol, rest).map_err(|e| name_file(e, first))
}

/// Pools of this process by thread count, kept between calls: a DataLoader worker calls once
/// per item, and a pool built per call started (and ended) a thread each time, losing that
/// thread's kept buffers (`scratch`). Rebuilt after a fork (the parent's pools' threads do not
/// exist in the child; those are leaked, never joined).
#[allow(clippy::type_complexity)]
static POOLS: std::sync::Mutex<Vec<(u32, usize, std::sync::Arc<rayon::ThreadPool>)>> =
    std::sync::Mutex::new(Vec::new());

/// Most pools kept per process (the oldest is dropped beyond it).
const MAX_POOLS: usize = 4;

fn pool_of(n: usize) -> Result<std::sync::Arc<rayon::ThreadPool>> {
    let pid = std::process::id();
    let mut pools = match POOLS.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if pools.iter().any(|e| e.0 != pid) {
        for e in std::mem::take(&mut *pools) {
            if e.0 == pid {
                pools.push(e);
            } else {
                std::mem::forget(e); // its threads belong to the parent process
            }
        }
    }
    if let Some(e) = pools.iter().find(|e| e.1 == n) {
        return Ok(e.2.clone());
    }
    let pool = std::sync::Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("voxlm-vol-{i}"))
            .build()
            .map_err(|e| Error::config(format!("num_threads: {e}")))?,
    );
    if pools.len() >= MAX_POOLS {
        pools.remove(0);
    }
    pools.push((pid, n, pool.clone()));
    Ok(pool)
}

/// Run `p` on every item (one file, or several sequences stacked as channels), `num_threads`
/// items at a time; items must end up the same shape unless `p.size` resizes them. Returns
/// `[B, C, D, H, W]`.
pub fn load_batch_items(
    items: &[Vec<PathBuf>],
    p: &Pipeline,
    num_threads: usize,
) -> Result<Array5<f32>> {
    if items.is_empty() {
        return Err(Error::shape("paths: expected at least one file"));
    }
    if let Some((a0, a1, b0, b1, _)) = p.window {
        super::intensity::check_window(a0, a1, b0, b1)?;
    }
    if let Some(s) = p.spacing {
        if s.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::config(format!(
                "spacing: expected positive voxel sizes, got {s:?}"
            )));
        }
    }
    let pool = pool_of(num_threads.max(1))?;
    let vols: Vec<Result<Array4<f32>>> = pool.install(|| {
        items
            .par_iter()
            .map(|it| super::scratch::scope(|| one(it, p)))
            .collect()
    });
    let mut out_vols = Vec::with_capacity(vols.len());
    for v in vols {
        out_vols.push(v?);
    }
    let shape = out_vols[0].dim();
    if let Some((i, v)) = out_vols.iter().enumerate().find(|(_, v)| v.dim() != shape) {
        return Err(Error::shape(format!(
            "{}: shape {:?} differs from the first item's {:?} (resize to a common size; \
             give every item the same sequences)",
            items[i]
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            v.dim(),
            shape
        )));
    }
    if out_vols.len() == 1 {
        if let Some(v) = out_vols.pop() {
            return Ok(v.insert_axis(Axis(0)));
        }
    }
    let mut batch = Array5::<f32>::zeros((out_vols.len(), shape.0, shape.1, shape.2, shape.3));
    batch
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(out_vols.par_iter())
        .for_each(|(mut dst, src)| dst.assign(src));
    Ok(batch)
}

/// [`load_batch_items`] with one file per item: `[B, 1, D, H, W]`.
pub fn load_batch(paths: &[PathBuf], p: &Pipeline, num_threads: usize) -> Result<Array5<f32>> {
    let items: Vec<Vec<PathBuf>> = paths.iter().map(|p| vec![p.clone()]).collect();
    load_batch_items(&items, p, num_threads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::resample::affine_resample;
    use crate::volume::resize::resize;
    use ndarray::ShapeBuilder;

    /// A fresh folder under the system temp dir, removed on drop.
    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let d = std::env::temp_dir().join(format!(
                "voxlm-pipeline-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).map_err(|e| e.to_string()).ok();
            Tmp(d)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn diag(d: [f64; 3], t: [f64; 3]) -> M4 {
        let mut a = geometry::IDENTITY;
        for i in 0..3 {
            a[i][i] = d[i];
            a[i][3] = t[i];
        }
        a
    }

    /// A deterministic [x, y, z] volume with distinct values.
    fn volume(shape: [usize; 3]) -> Array3<f32> {
        Array3::from_shape_fn((shape[0], shape[1], shape[2]), |(i, j, k)| {
            (i * 100 + j * 10 + k) as f32 + 0.25 * ((i + 2 * j + 3 * k) % 5) as f32
        })
    }

    fn write(dir: &Path, name: &str, v: &Array3<f32>, aff: &M4) -> Result<PathBuf> {
        let path = dir.join(name);
        let (a, b, c) = v.dim();
        // Fortran order: x fastest
        let f = v.t().as_standard_layout().into_owned();
        let bytes: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
        let zooms: Vec<f64> = (0..3)
            .map(|j| (0..3).map(|i| aff[i][j] * aff[i][j]).sum::<f64>().sqrt())
            .collect();
        nifti::write_nifti1(&path, &[a, b, c], bytes, nifti::DType::F32, aff, &zooms, 1)?;
        Ok(path)
    }

    fn close(a: &Array3<f32>, b: &Array3<f32>, tol: f32) -> bool {
        a.dim() == b.dim() && a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() <= tol)
    }

    fn first(b: &Array5<f32>, c: usize) -> Array3<f32> {
        b.slice(ndarray::s![0, c, .., .., ..]).to_owned()
    }

    #[test]
    fn plain_load_keeps_the_file_axes_and_values() -> Result<()> {
        let t = Tmp::new("plain");
        let v = volume([4, 5, 6]);
        let path = write(&t.0, "a.nii.gz", &v, &diag([1.0, 1.0, 1.0], [0.0; 3]))?;
        let b = load_batch(&[path], &Pipeline::default(), 1)?;
        assert_eq!(b.dim(), (1, 1, 4, 5, 6));
        assert_eq!(first(&b, 0), v);
        Ok(())
    }

    #[test]
    fn orientation_flips_and_permutes_as_the_affine_says() -> Result<()> {
        let t = Tmp::new("orient");
        let v = volume([4, 5, 6]);
        // LPS: x and y point to -R and -A; RAS flips them
        let path = write(
            &t.0,
            "lps.nii",
            &v,
            &diag([-1.0, -1.0, 2.0], [5.0, 6.0, 7.0]),
        )?;
        let p = Pipeline {
            orient: Some(RAS),
            ..Pipeline::default()
        };
        let out = first(&load_batch(std::slice::from_ref(&path), &p, 2)?, 0);
        let mut want = v.clone();
        want.invert_axis(Axis(0));
        want.invert_axis(Axis(1));
        assert_eq!(out, want);
        // "SPL": output axis 0 = z, 1 = -y (keeps the file's P), 2 = -x (L)
        let p = Pipeline {
            orient: Some(parse_axcodes("SPL")?),
            ..Pipeline::default()
        };
        let out = first(&load_batch(&[path], &p, 1)?, 0);
        assert_eq!(out, v.view().permuted_axes([2, 1, 0]));
        Ok(())
    }

    #[test]
    fn window_and_resize_equal_the_array_functions() -> Result<()> {
        let t = Tmp::new("resize");
        let v = volume([6, 7, 5]);
        let path = write(&t.0, "a.nii", &v, &diag([1.0, 1.0, 1.0], [0.0; 3]))?;
        let window = Some((0.0, 400.0, 0.0, 1.0, true));
        let p = Pipeline {
            window,
            size: Some([3, 9, 4]),
            ..Pipeline::default()
        };
        let out = first(&load_batch(&[path], &p, 1)?, 0);
        let w = v.mapv(|x| window_value(x, window));
        let want = resize(w.insert_axis(Axis(0)).view(), [3, 9, 4], Mode::Trilinear)?
            .index_axis_move(Axis(0), 0);
        // the fused path windows each tap before interpolating; the same products in f32
        assert!(close(&out, &want, 1e-6));
        Ok(())
    }

    #[test]
    fn spacing_equals_the_affine_resample_of_its_grid() -> Result<()> {
        let t = Tmp::new("spacing");
        let v = volume([8, 6, 5]);
        let aff = diag([0.8, 1.0, 2.0], [1.0, -2.0, 3.0]);
        let path = write(&t.0, "a.nii.gz", &v, &aff)?;
        for mode in [Mode::Trilinear, Mode::Nearest] {
            let p = Pipeline {
                spacing: Some([1.5, 1.5, 1.5]),
                spacing_mode: mode,
                ..Pipeline::default()
            };
            let out = first(&load_batch(std::slice::from_ref(&path), &p, 1)?, 0);
            let g = geometry::spacing_grid([8, 6, 5], &aff, [1.5, 1.5, 1.5])?;
            let want = affine_resample(v.view().insert_axis(Axis(0)), &g.xform, g.shape, mode)?
                .index_axis_move(Axis(0), 0);
            assert_eq!(out.dim(), (g.shape[0], g.shape[1], g.shape[2]));
            assert!(close(&out, &want, 0.0));
        }
        // the file's own spacing: MONAI resamples nothing, neither does the pipeline
        let p = Pipeline {
            spacing: Some([0.8, 1.0, 2.0]),
            ..Pipeline::default()
        };
        assert_eq!(first(&load_batch(&[path], &p, 1)?, 0), v);
        Ok(())
    }

    #[test]
    fn nifti_from_bytes_equals_the_decoded_path() -> Result<()> {
        let t = Tmp::new("bytes");
        let v = volume([7, 5, 6]);
        let aff = diag([-0.9, 1.1, 1.7], [3.0, 1.0, -2.0]);
        let path = write(&t.0, "a.nii.gz", &v, &aff)?;
        let chains = [
            Pipeline {
                orient: Some(RAS),
                spacing: Some([1.3, 1.0, 1.2]),
                window: Some((10.0, 500.0, 0.0, 1.0, true)),
                size: Some([4, 4, 4]),
                ..Pipeline::default()
            },
            Pipeline {
                orient: Some(parse_axcodes("LPI")?),
                size: Some([5, 3, 8]),
                mode: Mode::Nearest,
                ..Pipeline::default()
            },
            Pipeline {
                orient: Some(parse_axcodes("ASR")?),
                ..Pipeline::default()
            },
        ];
        for p in &chains {
            let a = prefix_nifti(&path, p)?.0;
            let b = prefix_generic(&path, p)?.0;
            assert!(close(&a, &b, 0.0), "{p:?}");
        }
        Ok(())
    }

    #[test]
    fn crop_resize_fused_into_spacing_is_bit_identical() -> Result<()> {
        let t = Tmp::new("cropfuse");
        // air (-1000) around two separated bodies (an empty band between them inside the box),
        // values varied so every interpolation matters
        let (x, y, z) = (23usize, 19usize, 11usize);
        let v = Array3::from_shape_fn((x, y, z), |(i, j, k)| {
            let a = (i as f32 - 9.0).powi(2) / 30.0 + (j as f32 - 5.0).powi(2) / 12.0 < 1.0;
            let b = (i as f32 - 12.0).powi(2) / 40.0 + (j as f32 - 14.0).powi(2) / 6.0 < 1.0;
            let n = ((i * 7 + j * 13 + k * 5) % 17) as f32 * 9.0;
            if (a || b) && k > 1 {
                40.0 + n
            } else {
                -1000.0 + n
            }
        });
        let axis = diag([-0.7, -0.7, 1.25], [3.0, 1.0, -2.0]);
        let mut oblique = axis;
        let (c, s) = (0.2f64.cos(), 0.2f64.sin());
        for col in 0..3 {
            let (a0, a1) = (axis[0][col], axis[1][col]);
            oblique[0][col] = c * a0 - s * a1;
            oblique[1][col] = s * a0 + c * a1;
        }
        let mut cases = 0;
        for (name, aff) in [("axis.nii.gz", axis), ("oblique.nii", oblique)] {
            let path = write(&t.0, name, &v, &aff)?;
            for (orient, window, margin, size) in [
                (
                    Some(RAS),
                    Some((-160.0, 240.0, 0.0, 1.0, true)),
                    [0, 0, 0],
                    [4, 16, 16],
                ),
                (
                    Some(RAS),
                    Some((-160.0, 240.0, 0.0, 1.0, true)),
                    [1, 0, 2],
                    [9, 5, 30],
                ),
                (
                    Some(parse_axcodes("SPL")?),
                    Some((-500.0, 500.0, -1.0, 1.0, false)),
                    [0; 3],
                    [6, 7, 3],
                ),
                (None, None, [0, 3, 0], [5, 5, 5]),
            ] {
                let post = vec![
                    Step::CropForeground(margin),
                    Step::Resize(size, Mode::Trilinear),
                    Step::Normalize(false),
                ];
                let fused = Pipeline {
                    orient,
                    spacing: Some([1.5, 1.1, 1.5]),
                    window,
                    post: post.clone(),
                    ..Pipeline::default()
                };
                let plain = Pipeline {
                    post: vec![],
                    ..fused.clone()
                };
                let a = load_batch(std::slice::from_ref(&path), &fused, 1)?;
                let full = load_batch(std::slice::from_ref(&path), &plain, 2)?;
                let want = steps::run(full.index_axis_move(Axis(0), 0), &post)?;
                assert_eq!(a.index_axis(Axis(0), 0), want, "{name} {orient:?} {size:?}");
                // the fused path ran (two steps consumed)
                assert_eq!(prefix_nifti(&path, &fused)?.1, 2);
                cases += 1;
            }
            // all air: the error of the unfused chain
            let none = Pipeline {
                spacing: Some([1.5, 1.5, 1.5]),
                window: Some((2000.0, 3000.0, 0.0, 1.0, true)),
                post: vec![
                    Step::CropForeground([0; 3]),
                    Step::Resize([2, 2, 2], Mode::Trilinear),
                ],
                ..Pipeline::default()
            };
            assert!(matches!(
                load_batch(&[path], &none, 1),
                Err(Error::Shape(_))
            ));
        }
        assert_eq!(cases, 8);
        Ok(())
    }

    #[test]
    fn sequences_are_resampled_onto_the_first_grid_and_stacked() -> Result<()> {
        let t = Tmp::new("stack");
        let t2 = volume([8, 8, 4]);
        let t2_aff = diag([0.5, 0.5, 3.0], [10.0, 20.0, 30.0]);
        // a coarser, shifted ADC grid over the same region
        let adc = volume([4, 4, 4]).mapv(|x| 2.0 * x);
        let adc_aff = diag([1.0, 1.0, 3.0], [10.25, 20.125, 30.0]);
        let a = write(&t.0, "t2.nii.gz", &t2, &t2_aff)?;
        let b = write(&t.0, "adc.nii.gz", &adc, &adc_aff)?;
        let same = write(&t.0, "same.nii", &t2.mapv(|x| -x), &t2_aff)?;
        let out = load_batch_items(
            &[vec![a.clone(), b.clone(), same.clone()]],
            &Pipeline::default(),
            2,
        )?;
        assert_eq!(out.dim(), (1, 3, 8, 8, 4));
        assert_eq!(first(&out, 0), t2);
        let (xform, identity) = geometry::match_grid([4, 4, 4], &adc_aff, [8, 8, 4], &t2_aff)?;
        assert!(!identity);
        let want = affine_resample(
            adc.view().insert_axis(Axis(0)),
            &xform,
            [8, 8, 4],
            Mode::Trilinear,
        )?
        .index_axis_move(Axis(0), 0);
        assert!(close(&first(&out, 1), &want, 0.0));
        assert_eq!(first(&out, 2), t2.mapv(|x| -x));
        // the chain then sees the stacked channels: each channel the same geometry, the
        // normalisation over both channels together
        let p = Pipeline {
            orient: Some(parse_axcodes("LPS")?),
            post: vec![Step::Normalize(false)],
            ..Pipeline::default()
        };
        let two = load_batch_items(&[vec![a.clone(), b.clone()]], &p, 1)?;
        let mut raw = Array4::<f32>::zeros((2, 8, 8, 4));
        raw.slice_mut(ndarray::s![0, .., .., ..]).assign(&t2);
        raw.slice_mut(ndarray::s![1, .., .., ..]).assign(&want);
        raw.invert_axis(Axis(1));
        raw.invert_axis(Axis(2));
        let want2 = steps::run(
            raw.as_standard_layout().into_owned(),
            &[Step::Normalize(false)],
        )?;
        assert!(two
            .index_axis(Axis(0), 0)
            .iter()
            .zip(want2.iter())
            .all(|(x, y)| (x - y).abs() <= 1e-6));
        // items of a batch need the same number of channels
        let r = load_batch_items(&[vec![a.clone(), b], vec![a]], &Pipeline::default(), 1);
        assert!(matches!(r, Err(Error::Shape(_))));
        Ok(())
    }

    #[test]
    fn bad_inputs_are_named_errors() -> Result<()> {
        let t = Tmp::new("bad");
        let p = Pipeline::default();
        assert!(matches!(load_batch(&[], &p, 1), Err(Error::Shape(_))));
        assert!(matches!(
            load_batch_items(&[vec![]], &p, 1),
            Err(Error::Shape(_))
        ));
        let missing = t.0.join("missing.nii");
        assert!(matches!(
            load_batch(&[missing], &p, 1),
            Err(Error::Io { .. })
        ));
        let a = write(&t.0, "a.nii", &volume([4, 4, 4]), &geometry::IDENTITY)?;
        let b = write(&t.0, "b.nii", &volume([4, 5, 4]), &geometry::IDENTITY)?;
        match load_batch(&[a.clone(), b], &p, 1) {
            Err(Error::Shape(m)) => assert!(m.contains("b.nii"), "{m}"),
            other => panic!("expected a shape error, got {other:?}"),
        }
        let nan = Pipeline {
            window: Some((f64::NAN, 1.0, 0.0, 1.0, false)),
            ..Pipeline::default()
        };
        assert!(matches!(
            load_batch(std::slice::from_ref(&a), &nan, 1),
            Err(Error::Config(_))
        ));
        let neg = Pipeline {
            spacing: Some([1.0, -1.0, 1.0]),
            ..Pipeline::default()
        };
        assert!(matches!(
            load_batch(std::slice::from_ref(&a), &neg, 1),
            Err(Error::Config(_))
        ));
        // a 4D file
        let path4 = t.0.join("four.nii");
        let bytes: Vec<u8> = (0..2 * 2 * 2 * 3)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        nifti::write_nifti1(
            &path4,
            &[2, 2, 2, 3],
            bytes,
            nifti::DType::F32,
            &geometry::IDENTITY,
            &[1.0; 4],
            0,
        )?;
        match load_batch(&[path4], &p, 1) {
            Err(Error::VolumeFormat(m)) => assert!(m.contains("four.nii"), "{m}"),
            other => panic!("expected a format error, got {other:?}"),
        }
        // a file that is not an image
        let junk = t.0.join("junk.bin");
        std::fs::write(&junk, b"hello world").map_err(|e| Error::io("junk", e))?;
        assert!(matches!(
            load_batch(&[junk], &p, 1),
            Err(Error::VolumeFormat(_))
        ));
        Ok(())
    }

    #[test]
    fn fortran_layout_helper() {
        let v = volume([3, 4, 5]);
        let f = Array3::from_shape_vec(
            (3, 4, 5).f(),
            v.t().as_standard_layout().iter().copied().collect(),
        )
        .map(|a| a == v)
        .unwrap_or(false);
        assert!(f);
        assert_eq!(f_strides([3, 4, 5]), [1, 3, 12]);
    }
}
