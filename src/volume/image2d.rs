//! 2D images: PNG (`png` crate; 1-16 bit grey, grey+alpha, RGB, RGBA, palette expanded to RGB(A)
//! as Pillow's `convert`) and JPEG (`zune-jpeg`; grey and YCbCr -> RGB). Pixels come out as
//! Pillow's `np.asarray(Image.open(p))` lays them out: `[H, W]` or `[H, W, C]`, uint8 (16-bit PNG
//! grey: uint16). Plus the CLIP image preprocessing of transformers' `CLIPImageProcessor`: a port
//! of Pillow's separable resampling (`libImaging/Resample.c`, BICUBIC a = -0.5, its 22-bit
//! fixed-point coefficients and rounding, horizontal pass first) so that uint8 results are
//! bit-exact, center crop, rescale and normalise; and LLaVA's `expand2square`.

use std::path::Path;

use ndarray::{Array3, ArrayView3};

use super::load::{Loaded, MetaValue};
use crate::error::{Error, Result};
use crate::volume::nifti::OutFloat;

/// A decoded 2D image: `[H, W, C]` samples, row-major; `bits` 8 or 16.
#[derive(Clone, Debug)]
pub struct Image2d {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub bits: u8,
    pub data: Vec<u16>,
    pub format: &'static str,
}

impl Image2d {
    /// The `[H, W, C]` uint8 array (16-bit samples must be reduced by the caller).
    pub fn to_u8(&self) -> Result<Array3<u8>> {
        if self.bits != 8 {
            return Err(Error::dtype(format!(
                "expected an 8-bit image, got {} bits",
                self.bits
            )));
        }
        Array3::from_shape_vec(
            (self.height, self.width, self.channels),
            self.data.iter().map(|&v| v as u8).collect(),
        )
        .map_err(|e| Error::shape(e.to_string()))
    }
}

fn guard<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // decoders are third-party code: a panic on hostile input becomes a format error
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(Error::volume(format!(
            "{}: corrupt {what} data (the decoder gave up)",
            path.display()
        ))),
    }
}

/// Decode PNG bytes.
pub fn decode_png(bytes: &[u8], path: &Path) -> Result<Image2d> {
    guard(path, "PNG", || {
        let bad = |e: String| Error::volume(format!("{}: corrupt PNG ({e})", path.display()));
        let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
        dec.set_transformations(png::Transformations::EXPAND);
        let mut reader = dec.read_info().map_err(|e| bad(e.to_string()))?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| bad("image too large".into()))?;
        let mut buf = vec![0u8; size];
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| bad(e.to_string()))?;
        let channels = match info.color_type {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => return Err(bad("palette not expanded".into())),
        };
        let (w, h) = (info.width as usize, info.height as usize);
        let sixteen = info.bit_depth == png::BitDepth::Sixteen;
        let n = w * h * channels;
        let mut data = Vec::with_capacity(n);
        for row in buf.chunks(info.line_size).take(h) {
            if sixteen {
                data.extend(
                    row.chunks_exact(2)
                        .take(w * channels)
                        .map(|c| u16::from_be_bytes([c[0], c[1]])),
                );
            } else {
                data.extend(row.iter().take(w * channels).map(|&v| v as u16));
            }
        }
        if data.len() != n {
            return Err(bad(format!("expected {n} samples, decoded {}", data.len())));
        }
        Ok(Image2d {
            height: h,
            width: w,
            channels,
            bits: if sixteen { 16 } else { 8 },
            data,
            format: "png",
        })
    })
}

/// Decode JPEG bytes (grey stays grey, colour -> RGB).
pub fn decode_jpeg(bytes: &[u8], path: &Path) -> Result<Image2d> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    guard(path, "JPEG", || {
        let bad = |e: String| Error::volume(format!("{}: corrupt JPEG ({e})", path.display()));
        // zune-jpeg fills a truncated scan with grey; Pillow refuses it: require the EOI marker
        let tail = &bytes[bytes.len().saturating_sub(1024)..];
        if !tail.windows(2).any(|w| w == [0xff, 0xd9]) {
            return Err(bad("truncated: no end-of-image marker".into()));
        }
        let mut probe = zune_jpeg::JpegDecoder::new(std::io::Cursor::new(bytes));
        probe.decode_headers().map_err(|e| bad(e.to_string()))?;
        let grey = probe.input_colorspace() == Some(ColorSpace::Luma);
        let (out, channels) = if grey {
            (ColorSpace::Luma, 1)
        } else {
            (ColorSpace::RGB, 3)
        };
        let opts = DecoderOptions::default()
            .jpeg_set_out_colorspace(out)
            .set_max_width(1 << 16)
            .set_max_height(1 << 16);
        let mut dec = zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(bytes), opts);
        let pixels = dec.decode().map_err(|e| bad(e.to_string()))?;
        let info = dec.info().ok_or_else(|| bad("no image header".into()))?;
        let (w, h) = (info.width as usize, info.height as usize);
        if pixels.len() != w * h * channels {
            return Err(bad(format!(
                "decoded {} bytes for {w}x{h}x{channels}",
                pixels.len()
            )));
        }
        Ok(Image2d {
            height: h,
            width: w,
            channels,
            bits: 8,
            data: pixels.into_iter().map(|v| v as u16).collect(),
            format: "jpeg",
        })
    })
}

