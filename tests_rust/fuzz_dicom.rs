//! Property-based fuzzing of the DICOM reader (proptest over dicom-rs + voxlm's pixel
//! decoding and series assembly): mutated and truncated files, hostile attribute values and
//! random bytes after a valid preamble must give `Ok` or a voxlm error — never a panic, an abort
//! or an unbounded allocation. 256 cases per property under `cargo test`;
//! `VOXLM_FUZZ_CASES=100000` (as `make fuzz` sets) for the full run.

use std::path::PathBuf;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use proptest::prelude::*;
use voxlm::volume::dicom;

fn cases() -> u32 {
    std::env::var("VOXLM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("voxlm_fuzz_dicom_{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir"); // ok: test setup
    d
}

fn file_bytes(rows: u16, cols: u16, bits: u16, ts: &str, pixels: Vec<u8>) -> Vec<u8> {
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    let u = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
    let obj = InMemDicomObject::from_element_iter([
        s(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.2"),
        s(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"),
        s(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3"),
        s(tags::MODALITY, VR::CS, "CT"),
        s(tags::IMAGE_POSITION_PATIENT, VR::DS, "-10\\5\\2.5"),
        s(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0"),
        s(tags::PIXEL_SPACING, VR::DS, "0.5\\0.75"),
        s(tags::RESCALE_SLOPE, VR::DS, "1"),
        s(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
        u(tags::SAMPLES_PER_PIXEL, 1),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        u(tags::ROWS, rows),
        u(tags::COLUMNS, cols),
        u(tags::BITS_ALLOCATED, bits),
        u(tags::BITS_STORED, bits),
        u(tags::HIGH_BIT, bits.saturating_sub(1)),
        u(tags::PIXEL_REPRESENTATION, 1),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels)),
    ]);
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
        .media_storage_sop_instance_uid("1.2.3.4");
    let file = obj.with_meta(meta).expect("meta"); // ok: test setup
    let mut out = Vec::new();
    file.write_all(&mut out).expect("write"); // ok: in-memory writer
    out
}

fn valid() -> Vec<u8> {
    static B: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let px: Vec<u8> = (0..16i16).flat_map(|v| v.to_le_bytes()).collect();
        file_bytes(4, 4, 16, "1.2.840.10008.1.2.1", px)
    })
    .clone()
}

fn check(bytes: &[u8], tag: u64) {
    let p = dir().join(format!("f{tag}.dcm"));
    std::fs::write(&p, bytes).expect("write"); // ok: test setup
    if let Ok(l) = dicom::load::<f32>(&p, None) {
        let n: usize = l.shape.iter().product();
        assert_eq!(n, l.data.len());
    }
    let _ = std::fs::remove_file(&p);
}

#[test]
fn valid_file_reads() {
    let p = dir().join("valid.dcm");
    std::fs::write(&p, valid()).expect("write"); // ok: test setup
    let l = dicom::load::<f32>(&p, None).expect("valid"); // ok: test
    assert_eq!(l.shape, vec![4, 4, 1]);
    assert_eq!(l.data[3], 3.0 - 1024.0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_bytes(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), tag in any::<u64>()) {
        let mut b = valid();
        let len = b.len();
        for (i, v) in edits {
            // keep the preamble magic mostly intact so the parser gets past it
            let i = 132 + i % (len - 132);
            b[i] = v;
        }
        check(&b, tag);
    }

    #[test]
    fn truncated(cut in any::<usize>(), tag in any::<u64>()) {
        let b = valid();
        let cut = cut % (b.len() + 1);
        check(&b[..cut], tag);
    }

    #[test]
    fn hostile_attributes(rows in any::<u16>(), cols in any::<u16>(), bits in prop::sample::select(vec![0u16, 1, 7, 8, 12, 16, 24, 32, 64]),
                          ts in prop::sample::select(vec!["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "9.9"]),
                          px in prop::collection::vec(any::<u8>(), 0..300), tag in any::<u64>()) {
        let b = file_bytes(rows, cols, bits, ts, px);
        check(&b, tag);
    }

    #[test]
    fn random_after_preamble(body in prop::collection::vec(any::<u8>(), 0..400), tag in any::<u64>()) {
        let mut b = vec![0u8; 128];
        b.extend(b"DICM");
        b.extend(body);
        check(&b, tag);
    }
}
