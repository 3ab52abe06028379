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

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Element types of NIfTI data that voxlm reads (real numeric types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DType {
    pub fn from_code(code: i16) -> Result<Self> {
        Ok(match code {
            2 => DType::U8,
            4 => DType::I16,
            8 => DType::I32,
            16 => DType::F32,
            64 => DType::F64,
            256 => DType::I8,
            512 => DType::U16,
            768 => DType::U32,
            1024 => DType::I64,
            1280 => DType::U64,
            32 | 1792 | 2048 => {
                return Err(Error::volume(format!(
                    "datatype {code} (complex) is not supported"
                )))
            }
            128 | 2304 => {
                return Err(Error::volume(format!(
                    "datatype {code} (RGB/RGBA) is not supported"
                )))
            }
            1536 => return Err(Error::volume("datatype 1536 (float128) is not supported")),
            other => {
                return Err(Error::volume(format!(
                    "unknown NIfTI datatype code {other}"
                )))
            }
        })
    }
    pub fn code(self) -> i16 {
        match self {
            DType::U8 => 2,
            DType::I16 => 4,
            DType::I32 => 8,
            DType::F32 => 16,
            DType::F64 => 64,
            DType::I8 => 256,
            DType::U16 => 512,
            DType::U32 => 768,
            DType::I64 => 1024,
            DType::U64 => 1280,
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::U32 => "uint32",
            DType::I32 => "int32",
            DType::U64 => "uint64",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }
}

/// The header fields voxlm uses (NIfTI-2 widths; NIfTI-1 values widened).
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u8,
    pub little_endian: bool,
    pub pair: bool,
    pub dim: [i64; 8],
    pub datatype: i16,
    pub bitpix: i16,
    pub pixdim: [f64; 8],
    pub vox_offset: i64,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub qform_code: i32,
    pub sform_code: i32,
    pub quatern: [f64; 3],
    pub qoffset: [f64; 3],
    pub srow: [[f64; 4]; 3],
    pub xyzt_units: i32,
    pub intent_code: i32,
    pub descrip: String,
    pub cal_min: f64,
    pub cal_max: f64,
}

struct Reader<'a> {
    b: &'a [u8],
    le: bool,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[off..off + N]);
        if !self.le {
            a.reverse();
        }
        a
    }
    fn i16(&self, off: usize) -> i16 {
        i16::from_le_bytes(self.bytes::<2>(off))
    }
    fn i32(&self, off: usize) -> i32 {
        i32::from_le_bytes(self.bytes::<4>(off))
    }
    fn i64(&self, off: usize) -> i64 {
        i64::from_le_bytes(self.bytes::<8>(off))
    }
    fn f32(&self, off: usize) -> f64 {
        f32::from_le_bytes(self.bytes::<4>(off)) as f64
    }
    fn f64(&self, off: usize) -> f64 {
        f64::from_le_bytes(self.bytes::<8>(off))
    }
    fn text(&self, off: usize, n: usize) -> String {
        let s = &self.b[off..off + n];
        let end = s.iter().position(|&c| c == 0).unwrap_or(n);
        String::from_utf8_lossy(&s[..end]).into_owned()
    }
}

