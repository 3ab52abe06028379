//! Build and runtime facts for `voxlm.info()`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// voxlm's build: version, profile, the libtorch it was compiled for, threads, CUDA.
#[pyfunction]
pub fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("voxlm", env!("CARGO_PKG_VERSION"))?;
    d.set_item(
        "profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    d.set_item("libtorch_built_for", crate::LIBTORCH_VERSION)?;
    d.set_item("torch_threads", tch::get_num_threads())?;
    d.set_item("torch_interop_threads", tch::get_num_interop_threads())?;
    d.set_item("rayon_threads", crate::parallel::current_num_threads())?;
    d.set_item("cuda_available", tch::Cuda::is_available())?;
    d.set_item("cuda_device_count", tch::Cuda::device_count())?;
    d.set_item("cudnn_available", tch::Cuda::cudnn_is_available())?;
    Ok(d)
}
