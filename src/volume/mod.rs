//! Volume preprocessing on ndarray + rayon. Free of pyo3.

pub mod intensity;
pub mod nifti;
pub mod pipeline;
pub mod resample;
pub mod resize;