/// Parse a NIfTI-1 (348 bytes) or NIfTI-2 (540 bytes) header.
pub fn parse_header(b: &[u8]) -> Result<Header> {
    if b.len() < 348 {
        return Err(Error::volume(format!(
            "file too short for a NIfTI header ({} bytes, need 348)",
            b.len()
        )));
    }
    let s_le = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let s_be = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let (version, le) = match (s_le, s_be) {
        (348, _) => (1, true),
        (_, 348) => (1, false),
        (540, _) => (2, true),
        (_, 540) => (2, false),
        _ => {
            return Err(Error::volume(
                "not a NIfTI file (sizeof_hdr is neither 348 nor 540 in either byte order)",
            ))
        }
    };
    let r = Reader { b, le };
    let mut h = if version == 1 {
        let magic = &b[344..348];
        let pair =
            match magic {
                b"n+1\0" => false,
                b"ni1\0" => true,
                _ => return Err(Error::volume(
                    "not a NIfTI-1 file (no 'n+1'/'ni1' magic; ANALYZE 7.5 headers are not read)",
                )),
            };
        let mut dim = [0i64; 8];
        for (i, d) in dim.iter_mut().enumerate() {
            *d = r.i16(40 + 2 * i) as i64;
        }
        let mut pixdim = [0f64; 8];
        for (i, p) in pixdim.iter_mut().enumerate() {
            *p = r.f32(76 + 4 * i);
        }
        let mut srow = [[0f64; 4]; 3];
        for (row, s) in srow.iter_mut().enumerate() {
            for (c, v) in s.iter_mut().enumerate() {
                *v = r.f32(280 + 16 * row + 4 * c);
            }
        }
        Header {
            version,
            little_endian: le,
            pair,
            dim,
            datatype: r.i16(70),
            bitpix: r.i16(72),
            pixdim,
            vox_offset: r.f32(108) as i64,
            scl_slope: r.f32(112),
            scl_inter: r.f32(116),
            qform_code: r.i16(252) as i32,
            sform_code: r.i16(254) as i32,
            quatern: [r.f32(256), r.f32(260), r.f32(264)],
            qoffset: [r.f32(268), r.f32(272), r.f32(276)],
            srow,
            xyzt_units: b[123] as i32,
            intent_code: r.i16(68) as i32,
            descrip: r.text(148, 80),
            cal_max: r.f32(124),
            cal_min: r.f32(128),
        }
    } else {
        if b.len() < 540 {
            return Err(Error::volume(format!(
                "file too short for a NIfTI-2 header ({} bytes, need 540)",
                b.len()
            )));
        }
        let pair = match &b[4..12] {
            b"n+2\0\r\n\x1a\n" => false,
            b"ni2\0\r\n\x1a\n" => true,
            _ => return Err(Error::volume("not a NIfTI-2 file (bad magic)")),
        };
        let mut dim = [0i64; 8];
        for (i, d) in dim.iter_mut().enumerate() {
            *d = r.i64(16 + 8 * i);
        }
        let mut pixdim = [0f64; 8];
        for (i, p) in pixdim.iter_mut().enumerate() {
            *p = r.f64(104 + 8 * i);
        }
        let mut srow = [[0f64; 4]; 3];
        for (row, s) in srow.iter_mut().enumerate() {
            for (c, v) in s.iter_mut().enumerate() {
                *v = r.f64(400 + 32 * row + 8 * c);
            }
        }
        Header {
            version,
            little_endian: le,
            pair,
            dim,
            datatype: r.i16(12),
            bitpix: r.i16(14),
            pixdim,
            vox_offset: r.i64(168),
            scl_slope: r.f64(176),
            scl_inter: r.f64(184),
            qform_code: r.i32(344),
            sform_code: r.i32(348),
            quatern: [r.f64(352), r.f64(360), r.f64(368)],
            qoffset: [r.f64(376), r.f64(384), r.f64(392)],
            srow,
            xyzt_units: r.i32(500),
            intent_code: r.i32(504),
            descrip: r.text(240, 80),
            cal_max: r.f64(192),
            cal_min: r.f64(200),
        }
    };
    h.check_fix()?;
    Ok(h)
}

impl Header {
    pub fn header_size(&self) -> i64 {
        if self.version == 1 {
            348
        } else {
            540
        }
    }

