//! `expf` eight lanes at a time, bit for bit the value of the C library's scalar `expf` that
//! `f32::exp` calls, for the decode step's softmax and SiLU.
//!
//! The algorithm is glibc's (`sysdeps/ieee754/flt-32/e_expf.c`, from ARM's optimized-routines,
//! glibc >= 2.27): in double precision, `x * 32 / ln 2 = k + r` by the round-to-int shift trick,
//! `exp(x) = 2^(k/32) * (C0 r^3 + C1 r^2 + C2 r + 1)` from a 32-entry table of `2^(i/32)` and a
//! cubic, then one rounding to float. On a CPU with AVX2 and FMA glibc's dispatcher runs that code
//! compiled with `-mfma -mavx2` (`__expf_fma`), where GCC fused its multiply-adds; the lanes below
//! repeat the same operations in the same order, read off that function's machine code in
//! Debian's glibc 2.36:
//!
//! ```text
//! kds = fma(InvLn2N, xd, SHIFT)   ki = bits(kds)   kd = kds - SHIFT   r = fma(InvLn2N, xd, -kd)
//! z = fma(r, C0, C1)   r2 = r * r   y = fma(r, C2, 1)   y = fma(z, r2, y)
//! s = bits(T[ki % 32] + (ki << 47))   result = (float)(y * s)
//! ```
//!
//! Inputs whose result is not on that path (|x| >= 88 by the exponent test, infinities, NaN)
//! are recomputed lane by lane with `f32::exp` itself. The test compares every lane with
//! `f32::exp` over a dense sweep of float32 inputs (and, once, all 2^32 of them: identical); where
//! the C library were another, the test would say so, and the step would agree to within an ulp.

// the eight-lane path runs on AVX2 + FMA CPUs: those on which glibc runs `__expf_fma`
use super::cpu_kernels::avx2_fma;

/// `p[i] = exp(p[i] - shift)`, each value equal to `(p[i] - shift).exp()`.
pub(super) fn exp_shifted(p: &mut [f32], shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 + FMA reported by the CPU (`avx2_fma`).
        unsafe { x86::exp_shifted(p, shift) };
        return;
    }
    for v in p.iter_mut() {
        *v = (*v - shift).exp();
    }
}

