//! The NIfTI-1/2 header: element types, the fields voxlm uses, parsing (both endiannesses) and
//! the fixes nibabel's `check_fix` applies on load.

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

pub(super) struct Reader<'a> {
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
    pub(super) fn check_fix(&mut self) -> Result<()> {
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

    /// `(slope, inter)` as nibabel applies them: None when the slope is 0 or not finite, or when
    /// they are 1 and 0.
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
        // nibabel's `apply_read_scaling` short-cut: slope 1 and intercept 0 leave the values as
        // stored (a float -0.0 stays -0.0; `x * 1 + 0` would turn it into +0.0)
        if self.scl_slope == 1.0 && self.scl_inter == 0.0 {
            return Ok(None);
        }
        Ok(Some((self.scl_slope, self.scl_inter)))
    }

    pub fn zooms(&self) -> Vec<f64> {
        (1..=self.dim[0] as usize).map(|i| self.pixdim[i]).collect()
    }
}