    /// The fixes nibabel's `check_fix` applies on load, and the checks it cannot fix.
    fn check_fix(&mut self) -> Result<()> {
        let nd = self.dim[0];
        if !(1..=7).contains(&nd) {
            return Err(Error::volume(format!("dim[0] must be 1..7, got {nd}")));
        }
        for i in 1..=nd as usize {
            if self.dim[i] <= 0 {
                return Err(Error::volume(format!(
                    "dim[{i}] must be positive, got {} (dims {:?})",
                    self.dim[i],
                    &self.dim[1..=nd as usize]
                )));
            }
        }
        let spatial = (nd as usize).min(3);
        for i in 1..=spatial {
            if self.pixdim[i] < 0.0 {
                self.pixdim[i] = self.pixdim[i].abs();
            }
            if self.pixdim[i] == 0.0 {
                self.pixdim[i] = 1.0;
            }
        }
        if self.pixdim[0] != 1.0 && self.pixdim[0] != -1.0 {
            self.pixdim[0] = 1.0;
        }
        if !(0..=4).contains(&self.qform_code) {
            self.qform_code = 0;
        }
        if !(0..=4).contains(&self.sform_code) {
            self.sform_code = 0;
        }
        if self.sform_code != 0 && self.srow.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::volume(
                "the sform affine has NaN or infinite entries",
            ));
        }
        if self.sform_code == 0
            && self.qform_code != 0
            && self
                .quatern
                .iter()
                .chain(&self.qoffset)
                .chain(&self.pixdim[..4])
                .any(|v| !v.is_finite())
        {
            return Err(Error::volume(
                "the qform (quaternion, offset or pixdim) has NaN or infinite entries",
            ));
        }
        if self.pixdim[1..=spatial].iter().any(|v| !v.is_finite()) {
            return Err(Error::volume(format!(
                "pixdim has NaN or infinite entries: {:?}",
                &self.pixdim[1..=spatial]
            )));
        }
        let dt = DType::from_code(self.datatype)?;
        if !self.pair && self.vox_offset < self.header_size() {
            self.vox_offset = if self.version == 1 { 352 } else { 544 };
        }
        self.bitpix = (dt.size() * 8) as i16;
        Ok(())
    }

    pub fn dtype(&self) -> Result<DType> {
        DType::from_code(self.datatype)
    }

    /// Data shape `dim[1..=dim[0]]`.
    pub fn shape(&self) -> Vec<usize> {
        (1..=self.dim[0] as usize)
            .map(|i| self.dim[i] as usize)
            .collect()
    }

    /// Bytes of voxel data, or an error when the dims overflow.
    pub fn data_bytes(&self) -> Result<usize> {
        let mut n: usize = self.dtype()?.size();
        for d in self.shape() {
            n = n
                .checked_mul(d)
                .ok_or_else(|| Error::volume(format!("dims {:?} overflow", self.shape())))?;
        }
        Ok(n)
    }

    /// `(slope, inter)` as nibabel applies them: None when the slope is 0 or not finite.
    pub fn scaling(&self) -> Result<Option<(f64, f64)>> {
        if self.scl_slope == 0.0 || !self.scl_slope.is_finite() {
            return Ok(None);
        }
        if !self.scl_inter.is_finite() {
            return Err(Error::volume(format!(
                "valid scl_slope but invalid scl_inter {}",
                self.scl_inter
            )));
        }
        Ok(Some((self.scl_slope, self.scl_inter)))
    }

    pub fn zooms(&self) -> Vec<f64> {
        (1..=self.dim[0] as usize).map(|i| self.pixdim[i]).collect()
    }

    fn qform(&self) -> [[f64; 4]; 4] {
        let [b, c, d] = self.quatern;
        let thresh = if self.version == 1 {
            f32::EPSILON as f64 * 3.0
        } else {
            f64::EPSILON * 3.0
        };
        let w2 = 1.0 - (b * b + c * c + d * d);
        let a = if w2.abs() < thresh {
            0.0
        } else {
            w2.max(0.0).sqrt()
        };
        let (w, x, y, z) = (a, b, c, d);
        let nq = w * w + x * x + y * y + z * z;
        let r = if nq < f64::EPSILON {
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        } else {
            let s = 2.0 / nq;
            let (xs, ys, zs) = (x * s, y * s, z * s);
            let (wx, wy, wz) = (w * xs, w * ys, w * zs);
            let (xx, xy, xz) = (x * xs, x * ys, x * zs);
            let (yy, yz, zz) = (y * ys, y * zs, z * zs);
            [
                [1.0 - (yy + zz), xy - wz, xz + wy],
                [xy + wz, 1.0 - (xx + zz), yz - wx],
                [xz - wy, yz + wx, 1.0 - (xx + yy)],
            ]
        };
        let mut vox = [self.pixdim[1], self.pixdim[2], self.pixdim[3]];
        vox[2] *= self.pixdim[0];
        let mut out = [[0.0; 4]; 4];
        for i in 0..3 {
            for j in 0..3 {
                out[i][j] = r[i][j] * vox[j];
            }
            out[i][3] = self.qoffset[i];
        }
        out[3][3] = 1.0;
        out
    }

    fn base_affine(&self) -> [[f64; 4]; 4] {
        let nd = self.dim[0] as usize;
        let mut shape = [1.0f64; 3];
        let mut zooms = [1.0f64; 3];
        for i in 0..nd.min(3) {
            shape[i] = self.dim[i + 1] as f64;
            zooms[i] = self.pixdim[i + 1];
        }
        zooms[0] *= -1.0;
        let mut out = [[0.0; 4]; 4];
        for i in 0..3 {
            out[i][i] = zooms[i];
            out[i][3] = -((shape[i] - 1.0) / 2.0) * zooms[i];
        }
        out[3][3] = 1.0;
        out
    }

    /// nibabel's `get_best_affine()`.
    pub fn best_affine(&self) -> [[f64; 4]; 4] {
        if self.sform_code != 0 {
            let mut out = [[0.0; 4]; 4];
            out[..3].copy_from_slice(&self.srow);
            out[3][3] = 1.0;
            out
        } else if self.qform_code != 0 {
            self.qform()
        } else {
            self.base_affine()
        }
    }
}