/// Read a PNG or JPEG file (by content).
pub fn load_2d(path: &Path) -> Result<Image2d> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(&bytes, path)
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        decode_jpeg(&bytes, path)
    } else {
        Err(Error::volume(format!(
            "{}: not a PNG or JPEG file",
            path.display()
        )))
    }
}

/// A 2D image as a `Loaded` volume: `[H, W(, C)]` in C order, identity affine (no pixel
/// spacing in PNG/JPEG).
pub fn load_volume<T: OutFloat>(path: &Path) -> Result<Loaded<T>> {
    let im = load_2d(path)?;
    let mut shape = vec![im.height, im.width];
    if im.channels > 1 {
        shape.push(im.channels);
    }
    let mut affine = [[0.0; 4]; 4];
    for (i, r) in affine.iter_mut().enumerate() {
        r[i] = 1.0;
    }
    Ok(Loaded {
        data: im.data.iter().map(|&v| T::from_f64(v as f64)).collect(),
        shape,
        fortran: false,
        affine,
        meta: vec![
            ("format".into(), MetaValue::Str(im.format.into())),
            ("bits".into(), MetaValue::Int(im.bits as i64)),
            ("channels".into(), MetaValue::Int(im.channels as i64)),
            ("axes".into(), MetaValue::Str("HWC".into())),
        ],
    })
}

