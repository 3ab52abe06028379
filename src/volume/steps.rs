//! Array steps of the fused pipeline (after load -> orientation -> spacing): MONAI's
//! ScaleIntensityRange(+Percentiles), NormalizeIntensity, CropForeground, SpatialPad,
//! CenterSpatialCrop, ResizeWithPadOrCrop and Resize on a channel-first image `[C, D, H, W]`,
//! with the semantics of `voxlm.transforms` (each tested there against MONAI): intensity
//! statistics over all channels together (MONAI's default, `channel_wise=False`), the
//! foreground box over all channels, crops, pads and resizes applied to every channel.

use ndarray::{s, Array4};
use rayon::prelude::*;

use super::intensity::window;
use super::resize::{resize, resize_slice, Mode};
use crate::error::{Error, Result};

/// One array step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `ScaleIntensityRange(a_min, a_max, b_min, b_max, clip)`
    Window(f64, f64, f64, f64, bool),
    /// `ScaleIntensityRangePercentiles(lower, upper, b_min, b_max, clip)` (numpy's linear
    /// percentiles)
    Percentiles(f64, f64, f64, f64, bool),
    /// `NormalizeIntensity(nonzero)`
    Normalize(bool),
    /// `CropForeground(select_fn = x > 0, margin)`
    CropForeground([usize; 3]),
    /// `SpatialPad(size, symmetric, value)`; -1 keeps a dim
    Pad([i64; 3], bool, f32),
    /// `CenterSpatialCrop(roi)`; -1 keeps a dim
    CenterCrop([i64; 3]),
    /// `ResizeWithPadOrCrop(size, value)`
    PadOrCrop([i64; 3], f32),
    /// `Resize(size, mode)`
    Resize([usize; 3], Mode),
}

