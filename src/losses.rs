//! The methods' objectives on libtorch, differentiable (CPU and CUDA).
//!
//! * [`focal_loss`]: PICG's multi-class focal loss, `alpha[y] * (1 - p_y)^gamma * CE`.
//! * [`kl_distill`]: PICG's guideline distillation, `KLDivLoss(batchmean)(log_softmax(s/T), softmax(t/T))`.
//! * [`lm_loss`]: the causal-LM loss with the shift and `ignore_index`, as `LlamaForCausalLM`.
//! * [`prototype_logits`] / [`prototype_loss`]: Dia-LLaMA's disease prototype memory bank (InfoNCE
//!   over the positive and negative prototype of each label, cosine over a learnable temperature).

use tch::{Kind, Reduction, Tensor};

use crate::check;
use crate::error::{Error, Result};

/// How a per-element loss is reduced, with torch's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    None,
    Mean,
    Sum,
}

impl Reduce {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Reduce::None),
            "mean" => Ok(Reduce::Mean),
            "sum" => Ok(Reduce::Sum),
            other => Err(Error::config(format!(
                "reduction: expected 'none', 'mean' or 'sum', got '{other}'"
            ))),
        }
    }
    fn apply(self, t: Tensor) -> Result<Tensor> {
        Ok(match self {
            Reduce::None => t,
            Reduce::Mean => t.f_mean(None)?,
            Reduce::Sum => t.f_sum(None)?,
        })
    }
}

fn class_targets(target: &Tensor, name: &str, n: i64, classes: i64) -> Result<()> {
    let s = check::dims(target, name, 1, "[N] of class indices")?;
    if s[0] != n {
        return Err(Error::shape(format!(
            "{name}: expected {n} targets (one per row of logits), got {}",
            s[0]
        )));
    }
    let k = check::kind_of(target, name)?;
    if !matches!(
        k,
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
    ) {
        return Err(Error::dtype(format!(
            "{name}: expected an integer tensor of class indices, got {}",
            check::kind_name(k)
        )));
    }
    if n > 0 {
        let lo = i64::try_from(target.f_min()?)?;
        let hi = i64::try_from(target.f_max()?)?;
        if lo < 0 || hi >= classes {
            return Err(Error::config(format!(
                "{name}: class indices must lie in [0, {}], got values in [{lo}, {hi}]",
                classes - 1
            )));
        }
    }
    Ok(())
}

fn finite(t: &Tensor, name: &str) -> Result<()> {
    let all = bool::try_from(t.f_isfinite()?.f_all()?)?;
    if !all {
        return Err(Error::config(format!(
            "{name}: contains NaN or infinite values"
        )));
    }
    Ok(())
}

/// Multi-class focal loss: `alpha[y] * (1 - p_y)^gamma * (-log p_y)`, `p = softmax(logits)`.
/// `logits [N, C]`, `target [N]` (class indices), `alpha [C]` or None (all ones).
pub fn focal_loss(
    logits: &Tensor,
    target: &Tensor,
    alpha: Option<&Tensor>,
    gamma: f64,
    reduction: Reduce,
) -> Result<Tensor> {
    let s = check::dims(logits, "logits", 2, "[N, C]")?;
    let kind = check::float_kind(logits, "logits")?;
    let device = logits.device();
    check::same_device(target, "target", device, "logits")?;
    class_targets(target, "target", s[0], s[1])?;
    if !gamma.is_finite() || gamma < 0.0 {
        return Err(Error::config(format!(
            "gamma: expected a finite value >= 0, got {gamma}"
        )));
    }
    finite(logits, "logits")?;
    let target = target.f_to_kind(Kind::Int64)?;
    let logp = logits
        .f_log_softmax(1, kind)?
        .f_gather(1, &target.f_unsqueeze(1)?, false)?
        .f_squeeze_dim(1)?;
    let ce = logp.f_neg()?;
    let pt = logp.f_exp()?;
    let mut loss = pt
        .f_neg()?
        .f_add_scalar(1.0)?
        .f_pow_tensor_scalar(gamma)?
        .f_mul(&ce)?;
    if let Some(a) = alpha {
        let sa = check::dims(a, "alpha", 1, "[C] (one weight per class)")?;
        if sa[0] != s[1] {
            return Err(Error::shape(format!(
                "alpha: expected {} class weights, got {}",
                s[1], sa[0]
            )));
        }
        check::same_device(a, "alpha", device, "logits")?;
        let a = a.f_to_kind(kind)?;
        loss = loss.f_mul(&a.f_index_select(0, &target)?)?;
    }
    reduction.apply(loss)
}

