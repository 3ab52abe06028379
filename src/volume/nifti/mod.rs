//! NIfTI-1 and NIfTI-2 reading and writing with nibabel's semantics.
//!
//! * `.nii`, `.nii.gz` (gzip detected by its magic bytes, multi-member gzip included; zlib-rs),
//!   and `.hdr`/`.img` pairs; both endiannesses; header extensions skipped via `vox_offset`.
//! * Data as nibabel's `get_fdata()`: axis order x, y, z[, t, ...] (Fortran order),
//!   `raw * scl_slope + scl_inter` unless the slope is 0 or not finite.
//! * The best affine by nibabel's rules: sform if `sform_code > 0`, else qform if
//!   `qform_code > 0`, else the fallback from the shape and zooms (x flipped). Headers are fixed
//!   as nibabel's `check_fix` does on load (qfac not +-1 -> 1, zero pixdims -> 1, negative -> abs).
//! * Dimensions are validated against the bytes actually present before any allocation.
//!
//! Files: [`header`] (types, parsing, fixes), [`affine`] (sform/qform/fallback), `gzip`
//! (detection, capped decompression), `read` (files, pairs, decoding), `write`.

pub mod affine;
mod gzip;
pub mod header;
mod read;
mod write;

pub use header::{parse_header, DType, Header};
pub use read::{decode, parse_bytes, read_raw, OutFloat, RawData};
pub use write::write_nifti1;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::path::Path;

    const AFF: [[f64; 4]; 4] = [
        [0.75, 0.0, 0.0, -10.0],
        [0.0, 0.5, 0.0, 5.0],
        [0.0, 0.0, 2.0, 1.0],
        [0.0, 0.0, 0.0, 1.0],
    ];

    fn written(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("voxlm_nifti_{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let p = dir.join(name);
        let data: Vec<u8> = (0..24i16).flat_map(|v| v.to_le_bytes()).collect();
        write_nifti1(&p, &[2, 3, 4], data, DType::I16, &AFF, &[0.75, 0.5, 2.0], 1).ok();
        p
    }

    #[test]
    fn round_trip_plain_and_gzip() -> crate::Result<()> {
        for name in ["a.nii", "a.nii.gz"] {
            let p = written(name);
            let (h, raw) = read_raw(&p)?;
            assert_eq!(h.shape(), vec![2, 3, 4]);
            assert_eq!(h.dtype()?, DType::I16);
            assert_eq!(h.best_affine(), AFF);
            assert_eq!(h.zooms(), vec![0.75, 0.5, 2.0]);
            let v = decode::<f32>(raw.bytes(), DType::I16, h.little_endian, h.scaling()?, 24);
            assert_eq!(v, (0..24).map(|i| i as f32).collect::<Vec<_>>());
        }
        Ok(())
    }

    #[test]
    fn fallback_affine_without_sform_or_qform() -> crate::Result<()> {
        let mut b = std::fs::read(written("b.nii")).map_err(|e| Error::io("b.nii", e))?;
        // sform_code (offset 254) and qform_code (252) to 0: nibabel's base affine, x flipped
        b[252..256].copy_from_slice(&[0, 0, 0, 0]);
        let (h, _) = parse_bytes(b, Path::new("b.nii"))?;
        let a = h.best_affine();
        assert_eq!(a[0][0], -0.75);
        assert_eq!(a[1][1], 0.5);
        assert_eq!(a[2][2], 2.0);
        // the grid centred on the origin: x offset 0.75 * (2 - 1) / 2
        assert_eq!(a[0][3], 0.375);
        Ok(())
    }

    #[test]
    fn corrupt_headers_are_volume_errors() {
        let good = std::fs::read(written("c.nii")).unwrap_or_default();
        assert!(matches!(
            parse_bytes(good[..100].to_vec(), Path::new("c.nii")),
            Err(Error::VolumeFormat(_))
        ));
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&1234i32.to_le_bytes()); // sizeof_hdr
        assert!(parse_bytes(bad, Path::new("c.nii")).is_err());
        let mut bad = good.clone();
        bad[40..42].copy_from_slice(&9i16.to_le_bytes()); // dim[0] = 9
        assert!(matches!(
            parse_bytes(bad, Path::new("c.nii")),
            Err(Error::VolumeFormat(_))
        ));
        // data truncated: fewer voxel bytes than the dims need
        assert!(parse_bytes(good[..good.len() - 4].to_vec(), Path::new("c.nii")).is_err());
    }
}
