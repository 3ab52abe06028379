//! Property-based fuzzing of the checkpoint parsers (proptest): safetensors buffers (mutated and
//! truncated valid files, hostile headers with random dtypes, shapes and offsets, random bytes)
//! and `config.json` texts (random fields and values, mutated valid configs) must give `Ok` or a
//! voxlm error — never a panic, an abort or an unbounded allocation. A config that parses must
//! satisfy the limits `LlamaConfig::validate` states. `cargo test` runs a small number of cases;
//! `make fuzz` runs 100k (`VOXLM_FUZZ_CASES` overrides the count).

use proptest::prelude::*;
use tch::{Device, Tensor};
use voxlm::llm::safetensors_io;
use voxlm::llm::LlamaConfig;

fn cases() -> u32 {
    std::env::var("VOXLM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn valid_st() -> Vec<u8> {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("voxlm_fuzz_st_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir"); // ok: test setup
        let p = dir.join("base.safetensors");
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3]);
        let b = Tensor::from_slice(&[7i64, 8]);
        safetensors_io::save(&[("w.weight".into(), a), ("ids".into(), b)], &p).expect("save"); // ok: test setup
        std::fs::read(&p).expect("read") // ok: test setup
    })
    .clone()
}

fn check_st(bytes: &[u8]) {
    if let Ok(ts) = safetensors_io::parse(bytes, "fuzz.safetensors", None, Device::Cpu) {
        // whatever parses is backed by the buffer: never more elements than bytes
        let total: i64 = ts.iter().map(|(_, t)| t.numel() as i64).sum();
        assert!(total as usize <= bytes.len());
    }
}

fn header(json: &str, data: usize) -> Vec<u8> {
    let mut b = (json.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(json.as_bytes());
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "U64", "Q4",
];

fn check_config(text: &str) {
    if let Ok(c) = LlamaConfig::from_json(text) {
        assert!(c.vocab_size >= 1 && c.vocab_size <= 1 << 23);
        assert!(c.hidden_size >= 1 && c.hidden_size <= 1 << 17);
        assert!(c.num_hidden_layers >= 1 && c.num_hidden_layers <= 4096);
        assert!(c.num_attention_heads % c.num_key_value_heads == 0);
        assert!(c.head_dim > 0 && c.head_dim % 2 == 0);
        assert!(c.rms_norm_eps > 0.0 && c.rms_norm_eps < 1.0);
        assert!(c.max_position_embeddings >= 1);
        // normalised JSON parses back to the same config
        assert_eq!(
            LlamaConfig::from_json(&c.to_json())
                .ok()
                .map(|d| d.vocab_size),
            Some(c.vocab_size)
        );
    }
}

const FIELDS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "eos_token_id",
    "model_type",
    "rope_scaling",
    "pretraining_tp",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (-4i64..70000).prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| if v.is_finite() { format!("{v:e}") } else { "1e400".into() }),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("\"llama\"".to_string()),
        Just("[1, 2, -3]".to_string()),
        Just(r#"{"rope_type":"llama3","factor":8.0,"low_freq_factor":4.0,"high_freq_factor":1.0,"original_max_position_embeddings":-1}"#.to_string()),
        Just(r#"{"type":"linear","factor":0}"#.to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_buffers_never_panic(
        flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..6),
        truncate in proptest::option::of(0usize..400),
        random in proptest::collection::vec(any::<u8>(), 0..64),
        len_field in proptest::option::of(any::<u64>()),
    ) {
        let mut b = valid_st();
        for (i, v) in &flips {
            let i = i % b.len();
            b[i] = *v;
        }
        if let Some(n) = len_field {
            b[..8].copy_from_slice(&n.to_le_bytes());
        }
        if let Some(t) = truncate {
            b.truncate(t.min(b.len()));
        }
        check_st(&b);
        check_st(&random);
    }

    #[test]
    fn hostile_safetensors_headers_never_panic(
        tensors in proptest::collection::vec(
            (0usize..DTYPES.len(), proptest::collection::vec(0u64..u64::MAX, 0..4), 0u64..64, 0u64..64),
            0..4,
        ),
        data in 0usize..128,
        small_shapes in any::<bool>(),
    ) {
        let items: Vec<String> = tensors
            .iter()
            .enumerate()
            .map(|(i, (d, shape, s, e))| {
                let shape: Vec<String> = shape
                    .iter()
                    .map(|v| if small_shapes { (v % 5).to_string() } else { v.to_string() })
                    .collect();
                format!(
                    r#""t{i}":{{"dtype":"{}","shape":[{}],"data_offsets":[{s},{e}]}}"#,
                    DTYPES[*d],
                    shape.join(",")
                )
            })
            .collect();
        let json = format!("{{{}}}", items.join(","));
        check_st(&header(&json, data));
    }

    #[test]
    fn config_json_never_panics(
        fields in proptest::collection::vec((0usize..FIELDS.len(), value()), 0..12),
        base in any::<bool>(),
        cut in proptest::option::of(0usize..300),
    ) {
        let mut parts: Vec<String> = Vec::new();
        if base {
            parts.push(r#""vocab_size":32,"hidden_size":16,"intermediate_size":32,"num_hidden_layers":2,"num_attention_heads":4"#.into());
        }
        for (f, v) in &fields {
            parts.push(format!("\"{}\":{v}", FIELDS[*f]));
        }
        let mut text = format!("{{{}}}", parts.join(","));
        if let Some(c) = cut {
            let c = c.min(text.len());
            if text.is_char_boundary(c) {
                text.truncate(c);
            }
        }
        check_config(&text);
    }
}
