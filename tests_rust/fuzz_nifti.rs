//! Property-based fuzzing of the NIfTI header and gzip paths (proptest, 100k inputs): mutated
//! and truncated headers, mutated gzip streams and random bytes must give `Ok` or a voxlm
//! error — never a panic, an abort or an unbounded allocation. Run: `make fuzz` (or
//! `cargo test --release --test fuzz_nifti`; `VOXLM_FUZZ_CASES` overrides the count).

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use voxlm::volume::nifti::{self, DType};

fn valid_nii() -> Vec<u8> {
    static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BASE.get_or_init(write_valid).clone()
}

fn write_valid() -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("voxlm_fuzz_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir"); // ok: test setup
    let p = dir.join("base.nii");
    let data: Vec<u8> = (0..64i16).flat_map(|v| v.to_le_bytes()).collect();
    let aff = [
        [0.8, 0.0, 0.0, -10.0],
        [0.0, 0.8, 0.0, 5.0],
        [0.0, 0.0, 2.0, 1.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    nifti::write_nifti1(&p, &[4, 4, 4], data, DType::I16, &aff, &[0.8, 0.8, 2.0], 1)
        .expect("write"); // ok: test setup
    std::fs::read(&p).expect("read") // ok: test setup
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).expect("gzip"); // ok: in-memory writer
    e.finish().expect("gzip") // ok: in-memory writer
}

fn check(bytes: Vec<u8>) {
    if let Ok((h, raw)) = nifti::parse_bytes(bytes, Path::new("fuzz.nii")) {
        let n: usize = h.shape().iter().product();
        let dt = h.dtype().expect("a parsed header has a supported dtype"); // ok: property under test
        let scaling = h.scaling().unwrap_or(None);
        let v = nifti::decode::<f32>(raw.bytes(), dt, h.little_endian, scaling, n);
        assert_eq!(v.len(), n);
        let _ = h.best_affine();
    }
}

fn cases() -> u32 {
    std::env::var("VOXLM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn header_and_gzip_paths_never_panic(
        flips in proptest::collection::vec((0usize..480, any::<u8>()), 0..8),
        truncate in proptest::option::of(0usize..480),
        compress in any::<bool>(),
        gz_flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..3),
        random in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut b = valid_nii();
        for (i, v) in &flips {
            let i = i % b.len();
            b[i] = *v;
        }
        if let Some(t) = truncate {
            b.truncate(t.min(b.len()));
        }
        if compress {
            let mut g = gzip(&b);
            for (i, v) in &gz_flips {
                if !g.is_empty() {
                    let i = i % g.len();
                    g[i] = *v;
                }
            }
            check(g);
        } else {
            check(b);
        }
        check(random);
    }
}