fn is_gzip(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b
}

/// Decompress (if gzip by magic) with a cap: more than `cap` bytes is not needed.
fn maybe_gunzip(raw: Vec<u8>, cap: Option<usize>, path: &Path) -> Result<Vec<u8>> {
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    let hint = if raw.len() >= 4 {
        let n = raw.len();
        u32::from_le_bytes([raw[n - 4], raw[n - 3], raw[n - 2], raw[n - 1]]) as usize
    } else {
        0
    };
    if let Some(out) = cap.and_then(|c| gunzip_whole(&raw, c, hint)) {
        return Ok(out);
    }
    let mut out = Vec::with_capacity(cap.map_or(hint, |c| c.min(hint.max(1 << 16))));
    let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]);
    let res = match cap {
        Some(c) => dec.by_ref().take(c as u64).read_to_end(&mut out),
        None => dec.read_to_end(&mut out),
    };
    res.map_err(|e| {
        Error::volume(format!(
            "{}: corrupt or truncated gzip data ({e})",
            path.display()
        ))
    })?;
    Ok(out)
}

/// The first `cap` bytes through libdeflate (whole-buffer inflate, ~1.4x zlib-rs here) when the
/// first gzip member holds them and fits a buffer of the trailer's size (or `cap`); None
/// otherwise (larger or several members, corrupt data), and the streaming decoder decides,
/// with its error messages. libdeflate checks the member's CRC32 and size.
fn gunzip_whole(raw: &[u8], cap: usize, isize_hint: usize) -> Option<Vec<u8>> {
    // allocate only what the stream can hold: deflate expands at most ~1032:1, and the trailer
    // gives the size modulo 2^32
    if cap > raw.len().saturating_mul(1032) || (cap < 1 << 32 && isize_hint < cap) {
        return None;
    }
    let len = if isize_hint >= cap && isize_hint - cap <= 1 << 20 {
        isize_hint
    } else {
        cap
    };
    let mut out = vec![0u8; len];
    let n = libdeflater::Decompressor::new()
        .gzip_decompress(raw, &mut out)
        .ok()?;
    if n < cap {
        return None;
    }
    out.truncate(n);
    Some(out)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path.display(), e))
}

/// Float types the decoded data can be delivered in.
pub trait OutFloat: Copy + Send + Sync + 'static {
    fn from_f64(v: f64) -> Self;
}
impl OutFloat for f32 {
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}
impl OutFloat for f64 {
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
}

macro_rules! decode_as {
    ($t:ty, $n:expr, $bytes:expr, $le:expr, $out:expr, $f:expr) => {{
        use rayon::prelude::*;
        $out.par_chunks_mut(1 << 16)
            .zip($bytes.par_chunks(($n) << 16))
            .for_each(|(o, b)| {
                for (v, c) in o.iter_mut().zip(b.chunks_exact($n)) {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    let x = if $le {
                        <$t>::from_le_bytes(a)
                    } else {
                        <$t>::from_be_bytes(a)
                    };
                    *v = $f(x as f64);
                }
            });
    }};
}

/// Decode raw voxel bytes to `T`, applying `raw * slope + inter` (in float64, as nibabel's
/// `get_fdata`) when `scaling` is Some.
pub fn decode<T: OutFloat>(
    bytes: &[u8],
    dt: DType,
    le: bool,
    scaling: Option<(f64, f64)>,
    n: usize,
) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); n];
    let (s, i) = scaling.unwrap_or((1.0, 0.0));
    let scaled = scaling.is_some();
    let f = move |x: f64| T::from_f64(if scaled { x * s + i } else { x });
    match dt {
        DType::U8 => decode_as!(u8, 1, bytes, le, out, f),
        DType::I8 => decode_as!(i8, 1, bytes, le, out, f),
        DType::U16 => decode_as!(u16, 2, bytes, le, out, f),
        DType::I16 => decode_as!(i16, 2, bytes, le, out, f),
        DType::U32 => decode_as!(u32, 4, bytes, le, out, f),
        DType::I32 => decode_as!(i32, 4, bytes, le, out, f),
        DType::U64 => decode_as!(u64, 8, bytes, le, out, f),
        DType::I64 => decode_as!(i64, 8, bytes, le, out, f),
        DType::F32 => decode_as!(f32, 4, bytes, le, out, f),
        DType::F64 => decode_as!(f64, 8, bytes, le, out, f),
    }
    out
}

