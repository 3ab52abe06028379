//! The LLaMA-family decoder on libtorch: HF config and checkpoints, forward with autograd, KV-cache
//! generation. Tensors carry HF names (`model.layers.{i}.self_attn.q_proj.weight`), so HF
//! checkpoints and PEFT adapters load without conversion. Free of pyo3.

pub mod cache;
pub mod config;
mod cpu_kernels;
pub mod decode_cpu;
mod expf;
pub mod generate;
pub mod model;
pub mod rope;
pub mod safetensors_io;
pub mod tokenizer;

pub use config::{LlamaConfig, RopeScaling};
pub use model::{Llama, LlamaOutput};
