//! MetaImage (`.mha`, `.mhd` + `.raw`/`.zraw`) reader with ITK's semantics (`itk::MetaImageIO`):
//! spacing from `ElementSpacing` (else `ElementSize`), origin from `Offset`/`Origin`/`Position`,
//! direction column j = row j of `TransformMatrix`/`Rotation`/`Orientation` (stored row-major),
//! all in LPS; voxel data raw or zlib (`CompressedData = True`), any byte order, one or more
//! channels (`ElementNumberOfChannels`, interleaved per voxel). `AnatomicalOrientation` is kept in
//! the metadata (ITK does not use it for the geometry either).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::load::{checked_count, lps_to_ras_affine, parse_floats, Loaded, Meta, MetaValue};
use crate::error::{Error, Result};
use crate::volume::nifti::OutFloat;

/// MetaIO element types: name, size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementType {
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl ElementType {
    pub fn parse(s: &str) -> Option<Self> {
        let base = s.strip_suffix("_ARRAY").unwrap_or(s);
        Some(match base {
            "MET_CHAR" | "MET_ASCII_CHAR" => Self::I8,
            "MET_UCHAR" => Self::U8,
            "MET_SHORT" => Self::I16,
            "MET_USHORT" => Self::U16,
            "MET_INT" | "MET_LONG" => Self::I32,
            "MET_UINT" | "MET_ULONG" => Self::U32,
            "MET_LONG_LONG" => Self::I64,
            "MET_ULONG_LONG" => Self::U64,
            "MET_FLOAT" => Self::F32,
            "MET_DOUBLE" => Self::F64,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }
}

/// A parsed MetaImage header.
#[derive(Clone, Debug)]
pub struct Header {
    pub dims: Vec<usize>,
    pub element_type: ElementType,
    pub element_type_name: String,
    pub channels: usize,
    pub spacing: Vec<f64>,
    pub origin: Vec<f64>,
    /// row-major NDims x NDims `TransformMatrix`
    pub transform: Vec<f64>,
    pub msb: bool,
    pub compressed: bool,
    pub compressed_size: Option<usize>,
    pub header_size: i64,
    pub anatomical_orientation: Option<String>,
    /// `LOCAL` or a file name relative to the header.
    pub data_file: String,
    /// byte offset of the data in the header file (for `LOCAL`).
    pub data_offset: usize,
}

fn bool_value(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "true" | "t" | "1" | "yes"
    )
}

/// Parse the header at the start of `bytes` (up to and including `ElementDataFile`).
pub fn parse_header(bytes: &[u8], file: &Path) -> Result<Header> {
    let bad = |m: String| Error::volume(format!("{}: {m}", file.display()));
    let mut pos = 0usize;
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut data_file = None;
    while pos < bytes.len() {
        let end = bytes[pos..]
            .iter()
            .position(|&c| c == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(bytes.len());
        let line = &bytes[pos..end];
        pos = end;
        let text = std::str::from_utf8(line)
            .map_err(|_| bad("MetaImage header: a line is not text".into()))?
            .trim();
        if text.is_empty() {
            continue;
        }
        let (k, v) = text.split_once('=').ok_or_else(|| {
            bad(format!(
                "MetaImage header: expected 'Key = Value', got {text:?}"
            ))
        })?;
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        if k == "ElementDataFile" {
            data_file = Some(v);
            break;
        }
        if fields.len() > 1000 {
            return Err(bad("MetaImage header: more than 1000 fields".into()));
        }
        fields.push((k, v));
    }
    let data_file = data_file.ok_or_else(|| {
        bad("MetaImage header: no ElementDataFile field (truncated header?)".into())
    })?;
    let get = |names: &[&str]| {
        fields
            .iter()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    };
    let ndims: usize = get(&["NDims"])
        .ok_or_else(|| bad("MetaImage header: missing NDims".into()))?
        .parse()
        .map_err(|_| bad("MetaImage header: NDims is not an integer".into()))?;
    if !(1..=8).contains(&ndims) {
        return Err(bad(format!("MetaImage: NDims must be 1..8, got {ndims}")));
    }
    let nums = |names: &[&str], what: &str| -> Result<Option<Vec<f64>>> {
        match get(names) {
            None => Ok(None),
            Some(v) => parse_floats(v, what, file).map(Some),
        }
    };
    let dims_f = nums(&["DimSize"], "DimSize")?
        .ok_or_else(|| bad("MetaImage header: missing DimSize".into()))?;
    if dims_f.len() != ndims
        || dims_f
            .iter()
            .any(|&d| !(d >= 1.0 && d < 1e9 && d.fract() == 0.0))
    {
        return Err(bad(format!(
            "MetaImage: DimSize must be {ndims} positive integers, got {dims_f:?}"
        )));
    }
    let dims: Vec<usize> = dims_f.iter().map(|&d| d as usize).collect();
    let et_name = get(&["ElementType"])
        .ok_or_else(|| bad("MetaImage header: missing ElementType".into()))?
        .to_string();
    let element_type = ElementType::parse(&et_name).ok_or_else(|| {
        bad(format!(
            "MetaImage: unsupported ElementType {et_name:?} (expected MET_UCHAR, MET_CHAR, MET_USHORT, MET_SHORT, MET_UINT, MET_INT, MET_ULONG, MET_LONG, MET_ULONG_LONG, MET_LONG_LONG, MET_FLOAT, MET_DOUBLE)"
        ))
    })?;
    let channels = match get(&["ElementNumberOfChannels"]) {
        None => 1,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|c| (1..=4096).contains(c))
            .ok_or_else(|| bad(format!("MetaImage: ElementNumberOfChannels {v:?}")))?,
    };
    let want = |v: Option<Vec<f64>>, what: &str, default: Vec<f64>| -> Result<Vec<f64>> {
        match v {
            None => Ok(default),
            Some(v) if v.len() >= ndims && v.iter().all(|x| x.is_finite()) => {
                Ok(v[..ndims].to_vec())
            }
            Some(v) => Err(bad(format!(
                "MetaImage: {what} must hold {ndims} finite numbers, got {v:?}"
            ))),
        }
    };
    let spacing = match nums(&["ElementSpacing"], "ElementSpacing")? {
        Some(v) => want(Some(v), "ElementSpacing", vec![])?,
        None => want(
            nums(&["ElementSize"], "ElementSize")?,
            "ElementSize",
            vec![1.0; ndims],
        )?,
    };
    let origin = want(
        nums(&["Offset", "Origin", "Position"], "Offset")?,
        "Offset",
        vec![0.0; ndims],
    )?;
    let mut eye = vec![0.0; ndims * ndims];
    for i in 0..ndims {
        eye[i * ndims + i] = 1.0;
    }
    let transform = match nums(
        &["TransformMatrix", "Rotation", "Orientation"],
        "TransformMatrix",
    )? {
        None => eye,
        Some(v) if v.len() == ndims * ndims && v.iter().all(|x| x.is_finite()) => v,
        Some(v) => {
            return Err(bad(format!(
                "MetaImage: TransformMatrix must hold {} numbers, got {}",
                ndims * ndims,
                v.len()
            )))
        }
    };
    let msb = get(&["BinaryDataByteOrderMSB", "ElementByteOrderMSB"]).is_some_and(bool_value);
    let compressed = get(&["CompressedData"]).is_some_and(bool_value);
    let compressed_size = get(&["CompressedDataSize"]).and_then(|v| v.parse::<usize>().ok());
    let header_size = match get(&["HeaderSize"]) {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|h| *h >= -1)
            .ok_or_else(|| bad(format!("MetaImage: HeaderSize {v:?}")))?,
    };
    if let Some(b) = get(&["BinaryData"]) {
        if !bool_value(b) {
            return Err(bad(
                "MetaImage: ASCII voxel data (BinaryData = False) is not supported".into(),
            ));
        }
    }
    Ok(Header {
        dims,
        element_type,
        element_type_name: et_name,
        channels,
        spacing,
        origin,
        transform,
        msb,
        compressed,
        compressed_size,
        header_size,
        anatomical_orientation: get(&["AnatomicalOrientation"]).map(str::to_string),
        data_file,
        data_offset: pos,
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path.display(), e))
}

