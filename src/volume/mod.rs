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

use crate::error::{Error, Result};
use std::sync::OnceLock;

/// This machine's memory (RAM + swap, from `/proc/meminfo`) in bytes; `u64::MAX` where the OS
/// does not say.
fn memory_bytes() -> u64 {
    static MEM: OnceLock<u64> = OnceLock::new();
    *MEM.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        match kib("MemTotal:") {
            Some(m) => (m + kib("SwapTotal:").unwrap_or(0)).saturating_mul(1024),
            None => u64::MAX,
        }
    })
}

/// An error naming `what` and the shape unless a float32 array of `dims` fits in this
/// machine's memory: checked before allocating, since a failed allocation aborts the process
/// (and a size whose element count overflows would panic in ndarray).
pub fn check_alloc(what: &str, dims: &[usize]) -> Result<()> {
    let bytes = dims
        .iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&b| b <= isize::MAX as u64);
    let mem = memory_bytes();
    match bytes {
        Some(b) if b <= mem => Ok(()),
        _ => Err(Error::shape(format!(
            "{what}: an output of shape {dims:?} (float32) needs {} GiB, more than this machine's \
             {:.1} GiB of memory; expected a smaller size",
            bytes.map_or("over 2^63 bytes".to_string(), |b| format!(
                "{:.1}",
                b as f64 / 1073741824.0
            )),
            mem as f64 / 1073741824.0
        ))),
    }
}
