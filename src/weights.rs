//! One weight-loading helper for every Rust module, in the spirit of candle's `VarBuilder`.
//!
//! A module's constructor receives a `{name: tensor}` map (Python-owned parameters bound by
//! reference, or a checkpoint) and takes what it needs through a [`Vb`] (a prefix into a shared
//! [`Weights`] store):
//! * [`Vb::pp`] descends into a sub-module (`vb.pp("layers").pp(3)` -> `layers.3.`);
//! * [`Vb::take`] takes a required tensor of an exact shape, [`Vb::take_dims`] one of a given rank
//!   whose sizes define the module (the first layer's width), [`Vb::opt`] an optional one;
//! * [`Vb::linear`] (weight, required or optional bias, LoRA pair when the adapter settings name
//!   the module), [`Vb::layer_norm`], [`Vb::rms_norm`];
//! * every floating tensor must share the dtype and device of the first one taken (a DTypeError
//!   or DeviceError naming both), except those taken with [`Vb::take_any_kind`] (buffers such as
//!   the rotary `inv_freq`);
//! * [`Weights::finish`] refuses tensors nobody took ("unexpected tensor ...").
//!
//! Every size is checked before it is used, so a misshapen or rank-less tensor is a named
//! CheckpointError, never an index out of bounds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Display;

use tch::{Device, Kind, Tensor};

use crate::adapters::LoraSettings;
use crate::check;
use crate::error::{Error, Result};
use crate::ops::{LoraLinear, LoraWeights};

/// Whether a linear layer's bias must be present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    /// `{p}.bias` must be there.
    Required,
    /// Taken when present (bias tuning adds biases to bias-free layers).
    Optional,
}

struct Store {
    tensors: HashMap<String, Tensor>,
    reference: Option<(String, Kind, Device)>,
}

/// The tensors of one module under construction; see the module docs.
pub struct Weights {
    store: RefCell<Store>,
    lora: LoraSettings,
    what: String,
}

impl Weights {
    /// `what` names the module in errors: "unexpected tensor x (not part of {what})".
    pub fn new(tensors: HashMap<String, Tensor>, what: impl Into<String>) -> Self {
        Weights {
            store: RefCell::new(Store {
                tensors,
                reference: None,
            }),
            lora: LoraSettings::new(),
            what: what.into(),
        }
    }

    /// LoRA settings by module prefix (`{prefix}.lora_A.weight`/`lora_B.weight` are then taken).
    pub fn with_lora(mut self, lora: &LoraSettings) -> Self {
        self.lora = lora.clone();
        self
    }

    /// A builder at the root (no prefix).
    pub fn root(&self) -> Vb<'_> {
        Vb {
            w: self,
            prefix: String::new(),
        }
    }

    /// The dtype and device of the floating tensors taken so far (None before the first).
    pub fn reference(&self) -> Option<(Kind, Device)> {
        self.store
            .borrow()
            .reference
            .as_ref()
            .map(|(_, k, d)| (*k, *d))
    }

    /// Drop a tensor nobody needs (a buffer such as `position_ids`), if present.
    pub fn discard(&self, name: &str) {
        self.store.borrow_mut().tensors.remove(name);
    }

    /// Every tensor must have been taken: else a CheckpointError naming the first few left over.
    pub fn finish(self) -> Result<()> {
        let store = self.store.into_inner();
        if store.tensors.is_empty() {
            return Ok(());
        }
        let mut left: Vec<&String> = store.tensors.keys().collect();
        left.sort();
        let shown: Vec<&str> = left.iter().take(3).map(|s| s.as_str()).collect();
        Err(Error::checkpoint(format!(
            "unexpected tensor{} {}{} (not part of {})",
            if left.len() > 1 { "s" } else { "" },
            shown.join(", "),
            if left.len() > 3 {
                format!(" and {} more", left.len() - 3)
            } else {
                String::new()
            },
            self.what
        )))
    }

    fn remove(&self, name: &str) -> Option<Tensor> {
        self.store.borrow_mut().tensors.remove(name)
    }

    fn contains(&self, name: &str) -> bool {
        self.store.borrow().tensors.contains_key(name)
    }

    /// Floating tensors must agree in dtype and device with the first one taken.
    fn consistent(&self, name: &str, t: &Tensor) -> Result<()> {
        let kind = check::kind_of(t, name)?;
        let is_float = matches!(
            kind,
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        );
        let mut store = self.store.borrow_mut();
        match &store.reference {
            None => {
                if is_float {
                    store.reference = Some((name.to_string(), kind, t.device()));
                } else {
                    return Err(Error::dtype(format!(
                        "{name}: expected a floating tensor (float32, float64, bfloat16, float16), got {}",
                        check::kind_name(kind)
                    )));
                }
                Ok(())
            }
            Some((ref_name, rk, rd)) => {
                check::same_kind(t, name, *rk, ref_name)?;
                check::same_device(t, name, *rd, ref_name)
            }
        }
    }
}

