//! Tensor operations of the core, on libtorch with autograd. Free of pyo3.

pub mod lora;

pub use lora::{lora_linear, LoraLinear, LoraWeights};
