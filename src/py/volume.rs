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
    let out = py.detach(|| intensity::scale_intensity_range(view, a0, a1, b0, b1, clip))?;
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
