//! `LlamaConfig` from a HF `config.json`: LLaMA 1/2/3/3.1/3.2 (GQA, `head_dim`, `rope_theta`,
//! `rope_scaling` of type `llama3` or `linear`, in the transformers 4 layout (`rope_theta` +
//! `rope_scaling`) or the transformers 5 layout (`rope_parameters`)), tied embeddings, biases.
//! Anything voxlm does not implement is refused with a ConfigError naming the field.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    Default,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
}

fn get_i64(m: &Map<String, Value>, key: &str) -> Result<Option<i64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            Error::config(format!("config.json: {key} must be an integer, got {v}"))
        }),
    }
}

fn req_i64(m: &Map<String, Value>, key: &str) -> Result<i64> {
    let v = get_i64(m, key)?
        .ok_or_else(|| Error::config(format!("config.json: missing required field {key}")))?;
    if v <= 0 {
        return Err(Error::config(format!(
            "config.json: {key} must be positive, got {v}"
        )));
    }
    Ok(v)
}

fn get_f64(m: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| Error::config(format!("config.json: {key} must be a number, got {v}"))),
    }
}

fn get_bool(m: &Map<String, Value>, key: &str, default: bool) -> Result<bool> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::config(format!(
            "config.json: {key} must be true or false, got {v}"
        ))),
    }
}

fn token_ids(m: &Map<String, Value>, key: &str) -> Result<Vec<i64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_i64().ok_or_else(|| {
                    Error::config(format!("config.json: {key} must hold integers, got {v}"))
                })
            })
            .collect(),
        Some(v) => Ok(vec![v.as_i64().ok_or_else(|| {
            Error::config(format!("config.json: {key} must be an integer, got {v}"))
        })?]),
    }
}

fn rope(m: &Map<String, Value>) -> Result<(f64, RopeScaling)> {
    // transformers 5: rope_parameters {rope_type, rope_theta, ...}; 4: rope_theta + rope_scaling
    let (params, theta) = match m.get("rope_parameters") {
        Some(Value::Object(p)) => (Some(p.clone()), get_f64(p, "rope_theta")?),
        Some(Value::Null) | None => match m.get("rope_scaling") {
            Some(Value::Object(p)) => (Some(p.clone()), get_f64(m, "rope_theta")?),
            Some(Value::Null) | None => (None, get_f64(m, "rope_theta")?),
            Some(v) => {
                return Err(Error::config(format!(
                    "config.json: rope_scaling must be an object, got {v}"
                )))
            }
        },
        Some(v) => {
            return Err(Error::config(format!(
                "config.json: rope_parameters must be an object, got {v}"
            )))
        }
    };
    let theta = theta.unwrap_or(10000.0);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::config(format!(
            "config.json: rope_theta must be positive, got {theta}"
        )));
    }
    let Some(p) = params else {
        return Ok((theta, RopeScaling::Default));
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let f = |k: &str| -> Result<f64> {
        let v = get_f64(&p, k)?.ok_or_else(|| {
            Error::config(format!("config.json: rope scaling '{kind}' needs {k}"))
        })?;
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::config(format!(
                "config.json: rope scaling {k} must be positive, got {v}"
            )));
        }
        Ok(v)
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: f("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position_embeddings: get_i64(&p, "original_max_position_embeddings")?
                .ok_or_else(|| Error::config("config.json: rope scaling 'llama3' needs original_max_position_embeddings"))?,
        },
        other => {
            return Err(Error::config(format!(
                "config.json: rope scaling type '{other}' is not supported (voxlm implements default, linear, llama3)"
            )))
        }
    };
    if let Some(prf) = get_f64(&p, "partial_rotary_factor")? {
        if prf != 1.0 {
            return Err(Error::config(format!(
                "config.json: partial_rotary_factor {prf} is not supported (only 1.0)"
            )));
        }
    }
    Ok((theta, scaling))
}

