//! Intensity transforms with MONAI's semantics, parallel over voxels with rayon.

use ndarray::{ArrayD, ArrayViewD, Zip};

use crate::error::{Error, Result};

/// Numeric element types a volume may hold; computed in f64 and rounded once to f32.
pub trait Voxel: Copy + Send + Sync {
    fn to_f64(self) -> f64;
}
macro_rules! voxel {
    ($($t:ty),*) => { $(impl Voxel for $t { #[inline] fn to_f64(self) -> f64 { self as f64 } })* };
}
voxel!(u8, i8, u16, i16, u32, i32, i64, f32, f64);

/// One value through MONAI's `ScaleIntensityRange` (computed in f64, rounded once to f32).
#[inline]
pub fn window(v: f64, a_min: f64, a_max: f64, b_min: f64, b_max: f64, clip: bool) -> f32 {
    let width = a_max - a_min;
    let mut y = if width == 0.0 {
        v - a_min + b_min
    } else {
        (v - a_min) / width * (b_max - b_min) + b_min
    };
    if clip {
        let (lo, hi) = if b_min <= b_max {
            (b_min, b_max)
        } else {
            (b_max, b_min)
        };
        y = y.clamp(lo, hi);
    }
    y as f32
}

/// The bounds of an intensity window must be finite numbers (NaN or an infinity would turn every
/// voxel into NaN): the one check for the direct transform and the fused `load_batch` path.
pub fn check_window(a_min: f64, a_max: f64, b_min: f64, b_max: f64) -> Result<()> {
    for (name, v) in [
        ("a_min", a_min),
        ("a_max", a_max),
        ("b_min", b_min),
        ("b_max", b_max),
    ] {
        if !v.is_finite() {
            return Err(Error::config(format!(
                "window {name}: expected a finite number, got {v}"
            )));
        }
    }
    Ok(())
}

/// MONAI `ScaleIntensityRange(a_min, a_max, b_min, b_max, clip)`: maps `[a_min, a_max]` linearly
/// onto `[b_min, b_max]` (a CT window such as -160..240 HU onto 0..1), optionally clipping.
/// With `a_min == a_max` MONAI shifts only (`x - a_min + b_min`); so does this.
pub fn scale_intensity_range<T: Voxel>(
    x: ArrayViewD<'_, T>,
    a_min: f64,
    a_max: f64,
    b_min: f64,
    b_max: f64,
    clip: bool,
) -> Result<ArrayD<f32>> {
    check_window(a_min, a_max, b_min, b_max)?;
    let mut out = ArrayD::<f32>::zeros(x.raw_dim());
    Zip::from(&mut out)
        .and(&x)
        .par_for_each(|o, &v| *o = window(v.to_f64(), a_min, a_max, b_min, b_max, clip));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;

    #[test]
    fn ct_window_maps_and_clips() -> Result<()> {
        let x = ArrayD::from_shape_vec(vec![4], vec![-1000i16, -160, 40, 1000])
            .map_err(Error::shape)?;
        let y = scale_intensity_range(x.view(), -160.0, 240.0, 0.0, 1.0, true)?;
        assert_eq!(y.as_slice(), Some(&[0.0f32, 0.0, 0.5, 1.0][..]));
        Ok(())
    }

    #[test]
    fn non_finite_bounds_are_refused() {
        let x = ArrayD::<f32>::zeros(vec![2]);
        assert!(matches!(
            scale_intensity_range(x.view(), f64::NAN, 1.0, 0.0, 1.0, false),
            Err(Error::Config(_))
        ));
    }
}
