//! Property-based fuzzing of the MetaImage reader (proptest): mutated, truncated and extended
//! headers and voxel data (raw and zlib-compressed), and random bytes, must give `Ok` or a voxlm
//! error — never a panic, an abort or an unbounded allocation. 256 cases per property under
//! `cargo test`; `VOXLM_FUZZ_CASES=100000` (as `make fuzz` sets) for the full run.

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use voxlm::volume::metaimage;

fn cases() -> u32 {
    std::env::var("VOXLM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn header(extra: &str, compressed: bool, n: usize) -> Vec<u8> {
    format!(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = {}\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 0.5 0.5 2\nDimSize = 4 4 {n}\n{extra}ElementType = MET_SHORT\nElementDataFile = LOCAL\n",
        if compressed { "True" } else { "False" }
    )
    .into_bytes()
}

fn valid(compressed: bool) -> Vec<u8> {
    let data: Vec<u8> = (0..64i16).flat_map(|v| v.to_le_bytes()).collect();
    let mut out = header("", compressed, 4);
    if compressed {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).expect("zlib"); // ok: in-memory writer
        out.extend(e.finish().expect("zlib")); // ok: in-memory writer
    } else {
        out.extend(data);
    }
    out
}

fn check(bytes: Vec<u8>) {
    if let Ok(l) = metaimage::parse_bytes::<f32>(bytes, Path::new("fuzz.mha")) {
        let n: usize = l.shape.iter().product();
        assert_eq!(n, l.data.len());
    }
}

#[test]
fn valid_files_parse() {
    for c in [false, true] {
        let l = metaimage::parse_bytes::<f32>(valid(c), Path::new("ok.mha")).expect("valid"); // ok: test
        assert_eq!(l.shape, vec![4, 4, 4]);
        assert_eq!(l.data[5], 5.0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_bytes(compressed in any::<bool>(), edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut b = valid(compressed);
        let len = b.len();
        for (i, v) in edits {
            b[i % len] = v;
        }
        check(b);
    }

    #[test]
    fn truncated(compressed in any::<bool>(), cut in any::<usize>()) {
        let b = valid(compressed);
        let cut = cut % (b.len() + 1);
        check(b[..cut].to_vec());
    }

    #[test]
    fn hostile_headers(dims in prop::collection::vec(any::<i64>(), 1..5), extra in "[A-Za-z]{0,12} = [-0-9 .eE]{0,24}\n",
                       ch in any::<u32>(), hs in any::<i32>()) {
        let d: Vec<String> = dims.iter().map(|v| v.to_string()).collect();
        let h = format!(
            "ObjectType = Image\nNDims = {}\nDimSize = {}\nElementNumberOfChannels = {ch}\nHeaderSize = {hs}\n{extra}ElementType = MET_FLOAT\nElementDataFile = LOCAL\n",
            dims.len(), d.join(" ")
        );
        let mut b = h.into_bytes();
        b.extend([0u8; 64]);
        check(b);
    }

    #[test]
    fn random_bytes(b in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut v = b"NDims = 3\n".to_vec();
        v.extend(b);
        check(v);
    }
}
