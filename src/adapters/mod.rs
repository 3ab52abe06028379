//! Adapter settings shared by every module that computes adapter branches (the LLaMA decoder,
//! the vision towers): which linears carry a LoRA pair and with what scaling and dropout. The
//! tensors themselves are taken by [`crate::weights::Vb::linear`]. Free of pyo3.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// LoRA settings of the adapted linears, by module prefix (`model.layers.0.self_attn.q_proj`):
/// `(scaling, dropout)`.
pub type LoraSettings = HashMap<String, (f64, f64)>;

/// Every scaling finite and every dropout in `[0, 1)`, else a ConfigError naming the module.
pub fn validate(lora: &LoraSettings) -> Result<()> {
    for (name, &(scaling, dropout)) in lora {
        if !scaling.is_finite() {
            return Err(Error::config(format!(
                "lora {name}: scaling must be finite, got {scaling}"
            )));
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::config(format!(
                "lora {name}: dropout must lie in [0, 1), got {dropout}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        let mut l = LoraSettings::new();
        l.insert("q".into(), (2.0, 0.1));
        assert!(validate(&l).is_ok());
        l.insert("v".into(), (f64::NAN, 0.0));
        assert!(matches!(validate(&l), Err(Error::Config(m)) if m.contains("lora v")));
        let mut l = LoraSettings::new();
        l.insert("k".into(), (1.0, 1.0));
        assert!(validate(&l).is_err());
    }
}