impl LlamaConfig {
    /// Parse and validate the text of a HF `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("config.json: not valid JSON ({e})")))?;
        let m = v
            .as_object()
            .ok_or_else(|| Error::config("config.json: expected a JSON object"))?;
        if let Some(mt) = m.get("model_type").and_then(Value::as_str) {
            if mt != "llama" {
                return Err(Error::config(format!(
                    "config.json: model_type '{mt}' is not supported (expected 'llama')"
                )));
            }
        }
        if let Some(act) = m.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(Error::config(format!(
                    "config.json: hidden_act '{act}' is not supported (LLaMA uses 'silu')"
                )));
            }
        }
        if let Some(tp) = get_i64(m, "pretraining_tp")? {
            if tp != 1 {
                return Err(Error::config(format!(
                    "config.json: pretraining_tp {tp} is not supported (only 1)"
                )));
            }
        }
        let hidden_size = req_i64(m, "hidden_size")?;
        let heads = req_i64(m, "num_attention_heads")?;
        let kv_heads = get_i64(m, "num_key_value_heads")?.unwrap_or(heads);
        if kv_heads <= 0 || heads % kv_heads != 0 {
            return Err(Error::config(format!(
                "config.json: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        let head_dim = match get_i64(m, "head_dim")? {
            Some(h) => h,
            None => {
                if hidden_size % heads != 0 {
                    return Err(Error::config(format!(
                        "config.json: hidden_size ({hidden_size}) is not divisible by num_attention_heads ({heads}); set head_dim"
                    )));
                }
                hidden_size / heads
            }
        };
        if head_dim <= 0 || head_dim % 2 != 0 {
            return Err(Error::config(format!(
                "config.json: head_dim must be a positive even number, got {head_dim}"
            )));
        }
        let (rope_theta, rope_scaling) = rope(m)?;
        let eps = get_f64(m, "rms_norm_eps")?.unwrap_or(1e-6);
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::config(format!(
                "config.json: rms_norm_eps must be positive, got {eps}"
            )));
        }
        let cfg = LlamaConfig {
            vocab_size: req_i64(m, "vocab_size")?,
            hidden_size,
            intermediate_size: req_i64(m, "intermediate_size")?,
            num_hidden_layers: req_i64(m, "num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: get_i64(m, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: get_bool(m, "tie_word_embeddings", false)?,
            attention_bias: get_bool(m, "attention_bias", false)?,
            mlp_bias: get_bool(m, "mlp_bias", false)?,
            bos_token_id: get_i64(m, "bos_token_id")?,
            eos_token_ids: token_ids(m, "eos_token_id")?,
            pad_token_id: get_i64(m, "pad_token_id")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sizes within what voxlm can allocate (generous: LLaMA-3.1-405B is hidden 16384,
    /// intermediate 53248, vocab 128256, 126 layers, 131072 positions), so an absurd
    /// `config.json` is refused before any tensor is allocated for it.
    pub fn validate(&self) -> Result<()> {
        let limits: [(&str, i64, i64); 8] = [
            ("vocab_size", self.vocab_size, 1 << 23),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 4096),
            ("num_attention_heads", self.num_attention_heads, 4096),
            ("num_key_value_heads", self.num_key_value_heads, 4096),
            ("head_dim", self.head_dim, 1 << 14),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 26,
            ),
        ];
        for (name, v, max) in limits {
            if v <= 0 || v > max {
                return Err(Error::config(format!(
                    "config.json: {name} must lie in [1, {max}], got {v}"
                )));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(Error::config(format!(
                "config.json: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(Error::config(format!(
                "config.json: head_dim must be a positive even number, got {}",
                self.head_dim
            )));
        }
        // the largest single tensor (embeddings / a projection) must fit in 2^34 elements
        let biggest = [
            self.vocab_size * self.hidden_size,
            self.intermediate_size * self.hidden_size,
            self.num_attention_heads * self.head_dim * self.hidden_size,
        ];
        if biggest.iter().any(|&n| n > 1 << 34) {
            return Err(Error::config(format!(
                "config.json: a weight of {} elements is larger than voxlm supports (2^34)",
                biggest.iter().max().copied().unwrap_or(0)
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(Error::config(format!(
                "config.json: rms_norm_eps must lie in (0, 1), got {}",
                self.rms_norm_eps
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::config(format!(
                "config.json: rope_theta must be positive, got {}",
                self.rope_theta
            )));
        }
        if let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
            ..
        } = &self.rope_scaling
        {
            if *original_max_position_embeddings <= 0 {
                return Err(Error::config(format!(
                    "config.json: rope scaling original_max_position_embeddings must be positive, got {original_max_position_embeddings}"
                )));
            }
            if high_freq_factor <= low_freq_factor {
                return Err(Error::config(format!(
                    "config.json: rope scaling high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
                )));
            }
        }
        Ok(())
    }

    /// The normalised config as JSON (the Python `LlamaConfig` is built from it).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_in_both_layouts() -> Result<()> {
        let v4 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":2,"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let v5 = r#"{"model_type":"llama","vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":2,
            "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let (a, b) = (LlamaConfig::from_json(v4)?, LlamaConfig::from_json(v5)?);
        assert_eq!(a, b);
        assert_eq!(a.head_dim, 4);
        assert_eq!(a.rope_theta, 500000.0);
        Ok(())
    }

    #[test]
    fn unsupported_fields_are_refused() {
        let bad = r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":4,
            "rope_scaling":{"type":"yarn","factor":2.0}}"#;
        match LlamaConfig::from_json(bad) {
            Err(Error::Config(m)) => assert!(m.contains("yarn"), "{m}"),
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"vocab_size":-5,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":4}"#,
            r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1}"#,
            r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":1e30,"num_hidden_layers":1,"num_attention_heads":4}"#,
            r#"{"vocab_size":8000000,"hidden_size":100000,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":4}"#,
            r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":100000,"num_attention_heads":4}"#,
            r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":4,"head_dim":-2}"#,
            r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":4,"rms_norm_eps":-1}"#,
            r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":4,"max_position_embeddings":0}"#,
            r#"[1, 2]"#,
            r#"{"vocab_size":10"#,
        ] {
            assert!(
                matches!(LlamaConfig::from_json(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
        let gqa = r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3}"#;
        assert!(matches!(LlamaConfig::from_json(gqa), Err(Error::Config(_))));
    }
}
