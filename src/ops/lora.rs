//! The LoRA linear: `y = x W^T + b + scaling * dropout(x) A^T B^T`, PEFT's `lora.Linear` forward
//! (`result + lora_B(lora_A(dropout(x))) * scaling`), on libtorch with autograd.

use crate::check;
use crate::error::{Error, Result};
use tch::Tensor;

/// The low-rank pair of one adapter: `a` is `[r, in_features]`, `b` is `[out_features, r]`.
pub struct LoraWeights {
    pub a: Tensor,
    pub b: Tensor,
    /// `lora_alpha / r` (or `lora_alpha / sqrt(r)` with rsLoRA), applied to the low-rank branch.
    pub scaling: f64,
    /// Dropout probability on the branch input, active only when `train` is set.
    pub dropout: f64,
}

/// A linear layer, optionally with a LoRA branch, whose tensors are shallow references to
/// tensors owned elsewhere (Python `nn.Parameter`s): in-place updates, `.to(dtype)` through
/// `param.data = ...` and `load_state_dict` are all seen by the next forward.
pub struct LoraLinear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraWeights>,
}

impl LoraLinear {
    /// Validates the parameter shapes against each other once; the forward re-checks the input.
    pub fn new(weight: Tensor, bias: Option<Tensor>, lora: Option<LoraWeights>) -> Result<Self> {
        let layer = LoraLinear { weight, bias, lora };
        layer.check_params()?;
        Ok(layer)
    }

    /// `x [..., in_features] -> [..., out_features]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        lora_linear(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.lora.as_ref(),
            train,
        )
    }

    fn check_params(&self) -> Result<()> {
        let w = check::dims(&self.weight, "weight", 2, "[out_features, in_features]")?;
        let kind = check::float_kind(&self.weight, "weight")?;
        let device = self.weight.device();
        if let Some(b) = &self.bias {
            let bs = check::dims(b, "bias", 1, "[out_features]")?;
            if bs[0] != w[0] {
                return Err(Error::shape(format!(
                    "bias: expected shape [{}] to match weight [{}, {}], got {bs:?}",
                    w[0], w[0], w[1]
                )));
            }
            check::same_kind(b, "bias", kind, "weight")?;
            check::same_device(b, "bias", device, "weight")?;
        }
        if let Some(l) = &self.lora {
            let a = check::dims(&l.a, "lora_A", 2, "[r, in_features]")?;
            let b = check::dims(&l.b, "lora_B", 2, "[out_features, r]")?;
            if a[1] != w[1] {
                return Err(Error::shape(format!(
                    "lora_A: expected shape [r, {}] (in_features of weight), got {a:?}",
                    w[1]
                )));
            }
            if b[0] != w[0] || b[1] != a[0] {
                return Err(Error::shape(format!(
                    "lora_B: expected shape [{}, {}] (out_features of weight, r of lora_A), got {b:?}",
                    w[0], a[0]
                )));
            }
            check::same_kind(&l.a, "lora_A", kind, "weight")?;
            check::same_kind(&l.b, "lora_B", kind, "weight")?;
            check::same_device(&l.a, "lora_A", device, "weight")?;
            check::same_device(&l.b, "lora_B", device, "weight")?;
            check::in_range(l.dropout, "lora_dropout", 0.0, 1.0)?;
            if !l.scaling.is_finite() {
                return Err(Error::config(format!(
                    "scaling: expected a finite number, got {}",
                    l.scaling
                )));
            }
        }
        Ok(())
    }
}

/// Functional form: checks every argument, then computes
/// `x W^T + b + scaling * dropout(x) A^T B^T` for `x [..., in_features]`.
pub fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<&LoraWeights>,
    train: bool,
) -> Result<Tensor> {
    let layer = LoraLinear {
        weight: weight.shallow_clone(),
        bias: bias.map(Tensor::shallow_clone),
        lora: lora.map(|l| LoraWeights {
            a: l.a.shallow_clone(),
            b: l.b.shallow_clone(),
            scaling: l.scaling,
            dropout: l.dropout,
        }),
    };
    layer.check_params()?;
    let xs = check::min_dims(x, "x", 1, "[..., in_features]")?;
    let w = layer.weight.size();
    let in_features = xs[xs.len() - 1];
    if in_features != w[1] {
        return Err(Error::shape(format!(
            "x: expected last dimension {} (in_features of weight [{}, {}]), got shape {xs:?}",
            w[1], w[0], w[1]
        )));
    }
    let kind = check::float_kind(&layer.weight, "weight")?;
    check::same_kind(x, "x", kind, "weight")?;
    check::same_device(x, "x", layer.weight.device(), "weight")?;
    layer.compute(x, train)
}

