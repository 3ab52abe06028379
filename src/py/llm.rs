//! `voxlm._core` LLaMA: config parsing, safetensors I/O, the model core bound to Python-owned
//! parameters, generation, and the tokenizer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tch::{Device, Kind, Tensor};

use crate::bridge;
use crate::error::Error;
use crate::llm::generate::{self, GenerationConfig};
use crate::llm::model::{ForwardOptions, Input, Prepared as Tables};
use crate::llm::rope::rope_inv_freq;
use crate::llm::safetensors_io;
use crate::llm::tokenizer::Tokenizer;
use crate::llm::{Llama, LlamaConfig};

fn parse_kind(name: &str) -> PyResult<Kind> {
    Ok(match name.trim_start_matches("torch.") {
        "float32" | "float" => Kind::Float,
        "float64" | "double" => Kind::Double,
        "bfloat16" => Kind::BFloat16,
        "float16" | "half" => Kind::Half,
        other => {
            return Err(Error::dtype(format!(
                "dtype: expected float32, float64, bfloat16 or float16, got {other}"
            ))
            .into())
        }
    })
}

fn parse_device(name: &str) -> PyResult<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        s if s.starts_with("cuda:") => {
            let i: usize = s[5..]
                .parse()
                .map_err(|_| Error::device(format!("device: cannot parse '{s}'")))?;
            if i >= tch::Cuda::device_count() as usize {
                return Err(Error::device(format!(
                    "device: {s} is not available ({} CUDA devices)",
                    tch::Cuda::device_count()
                ))
                .into());
            }
            Ok(Device::Cuda(i))
        }
        other => Err(Error::device(format!(
            "device: expected 'cpu' or 'cuda[:i]', got '{other}'"
        ))
        .into()),
    }
}

/// Validate a HF `config.json` text; returns the normalised config as JSON.
#[pyfunction]
pub fn parse_llama_config(text: &str) -> PyResult<String> {
    Ok(LlamaConfig::from_json(text)?.to_json())
}

/// The rotary inverse frequencies `[head_dim / 2]` (float32) of a config.
#[pyfunction]
pub fn llama_rope_inv_freq<'py>(py: Python<'py>, config_json: &str) -> PyResult<Bound<'py, PyAny>> {
    let cfg = LlamaConfig::from_json(config_json)?;
    bridge::to_py(py, &rope_inv_freq(&cfg)?)
}

/// The safetensors files of a checkpoint directory (single file or index + shards).
#[pyfunction]
pub fn checkpoint_files(path: PathBuf) -> PyResult<Vec<PathBuf>> {
    Ok(safetensors_io::checkpoint_files(&path)?)
}

/// Read a checkpoint (memory-mapped) into `{name: tensor}` with floats in `dtype` on `device`.
#[pyfunction]
#[pyo3(signature = (path, dtype=None, device="cpu"))]
pub fn load_safetensors<'py>(
    py: Python<'py>,
    path: PathBuf,
    dtype: Option<&str>,
    device: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let kind = dtype.map(parse_kind).transpose()?;
    let dev = parse_device(device)?;
    let tensors = py.detach(move || -> crate::Result<_> {
        let files = safetensors_io::checkpoint_files(&path)?;
        safetensors_io::load(&files, kind, dev)
    })?;
    let d = PyDict::new(py);
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    for n in names {
        d.set_item(&n, bridge::to_py(py, &tensors[&n])?)?;
    }
    Ok(d)
}

/// Write `{name: tensor}` to one safetensors file (metadata `{"format": "pt"}`).
#[pyfunction]
pub fn save_safetensors(
    py: Python<'_>,
    tensors: &Bound<'_, PyDict>,
    path: PathBuf,
) -> PyResult<()> {
    let mut items = Vec::with_capacity(tensors.len());
    for (k, v) in tensors.iter() {
        let name: String = k.extract()?;
        items.push((name.clone(), bridge::tensor(&v, &name)?));
    }
    py.detach(move || safetensors_io::save(&items, &path))?;
    Ok(())
}

/// `(cos, sin, mask)` as returned to Python.
type Prepared<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
);

/// A LLaMA forward bound by reference to Python-owned parameters (HF names).
#[pyclass(module = "voxlm._core", name = "LlamaCore")]
pub struct PyLlama {
    inner: crate::py::Core<Llama>,
}

fn input<'a>(ids: &'a Option<Tensor>, embeds: &'a Option<Tensor>) -> crate::Result<Input<'a>> {
    match (ids, embeds) {
        (Some(i), None) => Ok(Input::Ids(i)),
        (None, Some(e)) => Ok(Input::Embeds(e)),
        _ => Err(Error::config(
            "pass exactly one of input_ids and inputs_embeds",
        )),
    }
}