/// PICG's guideline distillation: `KL(teacher || student)` with `batchmean`, over the last axis:
/// `sum softmax(t/T) * (log softmax(t/T) - log_softmax(s/T)) / B`, as
/// `nn.KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T))`. No `T^2` factor.
pub fn kl_distill(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let s = check::min_dims(student, "student", 1, "[B, D]")?;
    let t = teacher.size();
    if s != t {
        return Err(Error::shape(format!(
            "teacher: expected the student's shape {s:?} (project the student features to the teacher's size first), got {t:?}"
        )));
    }
    let kind = check::float_kind(student, "student")?;
    check::same_kind(teacher, "teacher", kind, "student")?;
    check::same_device(teacher, "teacher", student.device(), "student")?;
    if !temperature.is_finite() || temperature <= 0.0 {
        return Err(Error::config(format!(
            "temperature: expected a finite value > 0, got {temperature}"
        )));
    }
    if s.iter().product::<i64>() == 0 {
        return Err(Error::shape(format!("student: empty batch {s:?}")));
    }
    let last = (s.len() - 1) as i64;
    let ls = student
        .f_div_scalar(temperature)?
        .f_log_softmax(last, kind)?;
    let pt = teacher.f_div_scalar(temperature)?.f_softmax(last, kind)?;
    let total = ls.f_kl_div(&pt, Reduction::Sum, false)?;
    Ok(total.f_div_scalar(s[0] as f64)?)
}

/// Causal-LM loss: logits `[B, T, V]` predict `labels [B, T]` shifted by one; `ignore_index`
/// positions do not count; mean over the counted tokens (NaN when none count, as torch).
pub fn lm_loss(logits: &Tensor, labels: &Tensor, ignore_index: i64) -> Result<Tensor> {
    let s = check::dims(logits, "logits", 3, "[B, T, V]")?;
    let l = check::dims(labels, "labels", 2, "[B, T]")?;
    if l[0] != s[0] || l[1] != s[1] {
        return Err(Error::shape(format!(
            "labels: expected shape [{}, {}] (as logits [B, T, V]), got {l:?}",
            s[0], s[1]
        )));
    }
    check::float_kind(logits, "logits")?;
    check::same_device(labels, "labels", logits.device(), "logits")?;
    let lk = check::kind_of(labels, "labels")?;
    if !matches!(lk, Kind::Int64 | Kind::Int) {
        return Err(Error::dtype(format!(
            "labels: expected int64 token ids, got {}",
            check::kind_name(lk)
        )));
    }
    let labels = labels.f_to_kind(Kind::Int64)?;
    let valid = labels.f_ne(ignore_index)?;
    if bool::try_from(valid.f_any()?)? {
        let v = labels.f_masked_select(&valid)?;
        let (lo, hi) = (i64::try_from(v.f_min()?)?, i64::try_from(v.f_max()?)?);
        if lo < 0 || hi >= s[2] {
            return Err(Error::config(format!(
                "labels: token ids must lie in [0, {}] or equal ignore_index {ignore_index}, got values in [{lo}, {hi}]",
                s[2] - 1
            )));
        }
    }
    let t = s[1];
    let shift_logits = logits.f_narrow(1, 0, t - 1)?.f_reshape([-1, s[2]])?;
    let shift_labels = labels.f_narrow(1, 1, t - 1)?.f_reshape([-1])?;
    // Upcast like transformers' ForCausalLMLoss (logits.float()).
    let shift_logits = if shift_logits.f_kind()? == Kind::Double {
        shift_logits
    } else {
        shift_logits.f_to_kind(Kind::Float)?
    };
    Ok(shift_logits.f_cross_entropy_loss::<Tensor>(
        &shift_labels,
        None,
        Reduction::Mean,
        ignore_index,
        0.0,
    )?)
}

/// The prototype bank's tensors (Dia-LLaMA's names): `proj` maps features `[.., D]` to `[.., P]`;
/// `pos`/`neg` are `[L, 1, P]` memories; `temp` a scalar temperature.
pub struct PrototypeBank<'a> {
    pub proj_weight: &'a Tensor,
    pub proj_bias: Option<&'a Tensor>,
    pub pos: &'a Tensor,
    pub neg: &'a Tensor,
    pub temp: &'a Tensor,
}

fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    // F.normalize: x / max(||x||_2, 1e-12)
    let n = x
        .f_linalg_norm(2.0, [-1i64].as_slice(), true, None::<Kind>)?
        .f_clamp_min(1e-12)?;
    Ok(x.f_div(&n)?)
}

