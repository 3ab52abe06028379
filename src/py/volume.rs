//! `voxlm._core` volume functions: numpy in (borrowed, no copy), numpy out (moved, no copy).

use numpy::{PyArrayDescrMethods, PyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::bridge;
use crate::error::Error;
use crate::volume::intensity::{self, Voxel};

fn scale_typed<'py, T: Voxel + numpy::Element>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    window: (f64, f64, f64, f64),
    clip: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let arr = bridge::array_view::<T>(x, "img")?;
    let view = arr.as_array();
    let (a0, a1, b0, b1) = window;
    let out = crate::py::par(py, || {
        intensity::scale_intensity_range(view, a0, a1, b0, b1, clip)
    })?;
    Ok(bridge::array_to_py(py, out))
}

/// MONAI `ScaleIntensityRange` on a numpy array of any integer or float dtype -> float32.
#[pyfunction]
#[pyo3(signature = (img, a_min, a_max, b_min=0.0, b_max=1.0, clip=false))]
pub fn scale_intensity_range<'py>(
    py: Python<'py>,
    img: &Bound<'py, PyAny>,
    a_min: f64,
    a_max: f64,
    b_min: f64,
    b_max: f64,
    clip: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let w = (a_min, a_max, b_min, b_max);
    let untyped = img.cast::<numpy::PyUntypedArray>().map_err(|_| {
        Error::Type(format!(
            "img: expected a numpy array, got {}",
            img.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let dt = untyped.dtype();
    macro_rules! dispatch {
        ($($t:ty),*) => {
            $(if dt.is_equiv_to(&numpy::dtype::<$t>(py)) { return scale_typed::<$t>(py, img, w, clip); })*
        };
    }
    dispatch!(f32, f64, i16, u8, i8, u16, i32, u32, i64);
    Err(Error::dtype(format!(
        "img: expected an integer or float numpy array, got dtype {}",
        dt.str().map(|s| s.to_string()).unwrap_or_default()
    ))
    .into())
}

fn header_dict<'py>(
    py: Python<'py>,
    h: &crate::volume::nifti::Header,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    let d = pyo3::types::PyDict::new(py);
    d.set_item("nifti_version", h.version)?;
    d.set_item("little_endian", h.little_endian)?;
    d.set_item("pair", h.pair)?;
    d.set_item("dim", h.dim.to_vec())?;
    d.set_item("datatype", h.dtype()?.name())?;
    d.set_item("pixdim", h.pixdim.to_vec())?;
    d.set_item("vox_offset", h.vox_offset)?;
    d.set_item("scl_slope", h.scl_slope)?;
    d.set_item("scl_inter", h.scl_inter)?;
    d.set_item("qform_code", h.qform_code)?;
    d.set_item("sform_code", h.sform_code)?;
    d.set_item("quatern", h.quatern.to_vec())?;
    d.set_item("qoffset", h.qoffset.to_vec())?;
    d.set_item(
        "srow",
        h.srow.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
    )?;
    d.set_item("xyzt_units", h.xyzt_units)?;
    d.set_item("intent_code", h.intent_code)?;
    d.set_item("descrip", &h.descrip)?;
    d.set_item("cal_min", h.cal_min)?;
    d.set_item("cal_max", h.cal_max)?;
    Ok(d)
}

fn affine_array(py: Python<'_>, a: [[f64; 4]; 4]) -> PyResult<Bound<'_, numpy::PyArrayDyn<f64>>> {
    let flat: Vec<f64> = a.iter().flatten().copied().collect();
    let arr =
        ndarray::Array2::from_shape_vec((4, 4), flat).map_err(|e| Error::shape(e.to_string()))?;
    Ok(bridge::array_to_py(py, arr))
}

/// `(data, affine, header)` as returned to Python.
type Loaded<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, numpy::PyArrayDyn<f64>>,
    Bound<'py, pyo3::types::PyDict>,
);

/// Read a NIfTI-1/2 file: `(data [x, y, z, ...] Fortran order, affine 4x4, header dict)`.
/// `dtype`: "float32" or "float64" (nibabel's `get_fdata` values; float32 rounds them once).
#[pyfunction]
#[pyo3(signature = (path, dtype="float32"))]
pub fn load_nifti<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    dtype: &str,
) -> PyResult<Loaded<'py>> {
    use crate::volume::nifti;
    use ndarray::ShapeBuilder;
    let want64 = match dtype {
        "float32" => false,
        "float64" => true,
        other => {
            return Err(Error::dtype(format!(
                "dtype: expected 'float32' or 'float64', got '{other}'"
            ))
            .into())
        }
    };
    let p2 = path.clone();
    let (h, raw) = crate::py::par(py, move || nifti::read_raw(&p2))?;
    let shape = h.shape();
    let n: usize = shape.iter().product();
    let (dt, le, sc) = (h.dtype()?, h.little_endian, h.scaling()?);
    let data: Bound<'py, PyAny> = if want64 {
        let v = crate::py::par(py, || nifti::decode::<f64>(raw.bytes(), dt, le, sc, n));
        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape).f(), v)
            .map_err(|e| Error::shape(e.to_string()))?;
        bridge::array_to_py(py, a).into_any()
    } else {
        let v = crate::py::par(py, || nifti::decode::<f32>(raw.bytes(), dt, le, sc, n));
        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape).f(), v)
            .map_err(|e| Error::shape(e.to_string()))?;
        bridge::array_to_py(py, a).into_any()
    };
    Ok((
        data,
        affine_array(py, h.best_affine())?,
        header_dict(py, &h)?,
    ))
}

