//! DICOM single files and series (dicom-rs: `dicom-object` parses, `dicom-pixeldata` decodes
//! native, deflated and RLE pixel data). A folder is grouped by SeriesInstanceUID (choose one
//! with `series_uid` when it holds several), slices are sorted along the slice normal
//! (ImageOrientationPatient row x column) by ImagePositionPatient, their spacing must be uniform
//! and their orientation and size equal. Values are `raw * RescaleSlope + RescaleIntercept` in
//! float64 (pydicom's `apply_modality_lut`), raw values masked to BitsStored and sign-extended.
//! Geometry as ITK's `ImageSeriesReader`: origin = first slice's position, directions = row,
//! column and normal, z spacing = (last - first) . normal / (n - 1); the affine is that LPS
//! geometry flipped to RAS+. Data axes: x = column, y = row, z = slice (+ samples last).

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::{PixelDecoder, PixelRepresentation, PlanarConfiguration};
use rayon::prelude::*;

use super::load::{lps_to_ras_affine, Loaded, Meta, MetaValue};
use crate::error::{Error, Result};
use crate::volume::nifti::OutFloat;

type Tag = dicom_core::Tag;

/// Transfer syntaxes whose pixel data voxlm decodes.
pub const SUPPORTED_SYNTAXES: [(&str, &str); 5] = [
    ("1.2.840.10008.1.2", "Implicit VR Little Endian"),
    ("1.2.840.10008.1.2.1", "Explicit VR Little Endian"),
    (
        "1.2.840.10008.1.2.1.99",
        "Deflated Explicit VR Little Endian",
    ),
    ("1.2.840.10008.1.2.2", "Explicit VR Big Endian"),
    ("1.2.840.10008.1.2.5", "RLE Lossless"),
];

fn syntax_name(uid: &str) -> String {
    use dicom_encoding::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .map(|ts| ts.name().to_string())
        .unwrap_or_else(|| "unknown transfer syntax".to_string())
}

/// One frame of one file, decoded (values already rescaled, in the output type).
struct Frame<T> {
    pos: Option<[f64; 3]>,
    orient: Option<[f64; 6]>,
    spacing: Option<[f64; 2]>,
    /// rows x cols x samples, interleaved, rescaled
    values: Vec<T>,
}

/// What one file holds.
struct FileInfo<T> {
    path: PathBuf,
    series: String,
    description: String,
    instance: i64,
    rows: usize,
    cols: usize,
    samples: usize,
    slice_gap: Option<f64>,
    meta: Meta,
    frames: Vec<Frame<T>>,
}

fn s_opt(o: &InMemDicomObject, t: Tag) -> Option<String> {
    o.element_opt(t)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| {
            s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string()
        })
}

fn f_opt(o: &InMemDicomObject, t: Tag) -> Option<f64> {
    o.element_opt(t)
        .ok()
        .flatten()
        .and_then(|e| e.to_float64().ok())
        .filter(|v| v.is_finite())
}

fn fs_opt(o: &InMemDicomObject, t: Tag) -> Option<Vec<f64>> {
    o.element_opt(t)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_float64().ok())
        .filter(|v| v.iter().all(|x| x.is_finite()))
}

fn arr<const N: usize>(v: Option<Vec<f64>>) -> Option<[f64; N]> {
    v.filter(|v| v.len() >= N).map(|v| {
        let mut a = [0.0; N];
        a.copy_from_slice(&v[..N]);
        a
    })
}

/// The first item of sequence `seq` in `o`, then the first item of `inner` in it.
fn nested(o: &InMemDicomObject, seq: Tag, inner: Tag) -> Option<&InMemDicomObject> {
    let outer = o.element_opt(seq).ok().flatten()?.items()?.first()?;
    outer.element_opt(inner).ok().flatten()?.items()?.first()
}

/// How one file's samples are stored (from the decoded pixel data).
#[derive(Clone, Copy)]
struct Samples {
    bpp: usize,
    bits_stored: u32,
    signed: bool,
    planar: bool,
}

