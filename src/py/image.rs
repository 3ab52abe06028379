//! `voxlm._core` 2D image functions: PNG/JPEG decoding, Pillow-exact bicubic resize, CLIP
//! preprocessing, LLaVA's expand2square.

use numpy::PyArrayDyn;
use pyo3::prelude::*;

use crate::bridge;
use crate::error::Error;
use crate::volume::image2d;

fn hwc<'py>(a: &numpy::PyReadonlyArrayDyn<'py, u8>, name: &str) -> PyResult<ndarray::Array3<u8>> {
    let v = a.as_array();
    match v.ndim() {
        2 => Ok(v
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|e| Error::shape(e.to_string()))?
            .insert_axis(ndarray::Axis(2))
            .to_owned()),
        3 => Ok(v
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| Error::shape(e.to_string()))?
            .to_owned()),
        _ => Err(Error::shape(format!(
            "{name}: expected an image [H, W] or [H, W, C], got shape {:?}",
            v.shape()
        ))
        .into()),
    }
}

/// Decode a PNG or JPEG file: `[H, W]` or `[H, W, C]` uint8 (uint16 for 16-bit PNG), as
/// `np.asarray(PIL.Image.open(path))` (palette expanded to RGB/RGBA).
#[pyfunction]
pub fn load_image_2d<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
) -> PyResult<Bound<'py, PyAny>> {
    let im = py.detach(|| image2d::load_2d(&path))?;
    let mut shape = vec![im.height, im.width];
    if im.channels > 1 {
        shape.push(im.channels);
    }
    if im.bits == 16 {
        let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), im.data)
            .map_err(|e| Error::shape(e.to_string()))?;
        Ok(bridge::array_to_py(py, a).into_any())
    } else {
        let a = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&shape),
            im.data.iter().map(|&v| v as u8).collect(),
        )
        .map_err(|e| Error::shape(e.to_string()))?;
        Ok(bridge::array_to_py(py, a).into_any())
    }
}

/// Pillow's `Image.resize((width, height), Image.BICUBIC)` of a uint8 `[H, W(, C)]` array,
/// bit-exact: returns `[height, width, C]`.
#[pyfunction]
pub fn resize_bicubic<'py>(
    py: Python<'py>,
    img: &Bound<'py, PyAny>,
    height: usize,
    width: usize,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let a = bridge::array_view::<u8>(img, "img")?;
    let x = hwc(&a, "img")?;
    let out = py.detach(|| image2d::resize_bicubic(x.view(), height, width))?;
    Ok(bridge::array_to_py(py, out))
}

/// LLaVA's `expand2square(img, background)` on a uint8 `[H, W, C]` array.
#[pyfunction]
pub fn expand2square<'py>(
    py: Python<'py>,
    img: &Bound<'py, PyAny>,
    background: Vec<u8>,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let a = bridge::array_view::<u8>(img, "img")?;
    let x = hwc(&a, "img")?;
    let out = image2d::expand2square(x.view(), &background)?;
    Ok(bridge::array_to_py(py, out))
}

/// transformers' CLIPImageProcessor on one RGB uint8 `[H, W, 3]` array: `[3, crop_h, crop_w]`
/// float32. `size` None skips the resize, `crop` None the center crop.
#[pyfunction]
#[pyo3(signature = (img, size, crop, rescale, mean, std))]
pub fn clip_preprocess<'py>(
    py: Python<'py>,
    img: &Bound<'py, PyAny>,
    size: Option<usize>,
    crop: Option<(usize, usize)>,
    rescale: f64,
    mean: [f32; 3],
    std: [f32; 3],
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let a = bridge::array_view::<u8>(img, "img")?;
    let x = hwc(&a, "img")?;
    let out = py.detach(|| image2d::clip_preprocess(x.view(), size, crop, rescale, mean, std))?;
    Ok(bridge::array_to_py(py, out))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load_image_2d, m)?)?;
    m.add_function(wrap_pyfunction!(resize_bicubic, m)?)?;
    m.add_function(wrap_pyfunction!(expand2square, m)?)?;
    m.add_function(wrap_pyfunction!(clip_preprocess, m)?)?;
    Ok(())
}
