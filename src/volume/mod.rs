//! Volume preprocessing on ndarray + rayon. Free of pyo3.

pub mod dicom;
pub mod geometry;
pub mod image2d;
pub mod intensity;
pub mod load;
pub mod metaimage;
pub mod nifti;
pub mod npy;
pub mod pipeline;
pub mod resample;
pub mod resize;
pub mod scratch;
pub mod steps;