fn fortran_bytes<T: numpy::Element + Copy>(
    a: &numpy::PyReadonlyArrayDyn<'_, T>,
    to_le: impl Fn(T) -> Vec<u8>,
) -> Vec<u8> {
    // C-order traversal of the reversed axes visits x fastest: NIfTI's Fortran order
    a.as_array()
        .reversed_axes()
        .iter()
        .flat_map(|&v| to_le(v))
        .collect()
}

/// Write a NIfTI-1 file (`.nii` or `.nii.gz`); the affine goes to the sform (code 2).
#[pyfunction]
#[pyo3(signature = (path, data, affine, zooms, compress_level=1))]
pub fn save_nifti(
    py: Python<'_>,
    path: std::path::PathBuf,
    data: &Bound<'_, PyAny>,
    affine: Vec<Vec<f64>>,
    zooms: Vec<f64>,
    compress_level: u32,
) -> PyResult<()> {
    use crate::volume::nifti::{self, DType};
    if affine.len() != 4 || affine.iter().any(|r| r.len() != 4) {
        return Err(Error::shape("affine: expected a 4x4 matrix").into());
    }
    let mut aff = [[0.0; 4]; 4];
    for (i, r) in affine.iter().enumerate() {
        aff[i].copy_from_slice(r);
    }
    let untyped = data
        .cast::<numpy::PyUntypedArray>()
        .map_err(|_| Error::Type("data: expected a numpy array".into()))?;
    let shape = untyped.shape().to_vec();
    let dt = untyped.dtype();
    macro_rules! enc {
        ($($t:ty => $d:expr),*) => {{
            $(if dt.is_equiv_to(&numpy::dtype::<$t>(py)) {
                let a = bridge::array_view::<$t>(data, "data")?;
                (fortran_bytes(&a, |v: $t| v.to_le_bytes().to_vec()), $d)
            } else)* {
                return Err(Error::dtype(format!("data: cannot store dtype {} in NIfTI", dt.str().map(|s| s.to_string()).unwrap_or_default())).into());
            }
        }};
    }
    let (bytes, code) = enc!(f32 => DType::F32, f64 => DType::F64, i16 => DType::I16, u8 => DType::U8, i8 => DType::I8,
        u16 => DType::U16, i32 => DType::I32, u32 => DType::U32, i64 => DType::I64, u64 => DType::U64);
    crate::py::par(py, move || {
        nifti::write_nifti1(
            &path,
            &shape,
            bytes,
            code,
            &aff,
            &zooms,
            compress_level.min(9),
        )
    })?;
    Ok(())
}