impl LoraLinear {
    /// The base product, then the branch added into it in place: `y += (dropout(x) A^T) *
    /// scaling @ B^T` as one `addmm_` on the 2-D base output. The dropout's `1 / (1 - p)` and
    /// `scaling` multiply the `[tokens, r]` product instead of the `[tokens, in]` input and the
    /// `[tokens, out]` branch, so the forward allocates no full-width temporaries beyond the
    /// masked input autograd keeps, and the backward none for the scalings (PEFT's order of the
    /// same products: equal up to float rounding). Safe for autograd: neither `mm` nor `addmm`
    /// saves its output.
    fn compute(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let Some(l) = &self.lora else {
            return Ok(x.f_linear(&self.weight, self.bias.as_ref())?);
        };
        let mut shape = x.size();
        let Some(last) = shape.len().checked_sub(1) else {
            return Err(Error::shape(
                "x: expected shape [..., in_features], got a 0-d tensor",
            ));
        };
        let x2 = x.f_reshape([-1, shape[last]])?;
        let mut y = x2.f_linear(&self.weight, self.bias.as_ref())?;
        let (xd, factor) = if l.dropout > 0.0 && train {
            dropout_mask(&x2, l.dropout)?
        } else {
            (x2, 1.0)
        };
        let mut low = xd
            .f_linear::<Tensor>(&l.a, None)?
            .f_mul_scalar(l.scaling * factor)?;
        let mut b = l.b.shallow_clone();
        // under autocast the two products may come out in another dtype than B
        let kind = y.f_kind()?;
        if low.f_kind()? != kind {
            low = low.f_to_kind(kind)?;
        }
        if b.f_kind()? != kind {
            b = b.f_to_kind(kind)?;
        }
        let y = y.f_addmm_(&low, &b.f_tr()?)?;
        shape[last] = self.weight.size()[0];
        Ok(y.f_view(shape.as_slice())?)
    }
}

/// Inverted dropout split in two: `(x * mask, 1 / (1 - p))`, whose product is libtorch's CPU
/// `dropout(x, p)` (the same `bernoulli_(1 - p)` draw on a tensor like `x`, so the same random
/// stream and mask, and the same float `1 / (1 - p)` factor); the caller applies the factor to
/// a smaller product. What autograd saves for the backward of `x` is the mask as a bool tensor
/// (1 byte per element) instead of the float noise tensor (4 or 8 bytes): `where` saves only
/// its bool condition. `p` in `(0, 1)`; `p == 1` gives zeros, as `dropout`.
fn dropout_mask(x: &Tensor, p: f64) -> Result<(Tensor, f64)> {
    if p >= 1.0 {
        return Ok((x.f_mul_scalar(0.0)?, 1.0));
    }
    let kept = {
        let _g = tch::no_grad_guard();
        x.f_empty_like()?.f_bernoulli_float_(1.0 - p)?.f_ne(0.0)?
    };
    // libtorch: noise.div_(1 - p) in the tensor's dtype, then x * noise
    let scale = match x.f_kind()? {
        tch::Kind::Double => 1.0 / (1.0 - p),
        _ => f64::from(1.0f32 / ((1.0 - p) as f32)),
    };
    // `where` reads the bool mask as it is, in one pass (`x * mask` first copies the mask to a
    // float tensor, in the forward and again in the backward; `masked_fill` clones `x` and then
    // fills); zeros come out as +0 where `x * 0` gives -0 for negative x, equal under `==` and
    // in every sum they enter
    Ok((x.f_where_scalarother(&kept, 0.0)?, scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn t(shape: &[i64], kind: Kind) -> Tensor {
        Tensor::randn(shape, (kind, Device::Cpu))
    }

    #[test]
    fn matches_the_formula() -> Result<()> {
        let x = t(&[2, 3, 8], Kind::Double);
        let w = t(&[5, 8], Kind::Double);
        let b = t(&[5], Kind::Double);
        let l = LoraWeights {
            a: t(&[4, 8], Kind::Double),
            b: t(&[5, 4], Kind::Double),
            scaling: 0.5,
            dropout: 0.0,
        };
        let y = lora_linear(&x, &w, Some(&b), Some(&l), false)?;
        let expected = x.matmul(&w.tr()) + &b + x.matmul(&l.a.tr()).matmul(&l.b.tr()) * 0.5;
        let diff = f64::try_from((y - expected).abs().max())?;
        assert!(diff < 1e-12, "{diff}");
        Ok(())
    }

    #[test]
    fn mask_dropout_equals_libtorch_dropout_with_the_same_seed() -> Result<()> {
        for kind in [Kind::Float, Kind::Double] {
            let x = t(&[3, 5, 64], kind);
            tch::manual_seed(7);
            let expected = x.dropout(0.3, true);
            tch::manual_seed(7);
            let (masked, scale) = dropout_mask(&x, 0.3)?;
            let got = masked.f_mul_scalar(scale)?;
            let diff = f64::try_from((got - expected).abs().max())?;
            assert_eq!(diff, 0.0, "{kind:?}");
        }
        Ok(())
    }

    #[test]
    fn shape_mismatch_is_a_shape_error() {
        let x = t(&[2, 7], Kind::Float);
        let w = t(&[5, 8], Kind::Float);
        match lora_linear(&x, &w, None, None, false) {
            Err(Error::Shape(m)) => assert!(m.contains("expected last dimension 8"), "{m}"),
            other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn dtype_mismatch_is_a_dtype_error() {
        let x = t(&[2, 8], Kind::Double);
        let w = t(&[5, 8], Kind::Float);
        assert!(matches!(
            lora_linear(&x, &w, None, None, false),
            Err(Error::DType(_))
        ));
    }

    #[test]
    fn bad_rank_is_refused() {
        let w = t(&[5, 8], Kind::Float);
        let l = LoraWeights {
            a: t(&[4, 8], Kind::Float),
            b: t(&[5, 3], Kind::Float),
            scaling: 1.0,
            dropout: 0.0,
        };
        assert!(matches!(
            LoraLinear::new(w, None, Some(l)),
            Err(Error::Shape(_))
        ));
    }
}