#[pymethods]
impl PyLlama {
    /// `lora`: `{module prefix: (scaling, dropout)}` for linears whose tensors include
    /// `{prefix}.lora_A.weight` and `{prefix}.lora_B.weight`.
    #[new]
    #[pyo3(signature = (config_json, params, lora=None))]
    fn new(
        config_json: &str,
        params: &Bound<'_, PyDict>,
        lora: Option<HashMap<String, (f64, f64)>>,
    ) -> PyResult<Self> {
        let cfg = LlamaConfig::from_json(config_json)?;
        let model = Llama::new(cfg, bridge::tensor_dict(params)?, &lora.unwrap_or_default())?;
        Ok(PyLlama {
            inner: crate::py::Core::new(model),
        })
    }

    /// Returns `(logits, hidden_states)`; hidden states only when asked for.
    #[pyo3(signature = (input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                        output_hidden_states=false, last_only=false, training=false))]
    #[allow(clippy::too_many_arguments)]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        input_ids: Option<&Bound<'py, PyAny>>,
        inputs_embeds: Option<&Bound<'py, PyAny>>,
        attention_mask: Option<&Bound<'py, PyAny>>,
        position_ids: Option<&Bound<'py, PyAny>>,
        output_hidden_states: bool,
        last_only: bool,
        training: bool,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyList>)> {
        let ids = bridge::opt_tensor(input_ids, "input_ids")?;
        let emb = bridge::opt_tensor(inputs_embeds, "inputs_embeds")?;
        let mask = bridge::opt_tensor(attention_mask, "attention_mask")?;
        let pos = bridge::opt_tensor(position_ids, "position_ids")?;
        let inner = &self.inner;
        let out = py.detach(move || -> crate::Result<_> {
            let m = inner.lock("LlamaCore")?;
            m.forward(
                input(&ids, &emb)?,
                None,
                &ForwardOptions {
                    attention_mask: mask.as_ref(),
                    position_ids: pos.as_ref(),
                    output_hidden_states,
                    last_only,
                    train: training,
                    fused: None,
                },
            )
        })?;
        let hs = PyList::empty(py);
        for h in &out.hidden_states {
            hs.append(bridge::to_py(py, h)?)?;
        }
        Ok((bridge::to_py(py, &out.logits)?, hs))
    }

    /// Rotary tables and attention mask for hidden states `[B, T, H]`: `(cos, sin, mask | None)`.
    #[pyo3(signature = (hidden_states, attention_mask=None, position_ids=None))]
    fn prepare<'py>(
        &self,
        py: Python<'py>,
        hidden_states: &Bound<'py, PyAny>,
        attention_mask: Option<&Bound<'py, PyAny>>,
        position_ids: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Prepared<'py>> {
        let h = bridge::tensor(hidden_states, "hidden_states")?;
        let mask = bridge::opt_tensor(attention_mask, "attention_mask")?;
        let pos = bridge::opt_tensor(position_ids, "position_ids")?;
        let inner = &self.inner;
        let Tables {
            cos: c,
            sin: s,
            mask: m,
        } = py.detach(move || -> crate::Result<_> {
            let model = inner.lock("LlamaCore")?;
            model.check_embeds(&h)?;
            model.prepare(&h, mask.as_ref(), pos.as_ref(), 0)
        })?;
        let m = m.map(|m| bridge::to_py(py, &m)).transpose()?;
        Ok((bridge::to_py(py, &c)?, bridge::to_py(py, &s)?, m))
    }

    /// Decoder layer `index` on hidden states `[B, T, H]` (for activation checkpointing).
    #[pyo3(signature = (index, hidden_states, cos, sin, mask=None, training=false))]
    #[allow(clippy::too_many_arguments)]
    fn layer<'py>(
        &self,
        py: Python<'py>,
        index: i64,
        hidden_states: &Bound<'py, PyAny>,
        cos: &Bound<'py, PyAny>,
        sin: &Bound<'py, PyAny>,
        mask: Option<&Bound<'py, PyAny>>,
        training: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let index = usize::try_from(index).map_err(|_| {
            Error::config(format!("index: expected a layer index >= 0, got {index}"))
        })?;
        let h = bridge::tensor(hidden_states, "hidden_states")?;
        let (c, s) = (bridge::tensor(cos, "cos")?, bridge::tensor(sin, "sin")?);
        let m = bridge::opt_tensor(mask, "mask")?;
        let inner = &self.inner;
        let out = py.detach(move || -> crate::Result<_> {
            let model = inner.lock("LlamaCore")?;
            let prep = Tables {
                cos: c,
                sin: s,
                mask: m,
            };
            model.layer(index, &h, &prep, training)
        })?;
        bridge::to_py(py, &out)
    }

    /// Final norm and LM head: `(normed, logits)`.
    fn head<'py>(
        &self,
        py: Python<'py>,
        hidden_states: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let h = bridge::tensor(hidden_states, "hidden_states")?;
        let inner = &self.inner;
        let (n, l) = py.detach(move || -> crate::Result<_> {
            let model = inner.lock("LlamaCore")?;
            model.head(&h, false)
        })?;
        Ok((bridge::to_py(py, &n)?, bridge::to_py(py, &l)?))
    }

    /// Token embeddings of `input_ids` `[B, T]`.
    fn embed<'py>(
        &self,
        py: Python<'py>,
        input_ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ids = bridge::tensor(input_ids, "input_ids")?;
        let inner = &self.inner;
        let e = py.detach(move || inner.lock("LlamaCore")?.embed(&ids))?;
        bridge::to_py(py, &e)
    }

    /// Decode in Rust (GIL released except around `callback(tokens)`); returns new tokens `[B, n]`.
    #[pyo3(signature = (input_ids=None, inputs_embeds=None, attention_mask=None, max_new_tokens=20,
                        do_sample=false, temperature=1.0, top_k=0, top_p=1.0, num_beams=1,
                        repetition_penalty=1.0, length_penalty=1.0, eos_token_ids=Vec::new(),
                        pad_token_id=0, callback=None, cpu_kernels=true))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        input_ids: Option<&Bound<'py, PyAny>>,
        inputs_embeds: Option<&Bound<'py, PyAny>>,
        attention_mask: Option<&Bound<'py, PyAny>>,
        max_new_tokens: i64,
        do_sample: bool,
        temperature: f64,
        top_k: i64,
        top_p: f64,
        num_beams: i64,
        repetition_penalty: f64,
        length_penalty: f64,
        eos_token_ids: Vec<i64>,
        pad_token_id: i64,
        callback: Option<Py<PyAny>>,
        cpu_kernels: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ids = bridge::opt_tensor(input_ids, "input_ids")?;
        let emb = bridge::opt_tensor(inputs_embeds, "inputs_embeds")?;
        let mask = bridge::opt_tensor(attention_mask, "attention_mask")?;
        let cfg = GenerationConfig {
            max_new_tokens,
            do_sample,
            temperature,
            top_k,
            top_p,
            num_beams,
            repetition_penalty,
            length_penalty,
            eos_token_ids,
            pad_token_id,
            cpu_kernels,
        };
        let cb_err: Mutex<Option<PyErr>> = Mutex::new(None);
        let (inner, err_slot) = (&self.inner, &cb_err);
        let out = py.detach(move || -> crate::Result<Tensor> {
            let m = inner.lock("LlamaCore")?;
            let streaming = callback.is_some();
            let mut call = |tokens: &Tensor| -> crate::Result<bool> {
                let Some(cb) = callback.as_ref() else {
                    return Ok(true);
                };
                Python::attach(|py| {
                    let r = bridge::to_py(py, tokens).and_then(|t| cb.bind(py).call1((t,)));
                    match r {
                        Ok(v) => Ok(!matches!(v.extract::<bool>(), Ok(false))),
                        Err(e) => {
                            if let Ok(mut slot) = err_slot.lock() {
                                *slot = Some(e);
                            }
                            Ok(false)
                        }
                    }
                })
            };
            let cb: Option<&mut generate::StepCallback<'_>> =
                if streaming { Some(&mut call) } else { None };
            generate::generate(&m, input(&ids, &emb)?, mask.as_ref(), &cfg, cb)
        });
        if let Some(e) = cb_err.lock().ok().and_then(|mut s| s.take()) {
            return Err(e);
        }
        bridge::to_py(py, &out?)
    }
}

