//! The `voxlm._core` extension module: pyo3 classes and functions only, one file per area.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;

mod errors;
mod image;
mod info;
mod llm;
mod losses;
mod metrics;
mod ops;
mod vision;
mod volume;

/// Release the GIL and run `f` in voxlm's fork-safe rayon pool. Only for pure-Rust work:
/// `f` runs on a pool thread, so libtorch's thread-local state (grad mode, autocast) is not
/// there; tensor code uses `py.detach` on the calling thread instead.
pub(crate) fn par<T: Send, F: FnOnce() -> T + Send>(py: Python<'_>, f: F) -> T {
    py.detach(move || crate::parallel::install(f))
}

static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// A process-unique id of the current thread (0 is "nobody").
    static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

fn thread_id() -> u64 {
    THREAD.with(|t| *t)
}

/// A Rust core's state behind a lock that knows which thread holds it: a call from inside one
/// of the core's own calls on the same thread (a `generate` streamer calling back into the
/// model) is refused with an error instead of deadlocking; other threads wait their turn.
pub(crate) struct Core<T> {
    inner: Mutex<T>,
    holder: AtomicU64,
}

/// The locked state; releases the holder mark when dropped.
pub(crate) struct CoreGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    holder: &'a AtomicU64,
}

impl<T> Core<T> {
    pub(crate) fn new(value: T) -> Self {
        Core {
            inner: Mutex::new(value),
            holder: AtomicU64::new(0),
        }
    }

    /// Lock; `what` names the core in errors (a poisoned lock is an error too).
    pub(crate) fn lock(&self, what: &str) -> crate::Result<CoreGuard<'_, T>> {
        let me = thread_id();
        if self.holder.load(Ordering::SeqCst) == me {
            return Err(crate::Error::config(format!(
                "{what}: called again from inside one of its own calls on the same thread (a \
                 generate streamer or callback calling back into the same model?); call it \
                 after the outer call returns"
            )));
        }
        let guard = self.inner.lock().map_err(|_| {
            crate::Error::config(format!(
                "{what}: lock poisoned (an earlier call failed inside it)"
            ))
        })?;
        self.holder.store(me, Ordering::SeqCst);
        Ok(CoreGuard {
            guard,
            holder: &self.holder,
        })
    }
}

impl<T> Drop for CoreGuard<'_, T> {
    fn drop(&mut self) {
        self.holder.store(0, Ordering::SeqCst);
    }
}

impl<T> Deref for CoreGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for CoreGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(info::build_info, m)?)?;
    m.add_function(wrap_pyfunction!(ops::lora_linear, m)?)?;
    m.add_class::<ops::PyLoraLinear>()?;
    m.add_function(wrap_pyfunction!(volume::scale_intensity_range, m)?)?;
    m.add_function(wrap_pyfunction!(volume::load_nifti, m)?)?;
    m.add_function(wrap_pyfunction!(volume::save_nifti, m)?)?;
    m.add_function(wrap_pyfunction!(volume::resize, m)?)?;
    m.add_function(wrap_pyfunction!(volume::load_batch, m)?)?;
    m.add_function(wrap_pyfunction!(volume::affine_resample, m)?)?;
    m.add_function(wrap_pyfunction!(volume::io_orientation, m)?)?;
    m.add_function(wrap_pyfunction!(volume::orientation_transform, m)?)?;
    m.add_function(wrap_pyfunction!(volume::spacing_grid, m)?)?;
    m.add_function(wrap_pyfunction!(volume::match_grid, m)?)?;
    m.add_function(wrap_pyfunction!(volume::load_image, m)?)?;
    m.add_function(wrap_pyfunction!(volume::sniff_format, m)?)?;
    image::register(m)?;
    m.add_function(wrap_pyfunction!(losses::focal_loss, m)?)?;
    m.add_function(wrap_pyfunction!(losses::kl_distill, m)?)?;
    m.add_function(wrap_pyfunction!(losses::lm_loss, m)?)?;
    m.add_function(wrap_pyfunction!(losses::prototype_similarities, m)?)?;
    m.add_function(wrap_pyfunction!(losses::prototype_loss, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::report_scores, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::classification_scores, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::multilabel_scores, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::meteor_score, m)?)?;
    m.add_function(wrap_pyfunction!(metrics::meteor_stats, m)?)?;
    m.add_function(wrap_pyfunction!(llm::parse_llama_config, m)?)?;
    m.add_function(wrap_pyfunction!(llm::llama_rope_inv_freq, m)?)?;
    m.add_function(wrap_pyfunction!(llm::checkpoint_files, m)?)?;
    m.add_function(wrap_pyfunction!(llm::load_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(llm::save_safetensors, m)?)?;
    m.add_class::<llm::PyLlama>()?;
    m.add_class::<llm::PyTokenizer>()?;
    m.add_function(wrap_pyfunction!(vision::inflate_patch_embedding, m)?)?;
    m.add_function(wrap_pyfunction!(vision::interpolate_pos_embedding, m)?)?;
    m.add_function(wrap_pyfunction!(vision::spatial_pool, m)?)?;
    m.add_function(wrap_pyfunction!(vision::mlp_project, m)?)?;
    m.add_function(wrap_pyfunction!(vision::disease_pool, m)?)?;
    m.add_class::<vision::PyVit3d>()?;
    m.add_class::<vision::PyPerceiver>()?;
    m.add_class::<vision::PyClipVision>()?;
    m.add_class::<vision::PyQueryBlocks>()?;
    Ok(())
}