/// A prefix into [`Weights`]: cheap to clone, one per sub-module.
#[derive(Clone)]
pub struct Vb<'a> {
    w: &'a Weights,
    prefix: String,
}

fn shape_error(name: &str, expected: impl Display, got: &[i64]) -> Error {
    Error::checkpoint(format!("{name}: expected shape {expected}, got {got:?}"))
}

impl<'a> Vb<'a> {
    /// The builder of sub-module `name` (`"layers"`, `3`, `"self_attn.q_proj"`).
    pub fn pp(&self, name: impl Display) -> Vb<'a> {
        Vb {
            w: self.w,
            prefix: self.path(name),
        }
    }

    /// The full name of `name` under this prefix.
    pub fn path(&self, name: impl Display) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// This builder's prefix (`""` at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The sizes of `name`, if it is (still) there, without taking it.
    pub fn shape_of(&self, name: impl Display) -> Option<Vec<i64>> {
        self.w
            .store
            .borrow()
            .tensors
            .get(&self.path(name))
            .map(Tensor::size)
    }

    /// Whether `name` is (still) there.
    pub fn contains(&self, name: impl Display) -> bool {
        self.w.contains(&self.path(name))
    }

    fn required(&self, name: &str) -> Result<Tensor> {
        self.w.remove(name).ok_or_else(|| {
            Error::checkpoint(format!("missing tensor {name} (for {})", self.w.what))
        })
    }

    /// A required floating tensor of exactly `shape`.
    pub fn take(&self, name: impl Display, shape: &[i64]) -> Result<Tensor> {
        let n = self.path(name);
        let t = self.required(&n)?;
        let s = t.size();
        if s != shape {
            return Err(shape_error(&n, format!("{shape:?}"), &s));
        }
        self.w.consistent(&n, &t)?;
        Ok(t)
    }

    /// A required floating tensor of rank `dims` (sizes not yet known: they define the module);
    /// returns it with its sizes. `layout` describes the axes for the error (`"[out, in]"`).
    pub fn take_dims(
        &self,
        name: impl Display,
        dims: usize,
        layout: &str,
    ) -> Result<(Tensor, Vec<i64>)> {
        let n = self.path(name);
        let t = self.required(&n)?;
        let s = t.size();
        if s.len() != dims || s.iter().any(|&d| d <= 0) {
            return Err(shape_error(
                &n,
                format!("{layout} ({dims} positive sizes)"),
                &s,
            ));
        }
        self.w.consistent(&n, &t)?;
        Ok((t, s))
    }

    /// An optional floating tensor of exactly `shape`.
    pub fn opt(&self, name: impl Display, shape: &[i64]) -> Result<Option<Tensor>> {
        let n = self.path(&name);
        if !self.w.contains(&n) {
            return Ok(None);
        }
        self.take(name, shape).map(Some)
    }

    /// A required tensor of exactly `shape` exempt from the dtype/device agreement (a float32
    /// buffer beside bfloat16 weights, e.g. `inv_freq`).
    pub fn take_any_kind(&self, name: impl Display, shape: &[i64]) -> Result<Option<Tensor>> {
        let n = self.path(name);
        match self.w.remove(&n) {
            None => Ok(None),
            Some(t) => {
                let s = t.size();
                if s != shape {
                    return Err(shape_error(&n, format!("{shape:?}"), &s));
                }
                Ok(Some(t))
            }
        }
    }

    /// `{p}.weight [out, in]`, the bias `[out]` per `bias`, and the LoRA pair
    /// `{p}.lora_A.weight [r, in]`, `{p}.lora_B.weight [out, r]` when the adapter settings
    /// name `{p}` (this builder's prefix).
    pub fn linear(&self, out: i64, inp: i64, bias: Bias) -> Result<LoraLinear> {
        let weight = self.take("weight", &[out, inp])?;
        let b = match bias {
            Bias::Required => Some(self.take("bias", &[out])?),
            Bias::Optional => self.opt("bias", &[out])?,
        };
        let pair = match self.w.lora.get(&self.prefix) {
            None => None,
            Some(&(scaling, dropout)) => {
                let (a, sa) = self
                    .pp("lora_A")
                    .take_dims("weight", 2, "[r, in_features]")?;
                let r = sa[0];
                if sa[1] != inp {
                    return Err(shape_error(
                        &self.path("lora_A.weight"),
                        format!("[r, {inp}]"),
                        &sa,
                    ));
                }
                let b = self.pp("lora_B").take("weight", &[out, r])?;
                Some(LoraWeights {
                    a,
                    b,
                    scaling,
                    dropout,
                })
            }
        };
        LoraLinear::new(weight, b, pair).map_err(|e| match e {
            Error::Shape(m) => Error::checkpoint(format!("{}: {m}", self.prefix)),
            o => o,
        })
    }

    /// A linear whose sizes are read from its weight `{p}.weight [out, in]` (the module's
    /// widths are defined by it): `(layer, out, in)`. `out`/`inp` given as `Some` must match.
    pub fn linear_any(
        &self,
        out: Option<i64>,
        inp: Option<i64>,
        bias: Bias,
    ) -> Result<(LoraLinear, i64, i64)> {
        let n = self.path("weight");
        let size = self.w.store.borrow().tensors.get(&n).map(Tensor::size);
        let s = match size {
            Some(s) if s.len() == 2 && s.iter().all(|&d| d > 0) => s,
            _ => {
                // missing or misshapen: the checked path names it
                let (_, s) = self.take_dims("weight", 2, "[out, in]")?;
                return Err(shape_error(&n, "[out, in]", &s));
            }
        };
        let (o, i) = (out.unwrap_or(s[0]), inp.unwrap_or(s[1]));
        Ok((self.linear(o, i, bias)?, o, i))
    }

    /// LayerNorm `(weight [d], bias [d])`.
    pub fn layer_norm(&self, d: i64) -> Result<(Tensor, Tensor)> {
        Ok((self.take("weight", &[d])?, self.take("bias", &[d])?))
    }

    /// RMSNorm `weight [d]`.
    pub fn rms_norm(&self, d: i64) -> Result<Tensor> {
        self.take("weight", &[d])
    }
}