/// `out[i] = g[i] / (1 + exp(-g[i])) * u[i]` (SiLU of the gate times the up projection), each
/// value equal to the scalar expression.
pub(super) fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == out.len() && u.len() == out.len()); // ok: the step slices them alike
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 + FMA reported by the CPU (`avx2_fma`); equal lengths asserted above.
        unsafe { x86::silu_mul(g, u, out) };
        return;
    }
    for ((a, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *a = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// glibc's `__exp2f_data` for N = 32: `2^(i/32)` with the index bits taken out of the
    /// exponent (`tab`), and the constants of `expf` (bit patterns as in glibc's data file).
    static TAB: [u64; 32] = [
        0x3ff0000000000000,
        0x3fefd9b0d3158574,
        0x3fefb5586cf9890f,
        0x3fef9301d0125b51,
        0x3fef72b83c7d517b,
        0x3fef54873168b9aa,
        0x3fef387a6e756238,
        0x3fef1e9df51fdee1,
        0x3fef06fe0a31b715,
        0x3feef1a7373aa9cb,
        0x3feedea64c123422,
        0x3feece086061892d,
        0x3feebfdad5362a27,
        0x3feeb42b569d4f82,
        0x3feeab07dd485429,
        0x3feea47eb03a5585,
        0x3feea09e667f3bcd,
        0x3fee9f75e8ec5f74,
        0x3feea11473eb0187,
        0x3feea589994cce13,
        0x3feeace5422aa0db,
        0x3feeb737b0cdc5e5,
        0x3feec49182a3f090,
        0x3feed503b23e255d,
        0x3feee89f995ad3ad,
        0x3feeff76f2fb5e47,
        0x3fef199bdd85529c,
        0x3fef3720dcef9069,
        0x3fef5818dcfba487,
        0x3fef7c97337b9b5f,
        0x3fefa4afa2a490da,
        0x3fefd0765b6e4540,
    ];
    /// 0x1.71547652b82fep+0 * 32
    const INV_LN2_N: u64 = 0x40471547652b82fe;
    /// 0x1.8p+52
    const SHIFT: u64 = 0x4338000000000000;
    /// 0x1.c6af84b912394p-5 / 32^3, 0x1.ebfce50fac4f3p-3 / 32^2, 0x1.62e42ff0c52d6p-1 / 32
    const C: [u64; 3] = [0x3ebc6af84b912394, 0x3f2ebfce50fac4f3, 0x3f962e42ff0c52d6];

    /// Four lanes of the main path in double precision.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp4(xd: __m256d) -> __m128 {
        let inv = _mm256_set1_pd(f64::from_bits(INV_LN2_N));
        let shift = _mm256_set1_pd(f64::from_bits(SHIFT));
        let kds = _mm256_fmadd_pd(inv, xd, shift);
        let ki = _mm256_castpd_si256(kds);
        let kd = _mm256_sub_pd(kds, shift);
        let r = _mm256_fmsub_pd(inv, xd, kd);
        let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        let t = _mm256_i64gather_epi64::<8>(TAB.as_ptr() as *const i64, idx);
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let z = _mm256_fmadd_pd(
            r,
            _mm256_set1_pd(f64::from_bits(C[0])),
            _mm256_set1_pd(f64::from_bits(C[1])),
        );
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(r, _mm256_set1_pd(f64::from_bits(C[2])), _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    }

    /// Eight lanes; lanes off the main path (glibc's `abstop >= top12(88.0f)` test) from
    /// `f32::exp`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let lo = exp4(_mm256_cvtps_pd(_mm256_castps256_ps128(x)));
        let hi = exp4(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)));
        let y = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi);
        let top = _mm256_and_si256(
            _mm256_srli_epi32::<20>(_mm256_castps_si256(x)),
            _mm256_set1_epi32(0x7ff),
        );
        let off = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(
            top,
            _mm256_set1_epi32(0x42a),
        )));
        if off == 0 {
            return y;
        }
        let (mut xs, mut ys) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(xs.as_mut_ptr(), x);
        _mm256_storeu_ps(ys.as_mut_ptr(), y);
        for l in 0..8 {
            if off & (1 << l) != 0 {
                ys[l] = xs[l].exp();
            }
        }
        _mm256_loadu_ps(ys.as_ptr())
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(p: &mut [f32], shift: f32) {
        let n = p.len();
        let sh = _mm256_set1_ps(shift);
        let ptr = p.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_sub_ps(_mm256_loadu_ps(ptr.add(i)), sh);
            _mm256_storeu_ps(ptr.add(i), exp8(x));
            i += 8;
        }
        for v in &mut p[i..] {
            *v = (*v - shift).exp();
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
        let n = out.len();
        let one = _mm256_set1_ps(1.0);
        let zero = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let gv = _mm256_loadu_ps(g.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(zero, gv));
            let a = _mm256_div_ps(gv, _mm256_add_ps(one, e));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(a, _mm256_loadu_ps(u.as_ptr().add(i))),
            );
            i += 8;
        }
        for ((a, &g), &u) in out[i..].iter_mut().zip(&g[i..]).zip(&u[i..]) {
            *a = g / (1.0 + (-g).exp()) * u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 9973rd float32 bit pattern (all signs, exponents and ranges: ~430k inputs), plus
    /// the edges of glibc's special-case ranges, lane by lane equal to `f32::exp` (bits).
    #[test]
    fn exp_equals_the_c_library_bit_for_bit() {
        let mut xs: Vec<f32> = (0..u32::MAX / 9973)
            .map(|i| f32::from_bits(i * 9973))
            .collect();
        for b in [
            0x42b0_0000u32,
            0x42af_ffff,
            0xc2cf_f1b5,
            0xc2cf_f1b4,
            0x42b1_7218,
        ] {
            for d in 0..64 {
                xs.push(f32::from_bits(b - 32 + d));
                xs.push(-f32::from_bits(b - 32 + d));
            }
        }
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
            -0.0,
            1e-45,
            -1e-45,
        ]);
        let mut got = xs.clone();
        exp_shifted(&mut got, 0.0);
        for (x, g) in xs.iter().zip(&got) {
            let want = (x - 0.0).exp();
            assert!(
                g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                "exp({x:e} = {:#x}): {g:e} vs f32::exp {want:e}",
                x.to_bits()
            );
        }
    }

    /// All 2^32 float32 inputs (~25 s in release: `cargo test --release --lib
    /// exp_equals_the_c_library_on_every_float -- --ignored`).
    #[test]
    #[ignore]
    fn exp_equals_the_c_library_on_every_float() {
        let mut buf = vec![0f32; 1 << 16];
        for hi in 0..=u16::MAX as u32 {
            for (lo, v) in buf.iter_mut().enumerate() {
                *v = f32::from_bits(hi << 16 | lo as u32);
            }
            let xs = buf.clone();
            exp_shifted(&mut buf, 0.0);
            for (x, g) in xs.iter().zip(&buf) {
                let want = x.exp();
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "exp({:#x}): {g:e} vs {want:e}",
                    x.to_bits()
                );
            }
        }
    }

    #[test]
    fn softmax_shift_and_silu_equal_the_scalar_expressions() {
        let n = 1000;
        let p: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect();
        let mut got = p.clone();
        exp_shifted(&mut got, 18.5);
        for (x, g) in p.iter().zip(&got) {
            assert_eq!(g.to_bits(), (x - 18.5).exp().to_bits());
        }
        let mut masked = vec![f32::NEG_INFINITY; 13];
        masked[5] = 1.0;
        exp_shifted(&mut masked, 1.0);
        assert!(masked
            .iter()
            .enumerate()
            .all(|(i, &v)| v == if i == 5 { 1.0 } else { 0.0 }));
        for len in [0usize, 1, 7, 8, 9, 688, 1001] {
            let g: Vec<f32> = (0..len).map(|i| (i as f32 * 0.731).sin() * 12.0).collect();
            let u: Vec<f32> = (0..len).map(|i| (i as f32 * 0.173).cos() * 3.0).collect();
            let mut out = vec![0f32; len];
            silu_mul(&g, &u, &mut out);
            for i in 0..len {
                let want = g[i] / (1.0 + (-g[i]).exp()) * u[i];
                assert_eq!(out[i].to_bits(), want.to_bits(), "len {len} lane {i}");
            }
        }
    }
}