/// The voxel bytes (decompressed) of a MetaImage whose header is `h`.
fn voxel_bytes(path: &Path, h: &Header, file_bytes: Vec<u8>, expected: usize) -> Result<Vec<u8>> {
    let bad = |m: String| Error::volume(format!("{}: {m}", path.display()));
    let (mut buf, mut off, data_path): (Vec<u8>, usize, PathBuf) = if h.data_file == "LOCAL" {
        (file_bytes, h.data_offset, path.to_path_buf())
    } else {
        if h.data_file.starts_with("LIST") || h.data_file.contains('%') {
            return Err(bad(format!(
                "MetaImage: ElementDataFile {:?} (file lists and patterns) is not supported",
                h.data_file
            )));
        }
        let p = path.parent().unwrap_or(Path::new(".")).join(&h.data_file);
        (read_file(&p)?, 0, p)
    };
    let shown = data_path.display().to_string();
    if h.compressed {
        let mut end = buf.len();
        if let Some(c) = h.compressed_size {
            end = end.min(off.saturating_add(c));
        }
        let src = buf.get(off..end).unwrap_or(&[]);
        let mut out = Vec::with_capacity(expected.min(1 << 30));
        let res = if src.starts_with(&[0x1f, 0x8b]) {
            flate2::read::GzDecoder::new(src)
                .take(expected as u64 + 1)
                .read_to_end(&mut out)
        } else {
            flate2::read::ZlibDecoder::new(src)
                .take(expected as u64 + 1)
                .read_to_end(&mut out)
        };
        res.map_err(|e| Error::volume(format!("{shown}: corrupt compressed voxel data ({e})")))?;
        if out.len() < expected {
            return Err(Error::volume(format!(
                "{shown}: compressed voxel data hold {} bytes, expected {expected}",
                out.len()
            )));
        }
        out.truncate(expected);
        return Ok(out);
    }
    if h.data_file != "LOCAL" {
        off = if h.header_size == -1 {
            buf.len().saturating_sub(expected)
        } else {
            h.header_size as usize
        };
    }
    if buf.len() < off.saturating_add(expected) {
        return Err(Error::volume(format!(
            "{shown}: truncated voxel data: {} bytes after the header, expected {expected}",
            buf.len().saturating_sub(off)
        )));
    }
    if off == 0 {
        buf.truncate(expected);
        return Ok(buf);
    }
    Ok(buf[off..off + expected].to_vec())
}

