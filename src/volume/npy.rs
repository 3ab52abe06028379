//! numpy `.npy` volumes (format versions 1-3; M3D-Cap stores float32 `[1, 32, 256, 256]`):
//! numeric dtypes of either byte order, C or Fortran order. No geometry: the affine is the
//! identity. Channels as `voxlm.load_image` documents: a 4-D array with one leading channel is
//! squeezed to `[D, H, W]`; a 4-D array with C > 1 leading channels is moved to `[D, H, W, C]`.

use std::path::Path;

use super::load::{checked_count, Loaded, MetaValue};
use crate::error::{Error, Result};
use crate::volume::nifti::OutFloat;

/// `(kind, size, big_endian, fortran_order, shape, data offset)` of an `.npy` header.
pub struct Header {
    pub kind: u8,
    pub size: usize,
    pub big_endian: bool,
    pub fortran: bool,
    pub shape: Vec<usize>,
    pub offset: usize,
}

fn field<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let i = dict.find(&format!("'{key}'"))?;
    let rest = &dict[i + key.len() + 2..];
    let c = rest.find(':')?;
    Some(rest[c + 1..].trim_start())
}

pub fn parse_header(b: &[u8], file: &Path) -> Result<Header> {
    let bad = |m: &str| Error::volume(format!("{}: .npy: {m}", file.display()));
    if !b.starts_with(b"\x93NUMPY") || b.len() < 10 {
        return Err(bad("not a numpy file (magic \\x93NUMPY missing)"));
    }
    let (len, start): (usize, usize) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => {
            let l = b.get(8..12).ok_or_else(|| bad("truncated header"))?;
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
        }
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let dict = b
        .get(start..start.saturating_add(len))
        .ok_or_else(|| bad("truncated header"))?;
    let dict = std::str::from_utf8(dict).map_err(|_| bad("header is not text"))?;
    let descr = field(dict, "descr").ok_or_else(|| bad("no 'descr' in the header"))?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| bad("descr is not a simple dtype string"))?;
    let db = descr.as_bytes();
    if db.len() < 3 {
        return Err(bad(&format!("dtype {descr:?} is not numeric")));
    }
    let big_endian = db[0] == b'>';
    let kind = db[1];
    let size: usize = descr[2..]
        .parse()
        .map_err(|_| bad(&format!("dtype {descr:?} is not numeric")))?;
    let ok = match kind {
        b'f' => size == 4 || size == 8,
        b'i' | b'u' => [1, 2, 4, 8].contains(&size),
        b'b' => size == 1,
        _ => false,
    };
    if !ok {
        return Err(bad(&format!("dtype {descr:?} is not numeric")));
    }
    let fortran = field(dict, "fortran_order")
        .ok_or_else(|| bad("no 'fortran_order' in the header"))?
        .starts_with("True");
    let sh = field(dict, "shape").ok_or_else(|| bad("no 'shape' in the header"))?;
    let sh = sh
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("shape is not a tuple"))?;
    let shape = sh
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<usize>()
                .map_err(|_| bad(&format!("shape ({sh})")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Header {
        kind,
        size,
        big_endian,
        fortran,
        shape,
        offset: start + len,
    })
}

/// Decode `.npy` bytes held in memory.
pub fn parse_bytes<T: OutFloat>(bytes: &[u8], file: &Path) -> Result<Loaded<T>> {
    let h = parse_header(bytes, file)?;
    let n = checked_count(&h.shape, file)?;
    let need = n
        .checked_mul(h.size)
        .ok_or_else(|| Error::volume(format!("{}: .npy: size overflows", file.display())))?;
    let body = bytes.get(h.offset..).unwrap_or(&[]);
    if body.len() < need {
        return Err(Error::volume(format!(
            "{}: truncated .npy: {} data bytes, expected {need} for shape {:?}",
            file.display(),
            body.len(),
            h.shape
        )));
    }
    let body = &body[..need];
    let mut data = vec![T::from_f64(0.0); n];
    macro_rules! go {
        ($t:ty, $k:expr) => {{
            use rayon::prelude::*;
            let be = h.big_endian;
            data.par_chunks_mut(1 << 16)
                .zip(body.par_chunks($k << 16))
                .for_each(|(o, b)| {
                    for (v, c) in o.iter_mut().zip(b.chunks_exact($k)) {
                        let mut a = [0u8; $k];
                        a.copy_from_slice(c);
                        let x = if be {
                            <$t>::from_be_bytes(a)
                        } else {
                            <$t>::from_le_bytes(a)
                        };
                        *v = T::from_f64(x as f64);
                    }
                })
        }};
    }
    match (h.kind, h.size) {
        (b'f', 4) => go!(f32, 4),
        (b'f', 8) => go!(f64, 8),
        (b'i', 1) => go!(i8, 1),
        (b'u', 1) | (b'b', 1) => go!(u8, 1),
        (b'i', 2) => go!(i16, 2),
        (b'u', 2) => go!(u16, 2),
        (b'i', 4) => go!(i32, 4),
        (b'u', 4) => go!(u32, 4),
        (b'i', 8) => go!(i64, 8),
        (b'u', 8) => go!(u64, 8),
        _ => return Err(Error::volume(format!("{}: .npy dtype", file.display()))),
    }
    let original: Vec<i64> = h.shape.iter().map(|&d| d as i64).collect();
    let mut shape = h.shape.clone();
    let mut fortran = h.fortran;
    let mut channels_last = false;
    match shape.len() {
        2 | 3 => {}
        4 if shape[0] == 1 => {
            shape.remove(0);
        }
        4 => {
            // [C, D, H, W] -> [D, H, W, C]
            let (c, d, hh, w) = (shape[0], shape[1], shape[2], shape[3]);
            let mut moved = vec![T::from_f64(0.0); n];
            let idx = |ci: usize, di: usize, hi: usize, wi: usize| {
                if h.fortran {
                    ci + c * (di + d * (hi + hh * wi))
                } else {
                    ((ci * d + di) * hh + hi) * w + wi
                }
            };
            let mut o = 0;
            for di in 0..d {
                for hi in 0..hh {
                    for wi in 0..w {
                        for ci in 0..c {
                            moved[o] = data[idx(ci, di, hi, wi)];
                            o += 1;
                        }
                    }
                }
            }
            data = moved;
            shape = vec![d, hh, w, c];
            fortran = false;
            channels_last = true;
        }
        _ => return Err(Error::volume(format!(
            "{}: expected a .npy volume of 2-4 dims ([D, H, W] or [C, D, H, W]), got shape {:?}",
            file.display(),
            h.shape
        ))),
    }
    let mut affine = [[0.0; 4]; 4];
    for (i, r) in affine.iter_mut().enumerate() {
        r[i] = 1.0;
    }
    Ok(Loaded {
        data,
        shape,
        fortran,
        affine,
        meta: vec![
            ("format".into(), MetaValue::Str("npy".into())),
            ("original_shape".into(), MetaValue::Ints(original)),
            ("channels_last".into(), MetaValue::Bool(channels_last)),
        ],
    })
}

pub fn load<T: OutFloat>(path: &Path) -> Result<Loaded<T>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    parse_bytes(&bytes, path)
}