/// numpy's `percentile(a, q)` with the default linear method (`_lerp`).
pub fn percentile(values: &mut [f32], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q / 100.0 * (n as f64 - 1.0);
    let lo = pos.floor().clamp(0.0, n as f64 - 1.0) as usize;
    let hi = (lo + 1).min(n - 1);
    let t = pos - lo as f64;
    let (_, a, rest) = values.select_nth_unstable_by(lo, |x, y| x.total_cmp(y));
    let a = *a as f64;
    let b = if hi == lo {
        a
    } else {
        rest.iter().copied().fold(f32::INFINITY, f32::min) as f64
    };
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

fn fill_window(v: &mut Array4<f32>, a0: f64, a1: f64, b0: f64, b1: f64, clip: bool) {
    v.par_mapv_inplace(|x| window(x as f64, a0, a1, b0, b1, clip));
}

fn pad(v: Array4<f32>, size: [i64; 3], symmetric: bool, value: f32) -> Result<Array4<f32>> {
    let sh = v.dim();
    let cur = [sh.1, sh.2, sh.3];
    let mut before = [0usize; 3];
    let mut out = [0usize; 3];
    for i in 0..3 {
        let want = if size[i] < 0 {
            cur[i]
        } else {
            size[i] as usize
        };
        let extra = want.saturating_sub(cur[i]);
        before[i] = if symmetric { extra / 2 } else { 0 };
        out[i] = cur[i] + extra;
    }
    if out == cur {
        return Ok(v);
    }
    super::check_alloc("SpatialPad", &[sh.0, out[0], out[1], out[2]])?;
    let mut o = Array4::<f32>::from_elem((sh.0, out[0], out[1], out[2]), value);
    o.slice_mut(s![
        ..,
        before[0]..before[0] + cur[0],
        before[1]..before[1] + cur[1],
        before[2]..before[2] + cur[2]
    ])
    .assign(&v);
    Ok(o)
}

fn center_crop(v: Array4<f32>, roi: [i64; 3]) -> Array4<f32> {
    let sh = v.dim();
    let cur = [sh.1, sh.2, sh.3];
    let mut st = [0usize; 3];
    let mut r = [0usize; 3];
    for i in 0..3 {
        r[i] = if roi[i] < 0 {
            cur[i]
        } else {
            (roi[i] as usize).min(cur[i])
        };
        st[i] = (cur[i] / 2).saturating_sub(r[i] / 2);
    }
    if r == cur {
        return v;
    }
    v.slice(s![
        ..,
        st[0]..st[0] + r[0],
        st[1]..st[1] + r[1],
        st[2]..st[2] + r[2]
    ])
    .to_owned()
}

/// MONAI CropForeground's box (`select_fn = x > 0` over all channels, `margin`, clipped to the
/// image): start and end (exclusive) per spatial axis; None when no voxel is foreground.
fn foreground_box(v: &Array4<f32>, margin: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    let (c, d, h, w) = v.dim();
    let dims = [d, h, w];
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let planes: Vec<(usize, [usize; 4])> = (0..c * d)
        .into_par_iter()
        .filter_map(|ci| {
            let (i, plane) = (ci % d, v.slice(s![ci / d, ci % d, .., ..]));
            let mut b = [usize::MAX, 0, usize::MAX, 0];
            let mut any = false;
            for (j, row) in plane.outer_iter().enumerate() {
                // first and last foreground voxel of the row
                let first = row.iter().position(|&x| x > 0.0);
                if let Some(k0) = first {
                    let k1 = row.len() - 1 - row.iter().rev().position(|&x| x > 0.0).unwrap_or(0);
                    any = true;
                    b[0] = b[0].min(j);
                    b[1] = b[1].max(j);
                    b[2] = b[2].min(k0);
                    b[3] = b[3].max(k1);
                }
            }
            any.then_some((i, b))
        })
        .collect();
    if planes.is_empty() {
        return None;
    }
    for (i, b) in &planes {
        lo[0] = lo[0].min(*i);
        hi[0] = hi[0].max(*i);
        lo[1] = lo[1].min(b[0]);
        hi[1] = hi[1].max(b[1]);
        lo[2] = lo[2].min(b[2]);
        hi[2] = hi[2].max(b[3]);
    }
    let mut st = [0usize; 3];
    let mut en = [0usize; 3];
    for i in 0..3 {
        st[i] = lo[i].saturating_sub(margin[i]);
        en[i] = (hi[i] + 1 + margin[i]).min(dims[i]);
    }
    Some((st, en))
}

fn crop_foreground(v: Array4<f32>, margin: [usize; 3]) -> Array4<f32> {
    let c = v.dim().0;
    match foreground_box(&v, margin) {
        None => Array4::zeros((c, 0, 0, 0)),
        Some((st, en)) => v
            .slice(s![.., st[0]..en[0], st[1]..en[1], st[2]..en[2]])
            .to_owned(),
    }
}

/// CropForeground then Resize without the cropped copy: every channel is resized from its box
/// read in place (the same values as cropping first).
fn crop_then_resize(
    v: &Array4<f32>,
    margin: [usize; 3],
    size: [usize; 3],
    mode: Mode,
) -> Result<Array4<f32>> {
    let (st, en) = foreground_box(v, margin).ok_or_else(|| {
        Error::shape("Resize: the volume is empty (CropForeground found no voxel > 0)")
    })?;
    let std = v.as_standard_layout();
    let flat = std
        .as_slice()
        .ok_or_else(|| Error::shape("crop: input is not contiguous"))?;
    let (c, d, h, w) = v.dim();
    let shape = [en[0] - st[0], en[1] - st[1], en[2] - st[2]];
    let mut out = Array4::<f32>::zeros((c, size[0], size[1], size[2]));
    for (ch, mut oc) in out.axis_iter_mut(ndarray::Axis(0)).enumerate() {
        let base = (ch * d * h * w + st[0] * h * w + st[1] * w + st[2]) as isize;
        let r = resize_slice(
            flat,
            shape,
            [(h * w) as isize, w as isize, 1],
            base,
            size,
            mode,
        )?;
        if c == 1 {
            return Ok(r.insert_axis(ndarray::Axis(0)));
        }
        oc.assign(&r);
    }
    Ok(out)
}

fn normalize(v: &mut Array4<f32>, nonzero: bool) {
    let sel = |x: f32| !nonzero || x != 0.0;
    let (n, sum) = v
        .iter()
        .filter(|&&x| sel(x))
        .fold((0usize, 0.0f64), |(n, s), &x| (n + 1, s + x as f64));
    if n == 0 {
        return;
    }
    let mean = sum / n as f64;
    let var = v
        .iter()
        .filter(|&&x| sel(x))
        .map(|&x| (x as f64 - mean) * (x as f64 - mean))
        .sum::<f64>()
        / n as f64;
    let std = var.sqrt();
    let std = if std == 0.0 { 1.0 } else { std };
    v.par_mapv_inplace(|x| {
        if sel(x) {
            ((x as f64 - mean) / std) as f32
        } else {
            x
        }
    });
}

/// Run `steps` on `v` in order.
pub fn run(mut v: Array4<f32>, steps: &[Step]) -> Result<Array4<f32>> {
    let mut k = 0;
    while k < steps.len() {
        let st = &steps[k];
        k += 1;
        if let (Step::CropForeground(m), Some(Step::Resize(size, mode))) = (st, steps.get(k)) {
            v = crop_then_resize(&v, *m, *size, *mode)?;
            k += 1;
            continue;
        }
        v = match *st {
            Step::Window(a0, a1, b0, b1, clip) => {
                fill_window(&mut v, a0, a1, b0, b1, clip);
                v
            }
            Step::Percentiles(lo, hi, b0, b1, clip) => {
                if !(0.0..=100.0).contains(&lo) || !(lo..=100.0).contains(&hi) {
                    return Err(Error::config(format!(
                        "percentiles: expected 0 <= lower <= upper <= 100, got {lo}, {hi}"
                    )));
                }
                let mut buf: Vec<f32> = v.iter().copied().collect();
                let a0 = percentile(&mut buf, lo);
                let a1 = percentile(&mut buf, hi);
                drop(buf);
                fill_window(&mut v, a0, a1, b0, b1, clip);
                v
            }
            Step::Normalize(nonzero) => {
                normalize(&mut v, nonzero);
                v
            }
            Step::CropForeground(m) => crop_foreground(v, m),
            Step::Pad(size, sym, value) => pad(v, size, sym, value)?,
            Step::CenterCrop(roi) => center_crop(v, roi),
            Step::PadOrCrop(size, value) => center_crop(pad(v, size, true, value)?, size),
            Step::Resize(size, mode) => {
                if v.is_empty() {
                    return Err(Error::shape(
                        "Resize: the volume is empty (CropForeground found no voxel > 0)",
                    ));
                }
                resize(v.view(), size, mode)?
            }
        };
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_percentiles() {
        let mut v: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert_eq!(percentile(&mut v, 50.0), 5.0);
        assert!((percentile(&mut v, 12.5) - 1.25).abs() < 1e-12);
    }

    #[test]
    fn crop_and_pad() -> Result<()> {
        let mut a = Array4::<f32>::zeros((1, 6, 7, 8));
        a[[0, 2, 3, 4]] = 1.0;
        a[[0, 3, 5, 4]] = 2.0;
        let c = crop_foreground(a.clone(), [1, 0, 0]);
        assert_eq!(c.dim(), (1, 4, 3, 1));
        let p = pad(c, [6, -1, 3], true, -1.0)?;
        assert_eq!(p.dim(), (1, 6, 3, 3));
        assert_eq!(p[[0, 0, 0, 0]], -1.0);
        assert_eq!(center_crop(p, [2, 2, -1]).dim(), (1, 2, 2, 3));
        let huge = pad(
            Array4::<f32>::zeros((1, 2, 2, 2)),
            [1 << 20, 1 << 20, 1 << 20],
            true,
            0.0,
        );
        assert!(huge.is_err_and(|e| e.to_string().contains("SpatialPad")));
        Ok(())
    }

    #[test]
    fn channels_share_the_box_and_the_statistics() -> Result<()> {
        // the foreground of channel 1 widens the box of both channels
        let mut a = Array4::<f32>::zeros((2, 5, 5, 5));
        a[[0, 2, 2, 2]] = 4.0;
        a[[1, 1, 2, 3]] = 2.0;
        let c = run(a.clone(), &[Step::CropForeground([0, 0, 0])])?;
        assert_eq!(c.dim(), (2, 2, 1, 2));
        assert_eq!(c[[0, 1, 0, 0]], 4.0);
        assert_eq!(c[[1, 0, 0, 1]], 2.0);
        // NormalizeIntensity over both channels: mean 6/250, population std
        let n = run(a.clone(), &[Step::Normalize(false)])?;
        let vals: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let std = (vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        assert!((n[[0, 2, 2, 2]] as f64 - (4.0 - mean) / std).abs() < 1e-5);
        assert!((n[[1, 0, 0, 0]] as f64 + mean / std).abs() < 1e-5);
        // percentiles over all voxels of both channels: the 100th is channel 0's 4.0
        let w = run(a, &[Step::Percentiles(0.0, 100.0, 0.0, 1.0, false)])?;
        assert_eq!(w[[0, 2, 2, 2]], 1.0);
        assert_eq!(w[[1, 1, 2, 3]], 0.5);
        Ok(())
    }

    #[test]
    fn resize_after_an_empty_crop_is_an_error() {
        let a = Array4::<f32>::zeros((1, 3, 3, 3));
        let r = run(
            a,
            &[
                Step::CropForeground([0, 0, 0]),
                Step::Resize([2, 2, 2], Mode::Trilinear),
            ],
        );
        assert!(matches!(r, Err(Error::Shape(_))));
        assert!(matches!(
            run(
                Array4::zeros((1, 2, 2, 2)),
                &[Step::Percentiles(60.0, 10.0, 0.0, 1.0, false)]
            ),
            Err(Error::Config(_))
        ));
    }
}