/// Decode `n` values of `et` from `bytes` into `T` (via f64).
pub fn decode<T: OutFloat>(bytes: &[u8], et: ElementType, msb: bool, n: usize) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = vec![T::from_f64(0.0); n];
    macro_rules! go {
        ($t:ty, $k:expr) => {
            out.par_chunks_mut(1 << 16)
                .zip(bytes.par_chunks($k << 16))
                .for_each(|(o, b)| {
                    for (v, c) in o.iter_mut().zip(b.chunks_exact($k)) {
                        let mut a = [0u8; $k];
                        a.copy_from_slice(c);
                        let x = if msb {
                            <$t>::from_be_bytes(a)
                        } else {
                            <$t>::from_le_bytes(a)
                        };
                        *v = T::from_f64(x as f64);
                    }
                })
        };
    }
    match et {
        ElementType::I8 => go!(i8, 1),
        ElementType::U8 => go!(u8, 1),
        ElementType::I16 => go!(i16, 2),
        ElementType::U16 => go!(u16, 2),
        ElementType::I32 => go!(i32, 4),
        ElementType::U32 => go!(u32, 4),
        ElementType::I64 => go!(i64, 8),
        ElementType::U64 => go!(u64, 8),
        ElementType::F32 => go!(f32, 4),
        ElementType::F64 => go!(f64, 8),
    }
    out
}

