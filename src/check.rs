//! Argument checks shared by every tensor entry point: they turn a would-be libtorch failure
//! into a short voxlm error naming the argument, what was expected and what was given.

use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// Human name of a tensor's element type, torch-style (`float32`, `bfloat16`).
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Uint8 => "uint8",
        Kind::Int8 => "int8",
        Kind::Int16 => "int16",
        Kind::Int => "int32",
        Kind::Int64 => "int64",
        Kind::Half => "float16",
        Kind::Float => "float32",
        Kind::Double => "float64",
        Kind::BFloat16 => "bfloat16",
        Kind::Bool => "bool",
        Kind::ComplexFloat => "complex64",
        Kind::ComplexDouble => "complex128",
        _ => "an unsupported dtype",
    }
}

/// Human name of a device, torch-style (`cpu`, `cuda:0`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

/// The element type of `t`, or a DTypeError for types tch cannot name.
pub fn kind_of(t: &Tensor, name: &str) -> Result<Kind> {
    t.f_kind()
        .map_err(|_| Error::dtype(format!("{name}: dtype not supported by voxlm")))
}

/// The tensor's element type must be a floating type voxlm computes in.
pub fn float_kind(t: &Tensor, name: &str) -> Result<Kind> {
    let k = kind_of(t, name)?;
    match k {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => Ok(k),
        other => Err(Error::dtype(format!(
            "{name}: expected a floating tensor (float32, float64, bfloat16, float16), got {}",
            kind_name(other)
        ))),
    }
}

/// `t` must have `expected` as its dtype.
pub fn same_kind(t: &Tensor, name: &str, expected: Kind, ref_name: &str) -> Result<()> {
    let k = kind_of(t, name)?;
    if k != expected {
        return Err(Error::dtype(format!(
            "{name}: expected dtype {} (as {ref_name}), got {}",
            kind_name(expected),
            kind_name(k)
        )));
    }
    Ok(())
}

/// `t` must live on `expected`.
pub fn same_device(t: &Tensor, name: &str, expected: Device, ref_name: &str) -> Result<()> {
    let d = t.device();
    if d != expected {
        return Err(Error::device(format!(
            "{name}: expected a tensor on {} (as {ref_name}), got one on {}",
            device_name(expected),
            device_name(d)
        )));
    }
    Ok(())
}

/// `t` must have exactly `dims` dimensions; returns its size.
pub fn dims(t: &Tensor, name: &str, dims: usize, layout: &str) -> Result<Vec<i64>> {
    let s = t.size();
    if s.len() != dims {
        return Err(Error::shape(format!(
            "{name}: expected a {dims}-d tensor {layout}, got shape {s:?}"
        )));
    }
    Ok(s)
}

/// `t` must have at least `min` dimensions; returns its size.
pub fn min_dims(t: &Tensor, name: &str, min: usize, layout: &str) -> Result<Vec<i64>> {
    let s = t.size();
    if s.len() < min {
        return Err(Error::shape(format!(
            "{name}: expected at least {min} dimensions {layout}, got shape {s:?}"
        )));
    }
    Ok(s)
}

/// A finite, range-checked float argument.
pub fn in_range(v: f64, name: &str, lo: f64, hi: f64) -> Result<f64> {
    if !v.is_finite() || v < lo || v > hi {
        return Err(Error::config(format!(
            "{name}: expected a value in [{lo}, {hi}], got {v}"
        )));
    }
    Ok(v)
}