fn sibling(path: &Path, ext: &str) -> Option<PathBuf> {
    let s = path.to_string_lossy();
    let base = s.strip_suffix(".gz").unwrap_or(&s);
    let stem = base.rsplit_once('.').map(|(a, _)| a.to_string())?;
    let plain = PathBuf::from(format!("{stem}.{ext}"));
    if plain.is_file() {
        return Some(plain);
    }
    let gz = PathBuf::from(format!("{stem}.{ext}.gz"));
    gz.is_file().then_some(gz)
}

/// The voxel bytes of a file: `buf[off..off + len]` (no copy of the decompressed buffer).
pub struct RawData {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

impl RawData {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
}

fn header_bytes(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    if !is_gzip(raw) {
        return Ok(raw[..raw.len().min(544)].to_vec());
    }
    let mut out = Vec::with_capacity(544);
    flate2::read::MultiGzDecoder::new(raw)
        .take(544)
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::volume(format!(
                "{}: corrupt or truncated gzip data ({e})",
                path.display()
            ))
        })?;
    Ok(out)
}

fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::VolumeFormat(m) if !m.starts_with(&path.display().to_string()) => {
            Error::VolumeFormat(format!("{}: {m}", path.display()))
        }
        other => other,
    }
}

/// Read header and raw voxel bytes of a NIfTI file (or pair). Every format error names the file.
pub fn read_raw(path: &Path) -> Result<(Header, RawData)> {
    read_raw_inner(path).map_err(|e| with_path(path, e))
}

/// Parse a single-file NIfTI (`.nii`, gzipped or not) held in memory: header and voxel bytes.
pub fn parse_bytes(raw: Vec<u8>, name: &Path) -> Result<(Header, RawData)> {
    let h = parse_header(&header_bytes(&raw, name)?)?;
    if h.pair {
        return Err(Error::volume(
            "a NIfTI pair header (.hdr) needs its .img file",
        ));
    }
    single_file_data(h, raw, name)
}

fn read_raw_inner(path: &Path) -> Result<(Header, RawData)> {
    let name = path.to_string_lossy().to_lowercase();
    let (hdr_path, img_path) = if name.ends_with(".img") || name.ends_with(".img.gz") {
        (
            sibling(path, "hdr")
                .ok_or_else(|| Error::volume(format!("{}: no matching .hdr", path.display())))?,
            Some(path.to_path_buf()),
        )
    } else {
        (path.to_path_buf(), None)
    };
    let raw = read_file(&hdr_path)?;
    // the header first, from a capped decompression, so dims are checked before anything big
    let h = parse_header(&header_bytes(&raw, &hdr_path)?)?;
    let need = h.data_bytes()?;
    if h.pair {
        let img = match img_path {
            Some(p) => p,
            None => sibling(&hdr_path, "img").ok_or_else(|| {
                Error::volume(format!(
                    "{}: NIfTI pair without its .img file",
                    hdr_path.display()
                ))
            })?,
        };
        let raw_img = read_file(&img)?;
        let off = h.vox_offset.max(0) as usize;
        let cap = off
            .checked_add(need)
            .ok_or_else(|| Error::volume("dims overflow"))?;
        if !is_gzip(&raw_img) && raw_img.len() < cap {
            return Err(Error::volume(format!(
                "{}: truncated: {} data bytes expected at offset {off} for dims {:?} ({}), file has {}",
                img.display(), need, h.shape(), h.dtype()?.name(), raw_img.len()
            )));
        }
        let data = maybe_gunzip(raw_img, Some(cap), &img)?;
        if data.len() < cap {
            return Err(Error::volume(format!(
                "{}: truncated: {need} data bytes expected, found {}",
                img.display(),
                data.len().saturating_sub(off)
            )));
        }
        return Ok((
            h,
            RawData {
                buf: data,
                off,
                len: need,
            },
        ));
    }
    single_file_data(h, raw, path)
}