/// A HF `tokenizer.json` tokenizer (tokenizers crate).
#[pyclass(module = "voxlm._core", name = "TokenizerCore")]
pub struct PyTokenizer {
    inner: Tokenizer,
}

#[pymethods]
impl PyTokenizer {
    #[new]
    fn new(path: PathBuf) -> PyResult<Self> {
        Ok(PyTokenizer {
            inner: Tokenizer::from_file(&path)?,
        })
    }

    #[pyo3(signature = (text, add_special_tokens=false))]
    fn encode(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        Ok(crate::py::par(py, || {
            self.inner.encode(text, add_special_tokens)
        })?)
    }

    #[pyo3(signature = (texts, add_special_tokens=false))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        Ok(crate::py::par(py, || {
            self.inner.encode_batch(texts, add_special_tokens)
        })?)
    }

    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<String> {
        let n = self.inner.vocab_size();
        let ids = ids
            .iter()
            .map(|&i| {
                u32::try_from(i)
                    .ok()
                    .filter(|&u| (u as usize) < n)
                    .ok_or_else(|| {
                        Error::config(format!("ids: token ids must lie in [0, {n}), got {i}"))
                    })
            })
            .collect::<crate::Result<Vec<u32>>>()?;
        Ok(self.inner.decode(&ids, skip_special_tokens)?)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|i| self.inner.id_to_token(i))
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}