/// Resize a float32 `[C, D, H, W]` array (any strides) like `F.interpolate(align_corners=False)`.
#[pyfunction]
pub fn resize<'py>(
    py: Python<'py>,
    img: &Bound<'py, PyAny>,
    size: [usize; 3],
    mode: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    use crate::volume::resize::{self as rz, Mode};
    let m = Mode::parse(mode)?;
    let a = bridge::array_view::<f32>(img, "img")?;
    let v = a.as_array();
    let v4 = v.into_dimensionality::<ndarray::Ix4>().map_err(|_| {
        Error::shape(format!(
            "img: expected a 4-d [C, D, H, W] array, got shape {:?}",
            a.shape()
        ))
    })?;
    let out = crate::py::par(py, || rz::resize(v4, size, m))?;
    Ok(bridge::array_to_py(py, out))
}

fn parse_step(name: &str, v: &[f64]) -> Result<crate::volume::steps::Step, Error> {
    use crate::volume::resize::Mode;
    use crate::volume::steps::Step;
    let need = |n: usize| -> Result<(), Error> {
        if v.len() == n {
            Ok(())
        } else {
            Err(Error::config(format!(
                "pipeline step {name:?}: expected {n} parameters, got {}",
                v.len()
            )))
        }
    };
    let size3 = |k: usize| -> Result<[i64; 3], Error> {
        let mut o = [0i64; 3];
        for i in 0..3 {
            let x = v[k + i];
            if !(x.fract() == 0.0 && (x == -1.0 || (1.0..1e7).contains(&x))) {
                return Err(Error::config(format!(
                    "pipeline step {name:?}: sizes must be positive integers or -1, got {v:?}"
                )));
            }
            o[i] = x as i64;
        }
        Ok(o)
    };
    Ok(match name {
        "window" => {
            need(5)?;
            Step::Window(v[0], v[1], v[2], v[3], v[4] != 0.0)
        }
        "percentiles" => {
            need(5)?;
            Step::Percentiles(v[0], v[1], v[2], v[3], v[4] != 0.0)
        }
        "normalize" => {
            need(1)?;
            Step::Normalize(v[0] != 0.0)
        }
        "crop_foreground" => {
            need(3)?;
            if v.iter()
                .any(|m| !(m.fract() == 0.0 && (0.0..1e7).contains(m)))
            {
                return Err(Error::config(format!(
                    "crop_foreground: margins must be non-negative integers, got {v:?}"
                )));
            }
            Step::CropForeground([v[0] as usize, v[1] as usize, v[2] as usize])
        }
        "pad" => {
            need(5)?;
            Step::Pad(size3(0)?, v[3] != 0.0, v[4] as f32)
        }
        "center_crop" => {
            need(3)?;
            Step::CenterCrop(size3(0)?)
        }
        "pad_or_crop" => {
            need(4)?;
            Step::PadOrCrop(size3(0)?, v[3] as f32)
        }
        "resize" => {
            need(4)?;
            let s = size3(0)?;
            if s.iter().any(|&x| x < 1) {
                return Err(Error::config("resize: sizes must be positive"));
            }
            let mode = if v[3] == 0.0 {
                Mode::Trilinear
            } else {
                Mode::Nearest
            };
            Step::Resize([s[0] as usize, s[1] as usize, s[2] as usize], mode)
        }
        other => {
            return Err(Error::config(format!(
                "pipeline step: unknown step {other:?}"
            )))
        }
    })
}

/// A path, or the paths of several sequences of one study (stacked as channels).
#[derive(FromPyObject)]
pub enum PathItem {
    One(std::path::PathBuf),
    Many(Vec<std::path::PathBuf>),
}