/// Pillow's `convert("RGB")`: grey replicated, alpha dropped (no compositing), 16-bit grey
/// clipped to 255 as Pillow's `I;16 -> L` conversion does.
pub fn to_rgb(im: &Image2d) -> Result<Array3<u8>> {
    let (h, w) = (im.height, im.width);
    let mut out = Array3::<u8>::zeros((h, w, 3));
    let c = im.channels;
    let conv = |v: u16| -> u8 { v.min(255) as u8 };
    for (p, px) in im.data.chunks_exact(c).enumerate() {
        let (y, x) = (p / w, p % w);
        let rgb = match c {
            1 | 2 => [conv(px[0]); 3],
            _ => [conv(px[0]), conv(px[1]), conv(px[2])],
        };
        for k in 0..3 {
            out[[y, x, k]] = rgb[k];
        }
    }
    Ok(out)
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box (0, in_size):
/// per output index the first input index, the tap count, and the fixed-point taps.
fn coeffs(in_size: usize, out_size: usize) -> (usize, Vec<(usize, usize)>, Vec<i32>) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64)
            .min(in_size as i64)
            .max(xmin as i64) as usize
            - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter_mut().enumerate() {
            if x < xmax {
                if ww != 0.0 {
                    *kx /= ww;
                }
            } else {
                *kx = 0.0;
            }
        }
        let scale_fp = (1u64 << PRECISION_BITS) as f64;
        for x in 0..ksize {
            let v = k[x];
            kk[xx * ksize + x] = if v < 0.0 {
                (-0.5 + v * scale_fp) as i32
            } else {
                (0.5 + v * scale_fp) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    (ksize, bounds, kk)
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((out_w, out_h), BICUBIC)` of an `[H, W, C]` uint8 image, bit-exact.
pub fn resize_bicubic(img: ArrayView3<u8>, out_h: usize, out_w: usize) -> Result<Array3<u8>> {
    let (h, w, c) = img.dim();
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::shape(format!(
            "resize: expected non-empty sizes, got {h}x{w} -> {out_h}x{out_w}"
        )));
    }
    let need_h = out_w != w;
    let need_v = out_h != h;
    let (ksv, bv, kv) = coeffs(h, out_h);
    // horizontal pass over the rows the vertical pass uses
    let (ybox_first, ybox_last) = if need_v {
        let (f, _) = bv[0];
        let (l0, l1) = bv[out_h - 1];
        (f, l0 + l1)
    } else {
        (0, h)
    };
    let temp: Array3<u8> = if need_h {
        let (ksh, bh, kh) = coeffs(w, out_w);
        let rows = ybox_last - ybox_first;
        let mut t = Array3::<u8>::zeros((rows, out_w, c));
        for yy in 0..rows {
            for xx in 0..out_w {
                let (xmin, xmax) = bh[xx];
                let k = &kh[xx * ksh..xx * ksh + ksh];
                for ch in 0..c {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for x in 0..xmax {
                        ss = ss.wrapping_add(img[[yy + ybox_first, x + xmin, ch]] as i32 * k[x]);
                    }
                    t[[yy, xx, ch]] = clip8(ss);
                }
            }
        }
        t
    } else {
        img.slice(ndarray::s![ybox_first..ybox_last, .., ..])
            .to_owned()
    };
    if !need_v {
        return Ok(temp);
    }
    let ow = temp.dim().1;
    let mut out = Array3::<u8>::zeros((out_h, ow, c));
    for yy in 0..out_h {
        let (ymin, ymax) = bv[yy];
        let ymin = ymin - ybox_first;
        let k = &kv[yy * ksv..yy * ksv + ksv];
        for xx in 0..ow {
            for ch in 0..c {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for y in 0..ymax {
                    ss = ss.wrapping_add(temp[[y + ymin, xx, ch]] as i32 * k[y]);
                }
                out[[yy, xx, ch]] = clip8(ss);
            }
        }
    }
    Ok(out)
}

/// LLaVA's `expand2square`: pad the shorter side symmetrically (extra pixel after) on a
/// `background` canvas.
pub fn expand2square(img: ArrayView3<u8>, background: &[u8]) -> Result<Array3<u8>> {
    let (h, w, c) = img.dim();
    if background.len() != c {
        return Err(Error::shape(format!(
            "background: expected {c} values (one per channel), got {}",
            background.len()
        )));
    }
    if h == w {
        return Ok(img.to_owned());
    }
    let s = h.max(w);
    let mut out = Array3::<u8>::zeros((s, s, c));
    for ((_, _, ch), v) in out.indexed_iter_mut() {
        *v = background[ch];
    }
    let (top, left) = if w > h {
        ((w - h) / 2, 0)
    } else {
        (0, (h - w) / 2)
    };
    out.slice_mut(ndarray::s![top..top + h, left..left + w, ..])
        .assign(&img);
    Ok(out)
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the shorter side
/// becomes `size`, the longer `int(size * long / short)`.
pub fn shortest_side_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// CLIPImageProcessor: RGB uint8 `[H, W, 3]` -> resize shortest side to `size` (BICUBIC) ->
/// center crop `crop` (zero pad where smaller) -> `x * rescale` (float64, then float32) ->
/// `(x - mean) / std` in float32. Returns `[3, crop_h, crop_w]`.
pub fn clip_preprocess(
    img: ArrayView3<u8>,
    size: Option<usize>,
    crop: Option<(usize, usize)>,
    rescale: f64,
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<Array3<f32>> {
    let (h, w, c) = img.dim();
    if c != 3 {
        return Err(Error::shape(format!(
            "clip_preprocess: expected an RGB image [H, W, 3], got {c} channels"
        )));
    }
    if !rescale.is_finite() || rescale == 0.0 {
        return Err(Error::config(format!(
            "clip_preprocess: rescale_factor must be a finite non-zero number, got {rescale}"
        )));
    }
    if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
        return Err(Error::config(format!(
            "clip_preprocess: mean must be finite numbers, got {m} in {mean:?}"
        )));
    }
    if let Some(s) = std.iter().find(|s| !s.is_finite() || **s <= 0.0) {
        return Err(Error::config(format!(
            "clip_preprocess: std must be finite positive numbers, got {s} in {std:?}"
        )));
    }
    let resized = match size {
        Some(s) => {
            let (nh, nw) = shortest_side_size(h, w, s);
            resize_bicubic(img, nh.max(1), nw.max(1))?
        }
        None => img.to_owned(),
    };
    let (rh, rw, _) = resized.dim();
    let (ch, cw) = crop.unwrap_or((rh, rw));
    let mut out = Array3::<f32>::zeros((3, ch, cw));
    // transformers' center_crop: top = (h - crop_h) // 2 (padding centred when smaller)
    let top = (rh as i64 - ch as i64).div_euclid(2);
    let left = (rw as i64 - cw as i64).div_euclid(2);
    let zero: [f32; 3] = [0, 1, 2].map(|k| ((0.0f64 * rescale) as f32 - mean[k]) / std[k]);
    for y in 0..ch {
        for x in 0..cw {
            let (sy, sx) = (y as i64 + top, x as i64 + left);
            for k in 0..3 {
                out[[k, y, x]] = if sy >= 0 && sx >= 0 && (sy as usize) < rh && (sx as usize) < rw {
                    let v = (resized[[sy as usize, sx as usize, k]] as f64 * rescale) as f32;
                    (v - mean[k]) / std[k]
                } else {
                    zero[k]
                };
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        let (ks, b, kk) = coeffs(100, 37);
        for (i, &(_, n)) in b.iter().enumerate() {
            let s: i64 = kk[i * ks..i * ks + n].iter().map(|&v| v as i64).sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= n as i64);
        }
    }

    #[test]
    fn identity_resize_keeps_pixels() {
        let a = Array3::from_shape_fn((5, 7, 3), |(y, x, c)| (y * 31 + x * 7 + c) as u8);
        assert_eq!(resize_bicubic(a.view(), 5, 7).unwrap(), a); // ok: test
    }
}
