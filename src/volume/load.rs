//! One entry point for every volume format, dispatched by content: NIfTI (gzip magic or
//! `sizeof_hdr`), DICOM (`DICM` at byte 128, or a folder), MetaImage (a text header starting with
//! `ObjectType`/`NDims`), numpy `.npy`, PNG and JPEG. Every reader returns a [`Loaded`]: voxel
//! values in Fortran order with nibabel's axis convention (x = column, y = row, z = slice, extra
//! axes last), the voxel -> world RAS+ affine (nibabel's convention; DICOM/ITK LPS flipped), and
//! metadata.

use std::path::Path;

use crate::error::{Error, Result};
pub use crate::volume::nifti::OutFloat;

pub type M4 = [[f64; 4]; 4];

/// A metadata value (converted to a Python dict entry by the bindings).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Floats(Vec<f64>),
    Ints(Vec<i64>),
    Strs(Vec<String>),
}

pub type Meta = Vec<(String, MetaValue)>;

/// A decoded image: `data` in Fortran order of `shape` (x fastest), or C order when `fortran`
/// is false (`.npy` files keep numpy's order).
#[derive(Clone, Debug)]
pub struct Loaded<T> {
    pub data: Vec<T>,
    pub shape: Vec<usize>,
    pub fortran: bool,
    pub affine: M4,
    pub meta: Meta,
}

/// File formats `load` recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Nifti,
    Dicom,
    MetaImage,
    Npy,
    Png,
    Jpeg,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Nifti => "nifti",
            Format::Dicom => "dicom",
            Format::MetaImage => "metaimage",
            Format::Npy => "npy",
            Format::Png => "png",
            Format::Jpeg => "jpeg",
        }
    }
}

/// The format of `path` from its first bytes (a folder is a DICOM series).
pub fn sniff(path: &Path) -> Result<Format> {
    if path.is_dir() {
        return Ok(Format::Dicom);
    }
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let mut head = Vec::with_capacity(352);
    f.by_ref()
        .take(352)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path.display(), e))?;
    sniff_bytes(&head).ok_or_else(|| {
        Error::volume(format!(
            "{}: unknown image format (expected NIfTI, DICOM, MetaImage, PNG, JPEG or .npy; first bytes {:?})",
            path.display(),
            String::from_utf8_lossy(&head[..head.len().min(8)])
        ))
    })
}

/// The format of a file from its first (up to 352) bytes.
pub fn sniff_bytes(head: &[u8]) -> Option<Format> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Some(Format::Nifti);
    }
    if head.starts_with(b"\x93NUMPY") {
        return Some(Format::Npy);
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(Format::Png);
    }
    if head.starts_with(&[0xff, 0xd8, 0xff]) {
        return Some(Format::Jpeg);
    }
    if head.get(128..132) == Some(b"DICM") {
        return Some(Format::Dicom);
    }
    if let Some(b) = head.get(..4) {
        let a = [b[0], b[1], b[2], b[3]];
        let (le, be) = (u32::from_le_bytes(a), u32::from_be_bytes(a));
        if [348, 540].contains(&le) || [348, 540].contains(&be) {
            return Some(Format::Nifti);
        }
    }
    let start = head
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(head.len());
    let text = &head[start..];
    if text.starts_with(b"ObjectType") || text.starts_with(b"NDims") {
        return Some(Format::MetaImage);
    }
    None
}

/// Options of [`load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The DICOM series to read from a folder holding several.
    pub series_uid: Option<String>,
}

/// Read any supported file (or DICOM folder) as `T` values.
pub fn load<T: OutFloat>(path: &Path, opts: &LoadOptions) -> Result<(Format, Loaded<T>)> {
    let fmt = sniff(path)?;
    let out = match fmt {
        Format::Nifti => load_nifti(path)?,
        Format::Dicom => super::dicom::load(path, opts.series_uid.as_deref())?,
        Format::MetaImage => super::metaimage::load(path)?,
        Format::Npy => super::npy::load(path)?,
        Format::Png | Format::Jpeg => super::image2d::load_volume(path)?,
    };
    Ok((fmt, out))
}

/// NIfTI through `nifti::read_raw` + `decode` (nibabel's `get_fdata` values).
pub fn load_nifti<T: OutFloat>(path: &Path) -> Result<Loaded<T>> {
    use crate::volume::nifti;
    let (h, raw) = nifti::read_raw(path)?;
    let shape = h.shape();
    let n: usize = shape.iter().product();
    let data = nifti::decode::<T>(raw.bytes(), h.dtype()?, h.little_endian, h.scaling()?, n);
    Ok(Loaded {
        data,
        shape,
        fortran: true,
        affine: h.best_affine(),
        meta: vec![("format".into(), MetaValue::Str("nifti".into()))],
    })
}

/// A 3-D float32 volume (first three axes; extra axes of size 1 dropped) and its affine: what
/// the fused pipeline starts from.
pub fn load_3d(path: &Path, opts: &LoadOptions) -> Result<(ndarray::Array3<f32>, M4)> {
    use ndarray::ShapeBuilder;
    let (_, l) = load::<f32>(path, opts)?;
    let mut shape = l.shape.clone();
    while shape.len() > 3 && shape.last() == Some(&1) {
        shape.pop();
    }
    while shape.len() < 3 {
        shape.push(1);
    }
    if shape.len() != 3 {
        return Err(Error::volume(format!(
            "{}: expected a 3D volume, got shape {:?}",
            path.display(),
            l.shape
        )));
    }
    let dims = (shape[0], shape[1], shape[2]);
    let a = if l.fortran {
        ndarray::Array3::from_shape_vec(dims.f(), l.data)
    } else {
        ndarray::Array3::from_shape_vec(dims, l.data)
    }
    .map_err(|e| Error::shape(format!("{}: {e}", path.display())))?;
    Ok((a, l.affine))
}

/// The RAS+ affine of an ITK/DICOM (LPS) geometry: `diag(-1, -1, 1) @ [D diag(s) | o]`, where
/// `dir[i][j]` is component i of the direction of voxel axis j.
pub fn lps_to_ras_affine(origin: [f64; 3], spacing: [f64; 3], dir: [[f64; 3]; 3]) -> M4 {
    let mut a = [[0.0; 4]; 4];
    a[3][3] = 1.0;
    for i in 0..3 {
        let f = if i < 2 { -1.0 } else { 1.0 };
        for j in 0..3 {
            a[i][j] = f * dir[i][j] * spacing[j];
        }
        a[i][3] = f * origin[i];
    }
    a
}

/// Parse a number list ("1 2.5 3"), naming the field on error.
pub fn parse_floats(s: &str, what: &str, file: &Path) -> Result<Vec<f64>> {
    s.split(|c: char| c.is_ascii_whitespace() || c == '\\' || c == ',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<f64>().map_err(|_| {
                Error::volume(format!(
                    "{}: {what}: expected numbers, got {s:?}",
                    file.display()
                ))
            })
        })
        .collect()
}

/// Checked product of dimensions (a voxel count that overflows is a format error).
pub fn checked_count(shape: &[usize], file: &Path) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::volume(format!("{}: dimensions {shape:?} overflow", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff_bytes(b"\x1f\x8b\x08"), Some(Format::Nifti));
        assert_eq!(sniff_bytes(b"  NDims = 3\n"), Some(Format::MetaImage));
        let mut d = vec![0u8; 132];
        d[128..].copy_from_slice(b"DICM");
        assert_eq!(sniff_bytes(&d), Some(Format::Dicom));
        assert_eq!(sniff_bytes(b"hello"), None);
        assert_eq!(sniff_bytes(b""), None);
    }
}