/// Load (any format), reorient, resample to a spacing, window, run array steps and resize
/// many items in parallel: `[B, C, D, H, W]` f32. An item is a path (C = 1) or a list of paths
/// (MRI sequences: each after the first resampled onto the first's grid, then stacked as
/// channels). `axcodes` overrides `ras`; `steps` are `(name, params)` pairs run after the
/// prefix (see `volume::steps::Step`).
#[pyfunction]
#[pyo3(signature = (paths, ras=true, window=None, size=None, mode="trilinear", num_threads=0, spacing=None, axcodes=None, spacing_mode="trilinear", steps=None, series_uid=None))]
#[allow(clippy::too_many_arguments)]
pub fn load_batch<'py>(
    py: Python<'py>,
    paths: Vec<PathItem>,
    ras: bool,
    window: Option<(f64, f64, f64, f64, bool)>,
    size: Option<[usize; 3]>,
    mode: &str,
    num_threads: usize,
    spacing: Option<[f64; 3]>,
    axcodes: Option<String>,
    spacing_mode: &str,
    steps: Option<Vec<(String, Vec<f64>)>>,
    series_uid: Option<String>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    use crate::volume::pipeline::{self, Pipeline};
    use crate::volume::resize::Mode;
    let orient = match axcodes {
        Some(c) => Some(pipeline::parse_axcodes(&c)?),
        None if ras => Some(pipeline::RAS),
        None => None,
    };
    let spacing_mode = match spacing_mode {
        "bilinear" => Mode::Trilinear,
        m => Mode::parse(m)?,
    };
    let mut post = Vec::new();
    for (name, params) in steps.unwrap_or_default() {
        post.push(parse_step(&name, &params)?);
    }
    let p = Pipeline {
        orient,
        spacing,
        spacing_mode,
        window,
        size,
        mode: Mode::parse(mode)?,
        post,
        series_uid,
    };
    let n = if num_threads == 0 {
        crate::parallel::current_num_threads()
    } else {
        num_threads
    };
    let items: Vec<Vec<std::path::PathBuf>> = paths
        .into_iter()
        .map(|it| match it {
            PathItem::One(p) => vec![p],
            PathItem::Many(v) => v,
        })
        .collect();
    // load_batch_items runs in its own cached pool of `n` threads (no nesting in the default one)
    let out = py.detach(move || pipeline::load_batch_items(&items, &p, n))?;
    Ok(bridge::array_to_py(py, out))
}

fn m4(a: &[Vec<f64>], what: &str) -> Result<[[f64; 4]; 4], Error> {
    if a.len() != 4 || a.iter().any(|r| r.len() != 4) {
        return Err(Error::shape(format!(
            "{what}: expected a 4x4 matrix, got rows of lengths {:?}",
            a.iter().map(|r| r.len()).collect::<Vec<_>>()
        )));
    }
    let mut x = [[0.0; 4]; 4];
    for (i, r) in a.iter().enumerate() {
        x[i].copy_from_slice(r);
    }
    Ok(x)
}

/// nibabel's `io_orientation` of an affine (`(q+1) x (p+1)`): per voxel axis `(world axis,
/// +1 | -1)`, `(nan, nan)` for an axis without direction.
#[pyfunction]
#[pyo3(signature = (affine, tol=None))]
pub fn io_orientation(affine: Vec<Vec<f64>>, tol: Option<f64>) -> PyResult<Vec<(f64, f64)>> {
    let q = affine.len().saturating_sub(1);
    let p = affine.first().map_or(0, |r| r.len().saturating_sub(1));
    if q == 0 || p == 0 || affine.iter().any(|r| r.len() != p + 1) {
        return Err(Error::shape(format!(
            "affine: expected a (q+1) x (p+1) matrix with q, p >= 1, got rows of lengths {:?}",
            affine.iter().map(|r| r.len()).collect::<Vec<_>>()
        ))
        .into());
    }
    let rzs: Vec<Vec<f64>> = affine[..q].iter().map(|r| r[..p].to_vec()).collect();
    let o = crate::volume::geometry::io_orientation(&rzs, tol)?;
    Ok(o.into_iter()
        .map(|a| match a {
            Some((ax, pos)) => (ax as f64, if pos { 1.0 } else { -1.0 }),
            None => (f64::NAN, f64::NAN),
        })
        .collect())
}

