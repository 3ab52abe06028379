//! Reading: `.nii`, `.nii.gz` and `.hdr`/`.img` pairs, dimensions checked against the bytes
//! present before any allocation, and decoding to float as nibabel's `get_fdata()`.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::gzip::{is_gzip, maybe_gunzip};
use super::header::{parse_header, DType, Header};
use crate::error::{Error, Result};

/// The file's bytes, into a kept buffer when the pipeline's `scratch::scope` has one.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let size = f.metadata().map_or(0, |m| m.len() as usize);
    let mut buf = crate::volume::scratch::take(size);
    buf.clear();
    buf.try_reserve_exact(size)
        .map_err(|e| Error::io(path.display(), std::io::Error::other(e)))?;
    f.read_to_end(&mut buf)
        .map_err(|e| Error::io(path.display(), e))?;
    Ok(buf)
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

    /// The whole buffer (to hand back to `scratch::give`).
    pub fn into_buf(self) -> Vec<u8> {
        self.buf
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
