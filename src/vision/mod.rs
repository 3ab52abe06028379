//! Vision parts on libtorch (autograd): 2D-to-3D patch inflation, a 3D ViT with MONAI's key
//! names, and the token reducers/projectors of the methods. Free of pyo3.

pub mod clip;
pub mod disease;
pub mod inflate;
pub mod perceiver;
pub mod projector;
pub mod query;
pub mod vit;

use std::collections::HashMap;

use tch::Tensor;

use crate::error::{Error, Result};

/// Take a named tensor out of a parameter map, or a CheckpointError naming it.
pub(crate) fn take(w: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    w.remove(name)
        .ok_or_else(|| Error::checkpoint(format!("missing tensor {name}")))
}

pub(crate) fn expect_shape(t: &Tensor, name: &str, shape: &[i64]) -> Result<()> {
    let s = t.size();
    if s != shape {
        return Err(Error::checkpoint(format!(
            "{name}: expected shape {shape:?}, got {s:?}"
        )));
    }
    Ok(())
}