/// A frame's pixel bytes as output values `raw * s + b` (rows x cols x samples, interleaved),
/// written into `dst` (of the frame's length).
fn frame_values_into<T: OutFloat>(
    fb: &[u8],
    sm: Samples,
    samples: usize,
    (s, b): (f64, f64),
    dst: &mut [T],
) {
    let Samples {
        bpp,
        bits_stored: bs,
        signed,
        planar,
    } = sm;
    // dicom-pixeldata hands samples over in little-endian order, big-endian syntax included
    let mask: u64 = if bs >= 64 { u64::MAX } else { (1u64 << bs) - 1 };
    let raw_value = move |c: &[u8]| -> f64 {
        let u: u64 = match bpp {
            1 => c[0] as u64,
            2 => u16::from_le_bytes([c[0], c[1]]) as u64,
            _ => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64,
        };
        let u = u & mask;
        if signed && bs > 0 && (u >> (bs - 1)) & 1 == 1 {
            u as f64 - (1u64 << bs) as f64
        } else {
            u as f64
        }
    };
    let rescale = s != 1.0 || b != 0.0;
    let conv = |v: f64| T::from_f64(if rescale { v * s + b } else { v });
    if planar {
        // RRR..GGG..BBB.. -> RGBRGB..
        let n = dst.len() / samples;
        for (i, c) in fb.chunks_exact(bpp).take(dst.len()).enumerate() {
            let (ch, p) = (i / n, i % n);
            dst[p * samples + ch] = conv(raw_value(c));
        }
        return;
    }
    // 16 stored bits in 16 (CT, MR): the sample is the plain i16/u16 (raw_value's result),
    // in a loop without per-voxel branches
    let pairs = dst.iter_mut().zip(fb.chunks_exact(bpp));
    match (bpp, bs, signed) {
        (2, 16, true) => {
            pairs.for_each(|(d, c)| *d = conv(i16::from_le_bytes([c[0], c[1]]) as f64))
        }
        (2, 16, false) => {
            pairs.for_each(|(d, c)| *d = conv(u16::from_le_bytes([c[0], c[1]]) as f64))
        }
        _ => pairs.for_each(|(d, c)| *d = conv(raw_value(c))),
    }
}

