//! Dia-LLaMA's disease-aware attention: a learned `[L, M]` weight softmaxed over the `M` visual
//! tokens gives one pooled feature per disease: `pooled[b, l] = sum_m softmax(w[l])[m] * x[b, m]`.

use tch::Tensor;

use crate::check;
use crate::error::{Error, Result};

/// `x [B, M, D]`, `weight [L, M]` -> `[B, L, D]`.
pub fn disease_pool(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let s = check::dims(x, "x", 3, "[B, tokens, dim]")?;
    let w = check::dims(weight, "prototype", 2, "[num_labels, num_tokens]")?;
    if w[1] != s[1] {
        return Err(Error::shape(format!(
            "x: expected {} tokens (num_tokens of the disease attention), got shape {s:?}",
            w[1]
        )));
    }
    let kind = check::float_kind(x, "x")?;
    check::same_kind(weight, "prototype", kind, "x")?;
    check::same_device(weight, "prototype", x.device(), "x")?;
    let a = weight.f_softmax(-1, kind)?; // [L, M]
                                         // as the reference: (x[:, None] * a[None, :, :, None]).sum(2), in one matmul
    Ok(a.f_matmul(x)?)
}