/// A size argument of a module (layer count, head count, width) must be positive.
pub fn positive(v: i64, name: &str) -> Result<i64> {
    if v <= 0 {
        return Err(Error::config(format!(
            "{name}: expected a positive integer, got {v}"
        )));
    }
    Ok(v)
}

/// A count (layers, blocks) must be in `0..=max`: an absurd count is refused before anything is
/// allocated for it.
pub fn count(v: i64, name: &str, max: i64) -> Result<usize> {
    if !(0..=max).contains(&v) {
        return Err(Error::config(format!(
            "{name}: expected an integer in [0, {max}], got {v}"
        )));
    }
    Ok(v as usize)
}

/// `dim` split over `heads` attention heads: the head width, or a ConfigError.
pub fn head_dim(dim: i64, heads: i64, dim_name: &str, heads_name: &str) -> Result<i64> {
    positive(heads, heads_name)?;
    if dim % heads != 0 {
        return Err(Error::config(format!(
            "{dim_name} {dim} must be divisible by {heads_name} {heads}"
        )));
    }
    Ok(dim / heads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[i64], kind: Kind) -> Tensor {
        Tensor::zeros(shape, (kind, Device::Cpu))
    }

    fn map(items: &[(&str, Tensor)]) -> HashMap<String, Tensor> {
        items
            .iter()
            .map(|(n, t)| (n.to_string(), t.shallow_clone()))
            .collect()
    }

    #[test]
    fn prefixes_shapes_and_leftovers() -> Result<()> {
        let w = Weights::new(
            map(&[
                ("a.lin.weight", t(&[3, 4], Kind::Float)),
                ("a.lin.bias", t(&[3], Kind::Float)),
                ("a.ln.weight", t(&[4], Kind::Float)),
                ("a.ln.bias", t(&[4], Kind::Float)),
                ("extra", t(&[1], Kind::Float)),
            ]),
            "a test module",
        );
        let vb = w.root().pp("a");
        let l = vb.pp("lin").linear(3, 4, Bias::Required)?;
        assert!(l.bias.is_some());
        let _ln = vb.pp("ln").layer_norm(4)?;
        match w.finish() {
            Err(Error::Checkpoint(m)) => {
                assert!(m.contains("unexpected tensor extra"), "{m}");
                assert!(m.contains("a test module"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn wrong_shape_rank_and_missing_are_named() {
        let w = Weights::new(
            map(&[("x", t(&[3, 4], Kind::Float)), ("y", t(&[], Kind::Float))]),
            "m",
        );
        let vb = w.root();
        assert!(
            matches!(vb.take("x", &[4, 3]), Err(Error::Checkpoint(m)) if m.contains("x: expected shape [4, 3]"))
        );
        assert!(
            matches!(vb.take_dims("y", 2, "[a, b]"), Err(Error::Checkpoint(m)) if m.contains("y: expected shape [a, b]"))
        );
        assert!(
            matches!(vb.take("z", &[1]), Err(Error::Checkpoint(m)) if m.contains("missing tensor z"))
        );
        assert!(matches!(
            vb.linear_any(None, Some(4), Bias::Optional),
            Err(Error::Checkpoint(_))
        ));
    }

    #[test]
    fn dtype_and_device_must_agree() {
        let w = Weights::new(
            map(&[
                ("a", t(&[2], Kind::Float)),
                ("b", t(&[2], Kind::Double)),
                ("inv", t(&[2], Kind::Double)),
            ]),
            "m",
        );
        let vb = w.root();
        assert!(vb.take("a", &[2]).is_ok());
        assert!(matches!(vb.take("b", &[2]), Err(Error::DType(m)) if m.contains("as a")));
        assert!(matches!(vb.take_any_kind("inv", &[2]), Ok(Some(_))));
        let w = Weights::new(map(&[("i", t(&[2], Kind::Int64))]), "m");
        assert!(matches!(w.root().take("i", &[2]), Err(Error::DType(_))));
    }

    #[test]
    fn lora_pairs_are_taken_and_checked() -> Result<()> {
        let mut lora = LoraSettings::new();
        lora.insert("q".into(), (2.0, 0.0));
        let w = Weights::new(
            map(&[
                ("q.weight", t(&[3, 4], Kind::Float)),
                ("q.lora_A.weight", t(&[2, 4], Kind::Float)),
                ("q.lora_B.weight", t(&[3, 2], Kind::Float)),
            ]),
            "m",
        )
        .with_lora(&lora);
        let l = w.root().pp("q").linear(3, 4, Bias::Optional)?;
        assert!(l.lora.is_some() && l.bias.is_none());
        w.finish()?;
        let w = Weights::new(
            map(&[
                ("q.weight", t(&[3, 4], Kind::Float)),
                ("q.lora_A.weight", t(&[2, 5], Kind::Float)),
                ("q.lora_B.weight", t(&[3, 2], Kind::Float)),
            ]),
            "m",
        )
        .with_lora(&lora);
        assert!(matches!(
            w.root().pp("q").linear(3, 4, Bias::Optional),
            Err(Error::Checkpoint(_))
        ));
        Ok(())
    }

    #[test]
    fn size_arguments() {
        assert!(positive(0, "heads").is_err());
        assert!(count(-1, "layers", 10).is_err());
        assert!(count(11, "layers", 10).is_err());
        assert_eq!(head_dim(8, 2, "dim", "heads").ok(), Some(4));
        assert!(matches!(
            head_dim(8, 0, "dim", "heads"),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            head_dim(8, 3, "dim", "heads"),
            Err(Error::Config(_))
        ));
    }
}