/// One file: its attributes, and with `pixels` its decoded, rescaled frames (else only the
/// header up to PixelData is parsed and the frames hold no values: a series is sorted and
/// checked from the headers first, then every slice decoded into its place in the volume).
/// `into`: decode a single-frame file of that many values straight into it (its frame then
/// holds no values; an error if the file holds another number).
fn read_file<T: OutFloat>(
    path: &Path,
    pixels: bool,
    mut into: Option<&mut [T]>,
) -> Result<FileInfo<T>> {
    let bad = |m: String| Error::volume(format!("{}: {m}", path.display()));
    let mut open = OpenFileOptions::new();
    if !pixels {
        open = open.read_until(tags::PIXEL_DATA);
    }
    let obj = open
        .open_file(path)
        .map_err(|e| bad(format!("not a readable DICOM file ({e})")))?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_string();
    if !SUPPORTED_SYNTAXES.iter().any(|(u, _)| *u == ts) {
        return Err(bad(format!(
            "unsupported DICOM transfer syntax {ts} ({}); voxlm decodes {}",
            syntax_name(&ts),
            SUPPORTED_SYNTAXES
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let o: &InMemDicomObject = &obj;
    let int = |t: Tag| -> Option<usize> {
        o.element_opt(t)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<i64>().ok())
            .and_then(|v| usize::try_from(v).ok())
    };
    let px = if pixels {
        if o.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
            return Err(bad("DICOM file has no PixelData (not an image)".into()));
        }
        Some(
            obj.decode_pixel_data()
                .map_err(|e| bad(format!("cannot decode DICOM pixel data ({e})")))?,
        )
    } else {
        None
    };
    let (rows, cols, samples, nframes) = match &px {
        Some(px) => (
            px.rows() as usize,
            px.columns() as usize,
            px.samples_per_pixel() as usize,
            px.number_of_frames().max(1) as usize,
        ),
        None => (
            int(tags::ROWS).unwrap_or(0),
            int(tags::COLUMNS).unwrap_or(0),
            int(tags::SAMPLES_PER_PIXEL).unwrap_or(1),
            int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1),
        ),
    };
    let (ba, bs, signed) = match &px {
        Some(px) => (
            px.bits_allocated() as u32,
            px.bits_stored() as u32,
            matches!(px.pixel_representation(), PixelRepresentation::Signed),
        ),
        None => (
            int(tags::BITS_ALLOCATED).unwrap_or(0) as u32,
            int(tags::BITS_STORED).unwrap_or(0) as u32,
            int(tags::PIXEL_REPRESENTATION) == Some(1),
        ),
    };
    let planar = px
        .as_ref()
        .is_some_and(|px| matches!(px.planar_configuration(), PlanarConfiguration::PixelFirst))
        && samples > 1;
    let per_frame = rows * cols * samples;
    let bpp = (ba / 8) as usize;
    let sm = Samples {
        bpp,
        bits_stored: bs,
        signed,
        planar,
    };
    let bytes: &[u8] = match &px {
        Some(px) => {
            if ![8, 16, 32].contains(&ba) || bs == 0 || bs > ba {
                return Err(bad(format!(
                    "unsupported DICOM pixel layout: BitsAllocated {ba}, BitsStored {bs} (expected 8, 16 or 32 bits)"
                )));
            }
            if rows == 0 || cols == 0 || samples == 0 || samples > 4 {
                return Err(bad(format!(
                    "DICOM image of {rows} rows x {cols} columns x {samples} samples"
                )));
            }
            if ba == 32 && ts == "1.2.840.10008.1.2.2" {
                return Err(bad(
                    "unsupported DICOM pixel layout: 32-bit samples in Explicit VR Big Endian"
                        .into(),
                ));
            }
            let bytes = px.data();
            let need = per_frame
                .checked_mul(nframes)
                .and_then(|n| n.checked_mul(bpp))
                .ok_or_else(|| bad("DICOM image size overflows".into()))?;
            if bytes.len() < need {
                return Err(bad(format!(
                    "truncated DICOM pixel data: {} bytes, expected {need} ({nframes} frames of {rows}x{cols}x{samples}, {ba} bits)",
                    bytes.len()
                )));
            }
            bytes
        }
        None => &[],
    };
    // geometry and rescale: classic attributes, else enhanced functional groups
    let shared = |inner: Tag| nested(o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, inner);
    let per_frame_items = o
        .element_opt(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items());
    let frame_item = |k: usize, inner: Tag| -> Option<&InMemDicomObject> {
        per_frame_items?
            .get(k)?
            .element_opt(inner)
            .ok()
            .flatten()?
            .items()?
            .first()
    };
    let classic_pos = arr::<3>(fs_opt(o, tags::IMAGE_POSITION_PATIENT));
    let classic_orient = arr::<6>(fs_opt(o, tags::IMAGE_ORIENTATION_PATIENT));
    let classic_spacing = arr::<2>(fs_opt(o, tags::PIXEL_SPACING));
    let slope0 = f_opt(o, tags::RESCALE_SLOPE);
    let inter0 = f_opt(o, tags::RESCALE_INTERCEPT);
    let mut frames: Vec<Frame<T>> = Vec::with_capacity(nframes);
    for k in 0..nframes {
        let fi = |inner| frame_item(k, inner).or_else(|| shared(inner));
        let pos = classic_pos.or_else(|| {
            arr::<3>(
                fi(tags::PLANE_POSITION_SEQUENCE)
                    .and_then(|i| fs_opt(i, tags::IMAGE_POSITION_PATIENT)),
            )
        });
        let orient = classic_orient.or_else(|| {
            arr::<6>(
                fi(tags::PLANE_ORIENTATION_SEQUENCE)
                    .and_then(|i| fs_opt(i, tags::IMAGE_ORIENTATION_PATIENT)),
            )
        });
        let spacing = classic_spacing.or_else(|| {
            arr::<2>(fi(tags::PIXEL_MEASURES_SEQUENCE).and_then(|i| fs_opt(i, tags::PIXEL_SPACING)))
        });
        let pvt = fi(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE);
        let slope = slope0.or_else(|| pvt.and_then(|i| f_opt(i, tags::RESCALE_SLOPE)));
        let inter = inter0.or_else(|| pvt.and_then(|i| f_opt(i, tags::RESCALE_INTERCEPT)));
        let rescale = (slope.unwrap_or(1.0), inter.unwrap_or(0.0));
        let fb = px
            .as_ref()
            .and(bytes.get(k * per_frame * bpp..(k + 1) * per_frame * bpp));
        let values = if let (Some(fb), Some(dst)) = (fb, into.as_deref_mut()) {
            if nframes != 1 || dst.len() != per_frame {
                return Err(bad(format!(
                    "the slice changed while reading: {nframes} frames of {per_frame} values, expected one of {}",
                    dst.len()
                )));
            }
            frame_values_into::<T>(fb, sm, samples, rescale, dst);
            Vec::new()
        } else if let Some(fb) = fb {
            let mut v = vec![T::from_f64(0.0); per_frame];
            frame_values_into::<T>(fb, sm, samples, rescale, &mut v);
            v
        } else {
            Vec::new()
        };
        frames.push(Frame {
            pos,
            orient,
            spacing,
            values,
        });
    }
    let slice_gap = f_opt(o, tags::SPACING_BETWEEN_SLICES).or_else(|| {
        shared(tags::PIXEL_MEASURES_SEQUENCE).and_then(|i| f_opt(i, tags::SPACING_BETWEEN_SLICES))
    });
    // legacy multi-frame (one ImagePositionPatient for all frames, e.g. RT Dose): frame k
    // lies at GridFrameOffsetVector[k] (else k * slice gap) along the normal
    if nframes > 1 && frames.iter().all(|f| f.pos == frames[0].pos) {
        if let (Some(p0), Some(or)) = (frames[0].pos, frames[0].orient) {
            let nrm = cross([or[0], or[1], or[2]], [or[3], or[4], or[5]]);
            let offsets = fs_opt(o, tags::GRID_FRAME_OFFSET_VECTOR).filter(|v| v.len() == nframes);
            let gap = slice_gap
                .or_else(|| f_opt(o, tags::SLICE_THICKNESS))
                .unwrap_or(1.0);
            for (k, f) in frames.iter_mut().enumerate() {
                let d = offsets.as_ref().map_or(k as f64 * gap, |v| v[k]);
                f.pos = Some([0, 1, 2].map(|i| p0[i] + d * nrm[i]));
            }
        }
    }
    let mut meta: Meta = vec![
        ("format".into(), MetaValue::Str("dicom".into())),
        ("TransferSyntaxUID".into(), MetaValue::Str(ts.clone())),
        ("TransferSyntax".into(), MetaValue::Str(syntax_name(&ts))),
        (
            "RescaleSlope".into(),
            MetaValue::Float(slope0.unwrap_or(1.0)),
        ),
        (
            "RescaleIntercept".into(),
            MetaValue::Float(inter0.unwrap_or(0.0)),
        ),
        ("BitsAllocated".into(), MetaValue::Int(ba as i64)),
        ("BitsStored".into(), MetaValue::Int(bs as i64)),
        ("PixelRepresentation".into(), MetaValue::Int(signed as i64)),
        ("SamplesPerPixel".into(), MetaValue::Int(samples as i64)),
        ("NumberOfFrames".into(), MetaValue::Int(nframes as i64)),
    ];
    for (name, t) in [
        ("Modality", tags::MODALITY),
        ("StudyInstanceUID", tags::STUDY_INSTANCE_UID),
        ("SeriesInstanceUID", tags::SERIES_INSTANCE_UID),
        ("SeriesDescription", tags::SERIES_DESCRIPTION),
        (
            "PhotometricInterpretation",
            tags::PHOTOMETRIC_INTERPRETATION,
        ),
        ("SOPClassUID", tags::SOP_CLASS_UID),
    ] {
        if let Some(v) = s_opt(o, t) {
            meta.push((name.into(), MetaValue::Str(v)));
        }
    }
    if let Some(v) = f_opt(o, tags::SLICE_THICKNESS) {
        meta.push(("SliceThickness".into(), MetaValue::Float(v)));
    }
    Ok(FileInfo {
        path: path.to_path_buf(),
        series: s_opt(o, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        description: s_opt(o, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        instance: o
            .element_opt(tags::INSTANCE_NUMBER)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<i64>().ok())
            .unwrap_or(0),
        rows,
        cols,
        samples,
        slice_gap,
        meta,
        frames,
    })
}

fn is_dicom_file(p: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[128..132] == b"DICM"
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Read a DICOM file or a folder (one series of it) as a volume.
pub fn load<T: OutFloat>(path: &Path, series_uid: Option<&str>) -> Result<Loaded<T>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path.display(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_dicom_file(p))
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(Error::volume(format!(
                "{}: folder holds no DICOM files (none with 'DICM' at byte 128)",
                path.display()
            )));
        }
        v
    } else {
        vec![path.to_path_buf()]
    };
    let infos: Vec<Result<FileInfo<T>>> = files
        .par_iter()
        .map(|p| read_file::<T>(p, files.len() == 1, None))
        .collect();
    let mut all = Vec::with_capacity(infos.len());
    for i in infos {
        all.push(i?);
    }
    // group by series
    let mut uids: Vec<(String, usize, String)> = Vec::new();
    for f in &all {
        match uids.iter_mut().find(|(u, _, _)| *u == f.series) {
            Some(e) => e.1 += 1,
            None => uids.push((f.series.clone(), 1, f.description.clone())),
        }
    }
    let listing = || {
        uids.iter()
            .map(|(u, n, d)| {
                format!(
                    "{u} ({n} files{})",
                    if d.is_empty() {
                        String::new()
                    } else {
                        format!(", {d:?}")
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let chosen = match series_uid {
        Some(s) => {
            if !uids.iter().any(|(u, _, _)| u == s) {
                return Err(Error::volume(format!(
                    "{}: no DICOM series {s:?}; series present: {}",
                    path.display(),
                    listing()
                )));
            }
            s.to_string()
        }
        None if uids.len() > 1 => {
            return Err(Error::volume(format!(
                "{}: {} DICOM series in one folder; choose one with series_uid=: {}",
                path.display(),
                uids.len(),
                listing()
            )))
        }
        None => uids[0].0.clone(),
    };
    let series: Vec<FileInfo<T>> = all.into_iter().filter(|f| f.series == chosen).collect();
    // a folder's headers were read without pixels: each slice is decoded into its place
    let reread = files.len() > 1;
    assemble(path, series, reread)
}

/// The volume of one series. `reread`: the files' headers only were read; every slice is then
/// read again and decoded straight into its place in the volume (peak memory: the volume and
/// one file per thread), else the frames hold their values.
fn assemble<T: OutFloat>(path: &Path, series: Vec<FileInfo<T>>, reread: bool) -> Result<Loaded<T>> {
    let bad = |m: String| Error::volume(format!("{}: {m}", path.display()));
    let first = series
        .first()
        .ok_or_else(|| bad("empty DICOM series".into()))?;
    let (rows, cols, samples) = (first.rows, first.cols, first.samples);
    if let Some(f) = series
        .iter()
        .find(|f| (f.rows, f.cols, f.samples) != (rows, cols, samples))
    {
        return Err(Error::volume(format!(
            "{}: image size {}x{}x{} differs from {}'s {rows}x{cols}x{samples} (mixed series?)",
            f.path.display(),
            f.rows,
            f.cols,
            f.samples,
            first.path.display()
        )));
    }
    if series.len() > 1 && series.iter().any(|f| f.frames.len() > 1) {
        return Err(bad(
            "a series of multi-frame DICOM files is not supported (read one file at a time)".into(),
        ));
    }
    let meta0 = first.meta.clone();
    let gap0 = first.slice_gap;
    let instances: Vec<i64> = series.iter().map(|f| f.instance).collect();
    let names: Vec<String> = series
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    let paths: Vec<PathBuf> = series.iter().map(|f| f.path.clone()).collect();
    // (frame, file name, instance)
    let mut frames: Vec<(Frame<T>, usize)> = Vec::new();
    for (fi, f) in series.into_iter().enumerate() {
        for fr in f.frames {
            frames.push((fr, fi));
        }
    }
    let orient = frames[0].0.orient;
    let have_geometry = frames.iter().all(|(f, _)| f.pos.is_some()) && orient.is_some();
    let o = orient.unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let (r, c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let n = cross(r, c);
    if have_geometry {
        if let Some((_, fi)) = frames.iter().find(|(f, _)| {
            f.orient
                .is_none_or(|p| p.iter().zip(o.iter()).any(|(a, b)| (a - b).abs() > 1e-4))
        }) {
            return Err(Error::volume(format!(
                "{}: ImageOrientationPatient differs from the first slice's {o:?} (mixed series?)",
                names[*fi]
            )));
        }
        frames.sort_by(|a, b| {
            let pa = a.0.pos.map_or(0.0, |p| dot(p, n));
            let pb = b.0.pos.map_or(0.0, |p| dot(p, n));
            pa.total_cmp(&pb)
        });
    } else if names.len() > 1 {
        frames.sort_by_key(|(_, fi)| instances[*fi]);
    }
    let nz = frames.len();
    let ps = frames[0].0.spacing.unwrap_or([1.0, 1.0]);
    let mut dz = gap0.unwrap_or(1.0);
    let origin = frames[0].0.pos.unwrap_or([0.0; 3]);
    if have_geometry && nz > 1 {
        let pos: Vec<f64> = frames
            .iter()
            .map(|(f, _)| f.pos.map_or(0.0, |p| dot(p, n)))
            .collect();
        let gaps: Vec<f64> = pos.windows(2).map(|w| w[1] - w[0]).collect();
        if let Some(k) = gaps.iter().position(|g| g.abs() < 1e-6) {
            return Err(Error::volume(format!(
                "{}: two slices at the same position {:.4} mm along the normal ({} and {}; duplicate or mixed series?)",
                path.display(),
                pos[k],
                names[frames[k].1],
                names[frames[k + 1].1]
            )));
        }
        dz = (pos[nz - 1] - pos[0]) / (nz as f64 - 1.0);
        let tol = (0.01 * dz.abs()).max(1e-3);
        if gaps.iter().any(|g| (g - dz).abs() > tol) {
            let listed: Vec<String> = gaps
                .iter()
                .enumerate()
                .filter(|(_, g)| (*g - dz).abs() > tol)
                .take(20)
                .map(|(k, g)| {
                    format!(
                        "{g:.4} mm between {} and {}",
                        names[frames[k].1],
                        names[frames[k + 1].1]
                    )
                })
                .collect();
            return Err(Error::volume(format!(
                "{}: non-uniform slice spacing (mean {dz:.4} mm): {}",
                path.display(),
                listed.join("; ")
            )));
        }
    }
    let dir = [[r[0], c[0], n[0]], [r[1], c[1], n[1]], [r[2], c[2], n[2]]];
    let affine = lps_to_ras_affine(origin, [ps[1], ps[0], dz], dir);
    let plane = rows * cols;
    let total = plane * nz * samples;
    let mut data = vec![T::from_f64(0.0); total];
    let slab = plane * nz;
    if samples == 1 {
        data.par_chunks_mut(plane)
            .zip(frames.par_iter())
            .try_for_each(|(dst, (f, fi))| -> Result<()> {
                if reread {
                    read_file::<T>(&paths[*fi], true, Some(dst))?;
                } else {
                    for (d, &v) in dst.iter_mut().zip(f.values.iter()) {
                        *d = v;
                    }
                }
                Ok(())
            })?;
    } else {
        for (k, (f, fi)) in frames.iter().enumerate() {
            let again;
            let values = if reread {
                again = read_file::<T>(&paths[*fi], true, None)?;
                match again.frames.first() {
                    Some(fr) if fr.values.len() == plane * samples => &fr.values,
                    _ => {
                        return Err(bad(format!(
                            "{}: the slice changed while reading",
                            names[*fi]
                        )))
                    }
                }
            } else {
                &f.values
            };
            for p in 0..plane {
                for s in 0..samples {
                    data[s * slab + k * plane + p] = values[p * samples + s];
                }
            }
        }
    }
    let mut shape = vec![cols, rows, nz];
    if samples > 1 {
        shape.push(samples);
    }
    let mut meta = meta0;
    meta.push(("PixelSpacing".into(), MetaValue::Floats(ps.to_vec())));
    meta.push((
        "ImageOrientationPatient".into(),
        MetaValue::Floats(o.to_vec()),
    ));
    meta.push((
        "ImagePositionPatient".into(),
        MetaValue::Floats(origin.to_vec()),
    ));
    meta.push(("slice_spacing".into(), MetaValue::Float(dz)));
    meta.push(("geometry".into(), MetaValue::Bool(have_geometry)));
    let mut order: Vec<String> = Vec::new();
    for (_, fi) in &frames {
        if order.last() != Some(&names[*fi]) {
            order.push(names[*fi].clone());
        }
    }
    meta.push(("files".into(), MetaValue::Strs(order)));
    Ok(Loaded {
        data,
        shape,
        fortran: true,
        affine,
        meta,
    })
}
