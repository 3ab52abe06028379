//! voxlm's Rust core: volume preprocessing, vision and LLaMA forwards on libtorch (tch), adapters,
//! losses and metrics. Everything outside `py/` and `bridge.rs` is free of pyo3 and is tested with
//! `cargo test`; the Python extension (`voxlm._core`) is built with the `python` feature.

pub mod adapters;
pub mod check;
pub mod error;
pub mod llm;
pub mod losses;
pub mod metrics;
pub mod ops;
pub mod parallel;
pub mod vision;
pub mod volume;
pub mod weights;

#[cfg(feature = "python")]
mod bridge;
#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};

/// The libtorch (PyTorch) version tch 0.24 is compiled against; torch must match exactly.
pub const LIBTORCH_VERSION: &str = "2.11.0";