fn single_file_data(h: Header, raw: Vec<u8>, path: &Path) -> Result<(Header, RawData)> {
    let need = h.data_bytes()?;
    let gz = is_gzip(&raw);
    let off = usize::try_from(h.vox_offset)
        .map_err(|_| Error::volume(format!("vox_offset {} is negative", h.vox_offset)))?;
    let cap = off
        .checked_add(need)
        .ok_or_else(|| Error::volume("dims overflow"))?;
    if !gz && raw.len() < cap {
        return Err(Error::volume(format!(
            "{}: truncated: {} data bytes expected at offset {off} for dims {:?} ({}), file has {}",
            path.display(),
            need,
            h.shape(),
            h.dtype()?.name(),
            raw.len()
        )));
    }
    if gz {
        // refuse impossible dims before inflating
        let n = raw.len();
        // deflate expands at most ~1032:1
        if n.saturating_mul(1032) < cap {
            return Err(Error::volume(format!(
                "{}: dims {:?} ({}) need {cap} bytes, the gzip stream holds at most {}",
                path.display(),
                h.shape(),
                h.dtype()?.name(),
                n.saturating_mul(1032)
            )));
        }
        // the trailer's size (ISIZE) is only the last member's: a stream of several members
        // (`cat a.gz b.gz`) is valid, so a short ISIZE is no refusal; the decoder finds truncation
    }
    let mut data = maybe_gunzip(raw, Some(cap), path)?;
    if data.len() < cap {
        return Err(Error::volume(format!(
            "{}: truncated: {need} data bytes expected, found {}",
            path.display(),
            data.len().saturating_sub(off)
        )));
    }
    data.truncate(cap);
    Ok((
        h,
        RawData {
            buf: data,
            off,
            len: need,
        },
    ))
}

/// Write a NIfTI-1 single file (`.nii`, or gzip when the name ends in `.gz`) from float32 data in
/// Fortran order with `affine` as sform (code 2, aligned) and qform code 0.
pub fn write_nifti1(
    path: &Path,
    shape: &[usize],
    data_f: &[u8],
    dt: DType,
    affine: &[[f64; 4]; 4],
    zooms: &[f64],
    level: u32,
) -> Result<()> {
    if shape.is_empty() || shape.len() > 7 {
        return Err(Error::shape(format!(
            "data: expected 1 to 7 dimensions, got {}",
            shape.len()
        )));
    }
    if shape.iter().any(|&d| d == 0 || d > i16::MAX as usize) {
        return Err(Error::shape(format!(
            "data: NIfTI-1 dims must lie in 1..32767, got {shape:?}"
        )));
    }
    let mut h = vec![0u8; 352];
    let put_i16 =
        |h: &mut [u8], off: usize, v: i16| h[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 =
        |h: &mut [u8], off: usize, v: f32| h[off..off + 4].copy_from_slice(&v.to_le_bytes());
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    h[38] = b'r'; // regular = 'r' (ANALYZE compatibility)
    put_i16(&mut h, 40, shape.len() as i16);
    for (i, &d) in shape.iter().enumerate() {
        put_i16(&mut h, 42 + 2 * i, d as i16);
    }
    for i in shape.len()..7 {
        put_i16(&mut h, 42 + 2 * i, 1);
    }
    put_i16(&mut h, 70, dt.code());
    put_i16(&mut h, 72, (dt.size() * 8) as i16);
    put_f32(&mut h, 76, 1.0); // qfac
    for i in 0..7 {
        put_f32(
            &mut h,
            80 + 4 * i,
            zooms.get(i).copied().unwrap_or(1.0) as f32,
        );
    }
    put_f32(&mut h, 108, 352.0);
    put_f32(&mut h, 112, 1.0); // scl_slope
    h[123] = 2 | 8; // mm, seconds
    put_i16(&mut h, 252, 0); // qform_code
    put_i16(&mut h, 254, 2); // sform_code aligned
    for (row, r) in affine.iter().take(3).enumerate() {
        for (c, &v) in r.iter().enumerate() {
            put_f32(&mut h, 280 + 16 * row + 4 * c, v as f32);
        }
    }
    h[344..348].copy_from_slice(b"n+1\0");
    let file = std::fs::File::create(path).map_err(|e| Error::io(path.display(), e))?;
    let mut w = std::io::BufWriter::new(file);
    let gz = path.to_string_lossy().to_lowercase().ends_with(".gz");
    let res = if gz {
        let mut enc = flate2::write::GzEncoder::new(w, flate2::Compression::new(level));
        std::io::Write::write_all(&mut enc, &h)
            .and_then(|_| std::io::Write::write_all(&mut enc, data_f))
            .and_then(|_| enc.finish().map(|_| ()))
    } else {
        std::io::Write::write_all(&mut w, &h)
            .and_then(|_| std::io::Write::write_all(&mut w, data_f))
            .and_then(|_| std::io::Write::flush(&mut w))
    };
    res.map_err(|e| Error::io(path.display(), e))
}