/// `(flip_axes, perm, new_affine)` of `orientation_transform`.
type Reoriented<'py> = (Vec<usize>, Vec<usize>, Bound<'py, numpy::PyArrayDyn<f64>>);

/// MONAI `Orientation` geometry: `(flip_axes, perm, new_affine)` for an image of spatial
/// `shape` with a 4x4 `affine`, reoriented to `axcodes` (one letter per spatial dim): flip the
/// spatial axes `flip_axes`, then output axis i is spatial axis `perm[i]`.
#[pyfunction]
pub fn orientation_transform<'py>(
    py: Python<'py>,
    affine: Vec<Vec<f64>>,
    shape: Vec<usize>,
    axcodes: &str,
) -> PyResult<Reoriented<'py>> {
    use crate::volume::geometry;
    let a = m4(&affine, "affine")?;
    let target = geometry::axcodes_ornt(axcodes)?;
    let r = geometry::reorient(&a, &shape, &target)?;
    let flips = r
        .ornt
        .iter()
        .enumerate()
        .filter(|(_, o)| o.1)
        .map(|(j, _)| j)
        .collect();
    Ok((flips, r.perm, affine_array(py, r.affine)?))
}

/// MONAI `Spacing` geometry (`scale_extent=False`): `(new_affine, shape, xform, identity)` for
/// spatial `shape`, a 4x4 `affine` and voxel size `pixdim`; `xform` maps output voxels to input
/// voxels, `identity` says MONAI would resample nothing.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn spacing_grid<'py>(
    py: Python<'py>,
    shape: [usize; 3],
    affine: Vec<Vec<f64>>,
    pixdim: [f64; 3],
) -> PyResult<(
    Bound<'py, numpy::PyArrayDyn<f64>>,
    [usize; 3],
    Bound<'py, numpy::PyArrayDyn<f64>>,
    bool,
)> {
    let a = m4(&affine, "affine")?;
    let g = crate::volume::geometry::spacing_grid(shape, &a, pixdim)?;
    Ok((
        affine_array(py, g.affine)?,
        g.shape,
        affine_array(py, g.xform)?,
        g.identity,
    ))
}

/// MONAI `ResampleToMatch` geometry: `(xform, identity)`, `xform` = `inverse(src_affine) @
/// dst_affine` (destination voxel -> source voxel), `identity` when nothing is resampled.
#[pyfunction]
pub fn match_grid<'py>(
    py: Python<'py>,
    src_shape: [usize; 3],
    src_affine: Vec<Vec<f64>>,
    dst_shape: [usize; 3],
    dst_affine: Vec<Vec<f64>>,
) -> PyResult<(Bound<'py, numpy::PyArrayDyn<f64>>, bool)> {
    let s = m4(&src_affine, "src_affine")?;
    let d = m4(&dst_affine, "dst_affine")?;
    let (x, same) = crate::volume::geometry::match_grid(src_shape, &s, dst_shape, &d)?;
    Ok((affine_array(py, x)?, same))
}