/// Read a MetaImage file held in memory (`path` names it and locates a separate data file).
pub fn parse_bytes<T: OutFloat>(bytes: Vec<u8>, path: &Path) -> Result<Loaded<T>> {
    let head_len = bytes.len().min(1 << 20);
    let h = parse_header(&bytes[..head_len], path)?;
    let voxels = checked_count(&h.dims, path)?;
    let n = voxels
        .checked_mul(h.channels)
        .ok_or_else(|| Error::volume(format!("{}: voxel count overflows", path.display())))?;
    let expected = n
        .checked_mul(h.element_type.size())
        .filter(|&b| b <= isize::MAX as usize / 2)
        .ok_or_else(|| Error::volume(format!("{}: voxel data size overflows", path.display())))?;
    let raw = voxel_bytes(path, &h, bytes, expected)?;
    let mut data = decode::<T>(&raw, h.element_type, h.msb, n);
    drop(raw);
    let mut shape = h.dims.clone();
    if h.channels > 1 {
        // file order: channel fastest, then x, y, z -> channels last (x fastest)
        let c = h.channels;
        let mut moved = vec![T::from_f64(0.0); n];
        for (v, chunk) in data.chunks_exact(c).enumerate() {
            for (k, &x) in chunk.iter().enumerate() {
                moved[k * voxels + v] = x;
            }
        }
        data = moved;
        shape.push(c);
    }
    let nd = h.dims.len();
    let mut origin = [0.0; 3];
    let mut spacing = [1.0; 3];
    let mut dir = [[0.0; 3]; 3];
    for i in 0..3 {
        dir[i][i] = 1.0;
    }
    for i in 0..nd.min(3) {
        origin[i] = h.origin[i];
        spacing[i] = h.spacing[i];
        for j in 0..nd.min(3) {
            // ITK: direction column j = TransformMatrix row j
            dir[i][j] = h.transform[j * nd + i];
        }
    }
    let mut meta: Meta = vec![
        ("format".into(), MetaValue::Str("metaimage".into())),
        (
            "ElementType".into(),
            MetaValue::Str(h.element_type_name.clone()),
        ),
        (
            "DimSize".into(),
            MetaValue::Ints(h.dims.iter().map(|&d| d as i64).collect()),
        ),
        (
            "ElementSpacing".into(),
            MetaValue::Floats(h.spacing.clone()),
        ),
        ("Offset".into(), MetaValue::Floats(h.origin.clone())),
        (
            "TransformMatrix".into(),
            MetaValue::Floats(h.transform.clone()),
        ),
        (
            "ElementNumberOfChannels".into(),
            MetaValue::Int(h.channels as i64),
        ),
        ("CompressedData".into(), MetaValue::Bool(h.compressed)),
        (
            "ElementDataFile".into(),
            MetaValue::Str(h.data_file.clone()),
        ),
    ];
    if let Some(a) = &h.anatomical_orientation {
        meta.push(("AnatomicalOrientation".into(), MetaValue::Str(a.clone())));
    }
    Ok(Loaded {
        data,
        shape,
        fortran: true,
        affine: lps_to_ras_affine(origin, spacing, dir),
        meta,
    })
}

/// Read a `.mha` or `.mhd` (+ data file) from disk.
pub fn load<T: OutFloat>(path: &Path) -> Result<Loaded<T>> {
    let bytes = read_file(path)?;
    parse_bytes(bytes, path)
}