impl PrototypeBank<'_> {
    fn check(&self, features: &Tensor) -> Result<(i64, i64)> {
        let f = check::dims(
            features,
            "features",
            3,
            "[B, L, D] (one pooled feature per label)",
        )?;
        let kind = check::float_kind(features, "features")?;
        let w = check::dims(self.proj_weight, "proj.weight", 2, "[P, D]")?;
        if w[1] != f[2] {
            return Err(Error::shape(format!(
                "features: expected feature size {} (proj.weight [{}, {}]), got {f:?}",
                w[1], w[0], w[1]
            )));
        }
        for (t, name) in [
            (self.pos, "pos_sample_memory"),
            (self.neg, "neg_sample_memory"),
        ] {
            let s = check::dims(t, name, 3, "[L, 1, P]")?;
            if s != [f[1], 1, w[0]] {
                return Err(Error::shape(format!(
                    "{name}: expected shape [{}, 1, {}] (labels of features, P of proj), got {s:?}",
                    f[1], w[0]
                )));
            }
            check::same_kind(t, name, kind, "features")?;
            check::same_device(t, name, features.device(), "features")?;
        }
        check::same_kind(self.proj_weight, "proj.weight", kind, "features")?;
        check::same_device(
            self.proj_weight,
            "proj.weight",
            features.device(),
            "features",
        )?;
        if self.temp.numel() != 1 {
            return Err(Error::shape(format!(
                "temp: expected a scalar, got shape {:?}",
                self.temp.size()
            )));
        }
        Ok((f[0], f[1]))
    }

    /// Cosine similarities over the temperature to the positive and negative prototype of each
    /// label: `(s_pos [B, L], s_neg [B, L])`.
    pub fn similarities(&self, features: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check(features)?;
        let z = l2_normalize(&features.f_linear(self.proj_weight, self.proj_bias)?)?; // [B, L, P]
        let pos = l2_normalize(&self.pos.f_squeeze_dim(1)?)?; // [L, P]
        let neg = l2_normalize(&self.neg.f_squeeze_dim(1)?)?;
        let sp = z
            .f_mul(&pos)?
            .f_sum_dim_intlist([-1i64].as_slice(), false, None::<Kind>)?
            .f_div(self.temp)?;
        let sn = z
            .f_mul(&neg)?
            .f_sum_dim_intlist([-1i64].as_slice(), false, None::<Kind>)?
            .f_div(self.temp)?;
        Ok((sp, sn))
    }
}

/// InfoNCE against the label's matching prototype: for each (sample, label) the logits are
/// `[s_match, s_other]` with target 0; mean cross-entropy over `B * L`. Labels are 0 (negative)
/// or 1 (positive), `[B, L]`.
pub fn prototype_loss(
    bank: &PrototypeBank<'_>,
    features: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    let (b, l) = bank.check(features)?;
    let ls = check::dims(labels, "labels", 2, "[B, L] of 0/1")?;
    if ls != [b, l] {
        return Err(Error::shape(format!(
            "labels: expected shape [{b}, {l}] (as features [B, L, D]), got {ls:?}"
        )));
    }
    check::same_device(labels, "labels", features.device(), "features")?;
    let labels = labels.f_to_kind(Kind::Int64)?;
    if b * l > 0 {
        let (lo, hi) = (
            i64::try_from(labels.f_min()?)?,
            i64::try_from(labels.f_max()?)?,
        );
        if lo < 0 || hi > 1 {
            return Err(Error::config(format!(
                "labels: expected 0 (negative) or 1 (positive), got values in [{lo}, {hi}]"
            )));
        }
    }
    let (sp, sn) = bank.similarities(features)?;
    let is_pos = labels.f_eq(1)?;
    let matching = sp.f_where_self(&is_pos, &sn)?;
    let other = sn.f_where_self(&is_pos, &sp)?;
    let logits = Tensor::f_stack(&[matching, other], -1)?.f_reshape([-1, 2])?;
    let target = Tensor::f_zeros([b * l], (Kind::Int64, features.device()))?;
    Ok(logits.f_cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn focal_with_gamma_zero_is_cross_entropy() -> Result<()> {
        let logits = Tensor::randn([6, 5], (Kind::Double, Device::Cpu));
        let target = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0]);
        let f = focal_loss(&logits, &target, None, 0.0, Reduce::Mean)?;
        let ce =
            logits.f_cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, -100, 0.0)?;
        assert!(f64::try_from((f - ce).abs())? < 1e-12);
        Ok(())
    }

    #[test]
    fn out_of_range_targets_are_refused() {
        let logits = Tensor::randn([2, 5], (Kind::Float, Device::Cpu));
        let target = Tensor::from_slice(&[0i64, 5]);
        assert!(matches!(
            focal_loss(&logits, &target, None, 2.0, Reduce::Mean),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn kl_of_equal_distributions_is_zero() -> Result<()> {
        let s = Tensor::randn([3, 7], (Kind::Double, Device::Cpu));
        let v = f64::try_from(kl_distill(&s, &s, 2.0)?)?;
        assert!(v.abs() < 1e-12);
        Ok(())
    }
}