/// Affine resampling of a float32 `[C, D, H, W]` array: output voxel `o` samples the input at
/// `xform @ o` (trilinear or nearest, border padding).
#[pyfunction]
pub fn affine_resample<'py>(
    py: Python<'py>,
    img: &Bound<'py, PyAny>,
    xform: Vec<Vec<f64>>,
    size: [usize; 3],
    mode: &str,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    use crate::volume::resize::Mode;
    let m = Mode::parse(mode)?;
    if xform.len() != 4 || xform.iter().any(|r| r.len() != 4) {
        return Err(Error::shape("xform: expected a 4x4 matrix").into());
    }
    let mut x = [[0.0; 4]; 4];
    for (i, r) in xform.iter().enumerate() {
        x[i].copy_from_slice(r);
    }
    let a = bridge::array_view::<f32>(img, "img")?;
    let v = a.as_array();
    let v4 = v.into_dimensionality::<ndarray::Ix4>().map_err(|_| {
        Error::shape(format!(
            "img: expected a 4-d [C, D, H, W] array, got shape {:?}",
            a.shape()
        ))
    })?;
    let out = crate::py::par(py, || {
        crate::volume::resample::affine_resample(v4, &x, size, m)
    })?;
    Ok(bridge::array_to_py(py, out))
}

/// `(data, affine, meta, format)` of `voxlm._core.load_image`.
type AnyLoaded<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, numpy::PyArrayDyn<f64>>,
    Bound<'py, pyo3::types::PyDict>,
    &'static str,
);

pub(crate) fn meta_dict<'py>(
    py: Python<'py>,
    meta: &crate::volume::load::Meta,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    use crate::volume::load::MetaValue as V;
    let d = pyo3::types::PyDict::new(py);
    for (k, v) in meta {
        match v {
            V::Str(s) => d.set_item(k, s)?,
            V::Int(i) => d.set_item(k, i)?,
            V::Float(f) => d.set_item(k, f)?,
            V::Bool(b) => d.set_item(k, b)?,
            V::Floats(f) => d.set_item(k, f.clone())?,
            V::Ints(i) => d.set_item(k, i.clone())?,
            V::Strs(s) => d.set_item(k, s.clone())?,
        }
    }
    Ok(d)
}

fn loaded_array<'py, T: numpy::Element + Copy>(
    py: Python<'py>,
    l: crate::volume::load::Loaded<T>,
) -> PyResult<Bound<'py, PyAny>> {
    use ndarray::ShapeBuilder;
    let a = if l.fortran {
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&l.shape).f(), l.data)
    } else {
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&l.shape), l.data)
    }
    .map_err(|e| Error::shape(e.to_string()))?;
    Ok(bridge::array_to_py(py, a).into_any())
}

/// The format of a file (or folder) by content: "nifti", "dicom", "metaimage", "npy", "png",
/// "jpeg".
#[pyfunction]
pub fn sniff_format(py: Python<'_>, path: std::path::PathBuf) -> PyResult<&'static str> {
    let f = py.detach(|| crate::volume::load::sniff(&path))?;
    Ok(f.name())
}

/// Read any supported image (DICOM file or folder, MetaImage, NIfTI, .npy, PNG, JPEG):
/// `(data, affine 4x4 RAS, meta dict, format)`. `dtype`: "float32" or "float64".
#[pyfunction]
#[pyo3(signature = (path, dtype="float32", series_uid=None))]
pub fn load_image<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    dtype: &str,
    series_uid: Option<String>,
) -> PyResult<AnyLoaded<'py>> {
    use crate::volume::load::{self, LoadOptions};
    let opts = LoadOptions { series_uid };
    match dtype {
        "float32" => {
            let (f, l) = crate::py::par(py, || load::load::<f32>(&path, &opts))?;
            let (aff, meta) = (l.affine, meta_dict(py, &l.meta)?);
            Ok((loaded_array(py, l)?, affine_array(py, aff)?, meta, f.name()))
        }
        "float64" => {
            let (f, l) = crate::py::par(py, || load::load::<f64>(&path, &opts))?;
            let (aff, meta) = (l.affine, meta_dict(py, &l.meta)?);
            Ok((loaded_array(py, l)?, affine_array(py, aff)?, meta, f.name()))
        }
        other => Err(Error::dtype(format!(
            "dtype: expected 'float32' or 'float64', got '{other}'"
        ))
        .into()),
    }
}
