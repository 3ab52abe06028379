//! Rotary position embeddings as transformers' LLaMA: inverse frequencies (default, linear and
//! llama3 scaling, with the same ops as transformers' rope init functions), the cos/sin tables
//! for given positions, and their application to queries and keys.

use tch::{Kind, Tensor};

use super::config::{LlamaConfig, RopeScaling};
use crate::error::Result;

/// The inverse rotary frequencies `[head_dim / 2]` (float32), computed with the same ops as
/// transformers' rope init functions.
pub fn rope_inv_freq(cfg: &LlamaConfig) -> Result<Tensor> {
    let dim = cfg.head_dim;
    let exps = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, tch::Device::Cpu))?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(dim as f64)?;
    let inv = Tensor::f_pow_scalar(cfg.rope_theta, &exps)?.f_reciprocal()?;
    Ok(match &cfg.rope_scaling {
        RopeScaling::Default => inv,
        RopeScaling::Linear { factor } => inv.f_div_scalar(*factor)?,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = *original_max_position_embeddings as f64;
            let low_wl = old / low_freq_factor;
            let high_wl = old / high_freq_factor;
            let wavelen = inv
                .f_reciprocal()?
                .f_mul_scalar(2.0 * std::f64::consts::PI)?;
            let inv_llama = inv
                .f_div_scalar(*factor)?
                .f_where_self(&wavelen.f_gt(low_wl)?, &inv)?;
            let smooth = wavelen
                .f_reciprocal()?
                .f_mul_scalar(old)?
                .f_sub_scalar(*low_freq_factor)?
                .f_div_scalar(high_freq_factor - low_freq_factor)?;
            let smoothed = smooth
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_mul(&inv_llama)?
                .f_div_scalar(*factor)?
                .f_add(&smooth.f_mul(&inv_llama)?)?;
            let medium = wavelen
                .f_lt(high_wl)?
                .f_logical_not()?
                .f_logical_and(&wavelen.f_gt(low_wl)?.f_logical_not()?)?;
            smoothed.f_where_self(&medium, &inv_llama)?
        }
    })
}

/// `(cos, sin_signed)` tables `[B, 1, T, head_dim]` in `kind` for `position_ids [B, T]`:
/// `freqs = position_ids[..., None].float() * inv_freq; emb = cat(freqs, freqs)`.
pub(super) fn tables(
    position_ids: &Tensor,
    inv_freq: &Tensor,
    kind: Kind,
) -> Result<(Tensor, Tensor)> {
    let freqs = position_ids
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(-1)?
        .f_mul(&inv_freq.f_to_kind(Kind::Float)?)?;
    let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
    // rotate_half(x) * sin == roll(x, hd/2) * cat(-sin_half, sin_half), bit for bit: one
    // roll instead of narrow/narrow/neg/cat per tensor
    let s = freqs.f_sin()?;
    let sin_signed = Tensor::f_cat(&[&s.f_neg()?, &s], -1)?;
    // [B, 1, T, hd] to broadcast over heads
    Ok((
        emb.f_cos()?.f_to_kind(kind)?.f_unsqueeze(1)?,
        sin_signed.f_to_kind(kind)?.f_unsqueeze(1)?,
    ))
}

/// `x * cos + rotate_half(x) * sin` with `sin_signed = cat(-sin_half, sin_half)`.
pub(super) fn apply_rope(x: &Tensor, cos: &Tensor, sin_signed: &Tensor) -> Result<Tensor> {
    let d = x.size()[x.dim() - 1];
    Ok(x.f_mul(cos)?.f_add(
        &x.f_roll([d / 2].as_slice(), [-1i64].as_slice())?
            .f_mul(sin_signed)?,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies_and_tables() -> Result<()> {
        let cfg = LlamaConfig::from_json(
            r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2}"#,
        )?;
        let inv = rope_inv_freq(&cfg)?;
        assert_eq!(inv.size(), [4]);
        let v = Vec::<f32>::try_from(&inv)?;
        for (i, x) in v.iter().enumerate() {
            let want = 1.0 / 10000f64.powf(2.0 * i as f64 / 8.0);
            assert!((*x as f64 - want).abs() < 1e-6 * want, "{i}: {x} vs {want}");
        }
        let pos = Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]);
        let (cos, sin) = tables(&pos, &inv, Kind::Float)?;
        assert_eq!(cos.size(), [1, 1, 3, 8]);
        assert_eq!(sin.size(), [1, 1, 3, 8]);
        // position 0: cos 1, sin 0 -> the rotation is the identity
        let x = Tensor::randn([1, 2, 3, 8], (Kind::Float, tch::Device::Cpu));
        let y = apply_rope(&x, &cos, &sin)?;
        let d0 = f64::try_from((y.narrow(2, 0, 1) - x.narrow(2, 0, 1)).abs().max())?;
        assert!(d0 < 1e-7, "{d0}");
        // rotations keep each pair's norm
        let n = |t: &Tensor| t.pow_tensor_scalar(2).sum(Kind::Float);
        let dn = f64::try_from((n(&y) - n(&x)).abs())?;
        assert!(dn < 1e-3, "{dn}");
        Ok(())
    }

    #[test]
    fn linear_scaling_divides_the_frequencies() -> Result<()> {
        let base = r#"{"vocab_size":10,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2"#;
        let a = rope_inv_freq(&LlamaConfig::from_json(&format!("{base}}}"))?)?;
        let b = rope_inv_freq(&LlamaConfig::from_json(&format!(
            r#"{base},"rope_scaling":{{"rope_type":"linear","factor":4.0}}}}"#
        ))?)?;
        let d = f64::try_from((a / 4.0 - b).abs().max())?;
        assert!(d < 1e-9, "{d}");
        Ok(())
    }
}
