//! Float32 CPU kernels of the decode step: matrix-vector products whose weight rows split over
//! voxlm's thread pool (AVX2 + FMA when the CPU has them, portable loops otherwise), over one or
//! several stacked weights with optional bias and LoRA branch, and a dot product. Several input
//! rows run as register blocks of 4 weight rows x 3 inputs, each weight loaded from memory once.

use std::sync::OnceLock;

use rayon::prelude::*;

pub(super) fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// One linear of a stacked matrix-vector product: weight rows, bias, LoRA `(A, B, scaling)`.
#[derive(Clone, Copy)]
pub(super) struct Part<'a> {
    pub w: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub lora: Option<(&'a [f32], &'a [f32], f32)>,
}

impl<'a> Part<'a> {
    fn plain(w: &'a [f32]) -> Self {
        Part {
            w,
            bias: None,
            lora: None,
        }
    }
}

thread_local! {
    /// `gemv_cat`'s `[out, B]` products, reused from call to call on each thread.
    static YT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `y [B, out] = x [B, in] @ cat(w_0, w_1, ..)^T + cat(bias_0, ..)` plus each part's LoRA
/// branch: the stacked rows of the parts (weights `[out_i, in]`) split over the pool when large.
pub(super) fn gemv_cat(parts: &[Part<'_>], x: &[f32], b: usize, y: &mut [f32]) {
    if b == 1 {
        gemv_rows(parts, x, 1, y);
    } else {
        // several inputs: compute [out, B] by weight row, then transpose into [B, out]; the
        // [out, B] buffer is kept per thread (the LM head's is megabytes: allocated and freed at
        // every step, glibc returned it to the kernel and the next step faulted it in again,
        // ~500 page faults per step at vocab 32,000 and 16 rows). Every element is written by
        // `gemv_rows` before it is read.
        // (A thread waiting inside a parallel product may run another caller's step, whose
        // products then find the buffer taken and use their own.)
        let mut run = |yt: &mut Vec<f32>| {
            if yt.len() < y.len() {
                yt.resize(y.len(), 0.0);
            }
            let yt = &mut yt[..y.len()];
            gemv_rows(parts, x, b, yt);
            let out = y.len() / b;
            for (o, yr) in yt.chunks_exact(b).enumerate() {
                for (r, &v) in yr.iter().enumerate() {
                    y[r * out + o] = v;
                }
            }
        };
        YT.with(|cell| match cell.try_borrow_mut() {
            Ok(mut yt) => run(&mut yt),
            Err(_) => run(&mut Vec::new()),
        });
    }
    let (inp, total) = (x.len() / b, y.len() / b);
    let mut off = 0;
    for p in parts {
        let out = p.w.len() / inp;
        if let Some((a, bm, scaling)) = p.lora {
            // PEFT: result + lora_B(lora_A(x)) * scaling
            let mut t = vec![0f32; b * (a.len() / inp)];
            gemv_cat(&[Part::plain(a)], x, b, &mut t);
            let mut u = vec![0f32; b * out];
            gemv_cat(&[Part::plain(bm)], &t, b, &mut u);
            for (yr, ur) in y.chunks_exact_mut(total).zip(u.chunks_exact(out)) {
                for (v, &d) in yr[off..off + out].iter_mut().zip(ur) {
                    *v += d * scaling;
                }
            }
        }
        off += out;
    }
}

/// `yt[o * B + r]` for every stacked row `o` and input `r`.
fn gemv_rows(parts: &[Part<'_>], x: &[f32], b: usize, yt: &mut [f32]) {
    let inp = x.len() / b;
    // rows per task: about 64 KiB of weights, at least 16 rows
    let rows = ((1usize << 14) / inp).max(16);
    let kernel = rows_kernel();
    let mut tasks = Vec::new();
    let mut rest = yt;
    for &Part { w, bias, .. } in parts {
        let (mine, tail) = rest.split_at_mut(w.len() / inp * b);
        rest = tail;
        for (c, yc) in mine.chunks_mut(rows * b).enumerate() {
            let (r0, n) = (c * rows, yc.len() / b);
            tasks.push((
                &w[r0 * inp..(r0 + n) * inp],
                bias.map(|v| &v[r0..r0 + n]),
                yc,
            ));
        }
    }
    let run = |(w, bias, yc): (&[f32], Option<&[f32]>, &mut [f32])| {
        kernel(w, x, b, yc);
        if let Some(bias) = bias {
            for (yr, &v) in yc.chunks_exact_mut(b).zip(bias) {
                for y in yr {
                    *y += v;
                }
            }
        }
    };
    let work: usize = parts.iter().map(|p| p.w.len()).sum::<usize>() * b;
    if work >= 1 << 16 {
        tasks.into_par_iter().for_each(run);
    } else {
        tasks.into_iter().for_each(run);
    }
}

/// Whether this CPU has AVX2 and FMA (the x86 kernels here and in `expf` need both; std caches
/// the detection).
pub(super) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y[o * B + r] = dot(w[o], x[r])` for the rows of `w` (`x` is `[B, in]`).
type RowsKernel = fn(&[f32], &[f32], usize, &mut [f32]);

pub(super) fn rows_kernel() -> RowsKernel {
    static K: OnceLock<RowsKernel> = OnceLock::new();
    *K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            return x86::rows;
        }
        rows_generic
    })
}

pub(super) fn rows_generic(w: &[f32], x: &[f32], b: usize, y: &mut [f32]) {
    let inp = x.len() / b;
    for (row, yr) in w.chunks_exact(inp).zip(y.chunks_exact_mut(b)) {
        for (r, v) in yr.iter_mut().enumerate() {
            *v = dot(row, &x[r * inp..(r + 1) * inp]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// AVX2 + FMA: four weight rows at a time share each load of `x`, two accumulators per row.
    pub fn rows(w: &[f32], x: &[f32], b: usize, y: &mut [f32]) {
        let n = x.len() / b;
        let rows = y.len() / b;
        assert!(w.len() >= rows * n && x.len() == b * n); // ok: callers slice exactly
                                                          // SAFETY: chosen only when the CPU reports AVX2 and FMA; every pointer offset below stays
                                                          // within the slices (rows * n weights, b * n inputs), checked by the assert above.
        unsafe { rows_avx2(w.as_ptr(), x.as_ptr(), n, rows, b, y) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    // indexing four accumulator arrays and a pointer by row reads clearer than zipped iterators
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows<const R: usize>(w: *const f32, x: *const f32, n: usize) -> [f32; R] {
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        let mut i = 0;
        while i + 16 <= n {
            let (x0, x1) = (_mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(x.add(i + 8)));
            for r in 0..R {
                let p = w.add(r * n + i);
                a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(p), x0, a0[r]);
                a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), x1, a1[r]);
            }
            i += 16;
        }
        if i + 8 <= n {
            let x0 = _mm256_loadu_ps(x.add(i));
            for r in 0..R {
                a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(r * n + i)), x0, a0[r]);
            }
            i += 8;
        }
        let mut out = [0f32; R];
        for r in 0..R {
            let mut s = hsum(_mm256_add_ps(a0[r], a1[r]));
            for j in i..n {
                s += *w.add(r * n + j) * *x.add(j);
            }
            out[r] = s;
        }
        out
    }

    /// `R` weight rows against `C` input rows (`x` rows `n` apart): one accumulator per pair,
    /// each load of a weight vector shared by `C` inputs and each input vector by `R` rows
    /// (4 x 3: 12 accumulators + 4 loads fill the 16 AVX registers).
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const R: usize, const C: usize>(
        w: *const f32,
        x: *const f32,
        n: usize,
        pf: *const f32,
    ) -> [[f32; C]; R] {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut i = 0;
        while i + 8 <= n {
            if !pf.is_null() {
                // the next block's R * n weights, 8 R floats (R / 2 cache lines) per iteration
                // (a prefetch never faults; wrapping_add keeps the address computation defined)
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(i * R) as *const i8);
                if R > 2 {
                    _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(i * R + 16) as *const i8);
                }
            }
            let mut xv = [_mm256_setzero_ps(); C];
            for c in 0..C {
                xv[c] = _mm256_loadu_ps(x.add(c * n + i));
            }
            for r in 0..R {
                let wv = _mm256_loadu_ps(w.add(r * n + i));
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
                }
            }
            i += 8;
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut s = hsum(acc[r][c]);
                for j in i..n {
                    s += *w.add(r * n + j) * *x.add(c * n + j);
                }
                out[r][c] = s;
            }
        }
        out
    }

    /// Weight rows `o .. o + R` against every input row, three at a time.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_rows<const R: usize>(
        w: *const f32,
        x: *const f32,
        n: usize,
        o: usize,
        b: usize,
        y: &mut [f32],
    ) {
        let w = w.add(o * n);
        // while the first inputs run, prefetch the next weight rows (short row streams, one
        // block after another, are too short for the hardware prefetcher to follow)
        let next = w.wrapping_add(R * n);
        let mut r = 0;
        while r + 3 <= b {
            let pf = if r == 0 { next } else { std::ptr::null() };
            let v = block::<R, 3>(w, x.add(r * n), n, pf);
            for (k, vk) in v.iter().enumerate() {
                y[(o + k) * b + r..(o + k) * b + r + 3].copy_from_slice(vk);
            }
            r += 3;
        }
        if b - r == 2 {
            let pf = if r == 0 { next } else { std::ptr::null() };
            let v = block::<R, 2>(w, x.add(r * n), n, pf);
            for (k, vk) in v.iter().enumerate() {
                y[(o + k) * b + r..(o + k) * b + r + 2].copy_from_slice(vk);
            }
        } else if b - r == 1 {
            let pf = if r == 0 { next } else { std::ptr::null() };
            let v = block::<R, 1>(w, x.add(r * n), n, pf);
            for (k, vk) in v.iter().enumerate() {
                y[(o + k) * b + r] = vk[0];
            }
        }
    }

    /// AVX2 + FMA [`super::scores_generic`] (`q.len()` a multiple of 8).
    pub fn scores(q: &[f32], keys: &[f32], offs: super::Offsets<'_>, scale: f32, out: &mut [f32]) {
        let hd = q.len();
        assert!(hd % 8 == 0 && out.len() >= offs.len() && offs.fits(hd, keys.len()));
        // ok: the step builds the offsets within the cache
        // SAFETY: AVX2 + FMA checked by `attn_kernels`; every key read lies within `keys` (the
        // offsets were checked against `keys.len()` when built, `fits` above).
        unsafe { scores_avx2(q.as_ptr(), keys.as_ptr(), offs.offs, hd, scale, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_avx2(
        q: *const f32,
        keys: *const f32,
        offs: &[usize],
        hd: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        for (o, &off) in out.iter_mut().zip(offs) {
            if off == super::MASKED {
                *o = f32::NEG_INFINITY;
                continue;
            }
            let k = keys.add(off);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), _mm256_loadu_ps(k.add(i)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(q.add(i + 8)),
                    _mm256_loadu_ps(k.add(i + 8)),
                    a1,
                );
                i += 16;
            }
            if i < hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), _mm256_loadu_ps(k.add(i)), a0);
            }
            *o = hsum(_mm256_add_ps(a0, a1)) * scale;
        }
    }

    /// AVX2 + FMA [`super::pv_generic`] (`out.len()` a multiple of 8).
    pub fn pv(p: &[f32], sum: f32, values: &[f32], offs: super::Offsets<'_>, out: &mut [f32]) {
        let hd = out.len();
        assert!(hd % 8 == 0 && p.len() >= offs.len() && offs.fits(hd, values.len()));
        // ok: the step builds the offsets within the cache
        let offs = offs.offs;
        let mut c = 0;
        // SAFETY: AVX2 + FMA checked by `attn_kernels`; reads within `values` (above), writes
        // within `out` (c + 8 * N <= hd).
        unsafe {
            while c + 64 <= hd {
                pv_cols::<8>(p, sum, values.as_ptr(), offs, c, out.as_mut_ptr());
                c += 64;
            }
            if c + 32 <= hd {
                pv_cols::<4>(p, sum, values.as_ptr(), offs, c, out.as_mut_ptr());
                c += 32;
            }
            if c + 16 <= hd {
                pv_cols::<2>(p, sum, values.as_ptr(), offs, c, out.as_mut_ptr());
                c += 16;
            }
            if c < hd {
                pv_cols::<1>(p, sum, values.as_ptr(), offs, c, out.as_mut_ptr());
            }
        }
    }

    /// Columns `c .. c + 8 N` of the weighted sum, accumulated in registers over the positions.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pv_cols<const N: usize>(
        p: &[f32],
        sum: f32,
        values: *const f32,
        offs: &[usize],
        c: usize,
        out: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); N];
        for (&pl, &off) in p.iter().zip(offs) {
            if off == super::MASKED || pl == 0.0 {
                continue;
            }
            let w = _mm256_set1_ps(pl / sum);
            let v = values.add(off + c);
            for n in 0..N {
                acc[n] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v.add(8 * n)), acc[n]);
            }
        }
        for n in 0..N {
            _mm256_storeu_ps(out.add(c + 8 * n), acc[n]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2(
        w: *const f32,
        x: *const f32,
        n: usize,
        rows: usize,
        b: usize,
        y: &mut [f32],
    ) {
        let mut o = 0;
        if b > 1 {
            // several inputs (batched rows, beams): register blocks of 4 weight rows x 3 inputs
            while o + 4 <= rows {
                block_rows::<4>(w, x, n, o, b, y);
                o += 4;
            }
            while o < rows {
                block_rows::<1>(w, x, n, o, b, y);
                o += 1;
            }
            return;
        }
        while o + 4 <= rows {
            let v = dot_rows::<4>(w.add(o * n), x, n);
            y[o..o + 4].copy_from_slice(&v);
            o += 4;
        }
        while o < rows {
            y[o] = dot_rows::<1>(w.add(o * n), x, n)[0];
            o += 1;
        }
    }
}

/// A masked key position in the offsets handed to [`AttnKernels`].
pub(super) const MASKED: usize = usize::MAX;

/// One query's attention over its keys: `scores(q, keys, offs, scale, out)` writes
/// `out[l] = dot(q, keys[offs[l]..][..hd]) * scale` (`-inf` where `offs[l]` is [`MASKED`]);
/// `pv(p, sum, values, offs, out)` writes `out[..hd] = sum_l (p[l] / sum) * values[offs[l]..][..hd]`
/// over the positions in order, skipping masked ones and `p[l] == 0`.
#[derive(Clone, Copy)]
pub(super) struct AttnKernels {
    pub scores: ScoresFn,
    pub pv: PvFn,
}

/// `(q [hd], keys, offsets [len], scale, out [len])`
type ScoresFn = fn(&[f32], &[f32], Offsets<'_>, f32, &mut [f32]);
/// `(p [len], sum, values, offsets [len], out [hd])`
type PvFn = fn(&[f32], f32, &[f32], Offsets<'_>, &mut [f32]);

/// Key/value offsets for [`AttnKernels`], each [`MASKED`] or the start of a `hd`-long vector
/// inside a cache of `limit` floats, checked once when built (a step builds them once and every
/// layer's and head's kernel calls reuse them; the kernels only compare `hd` and `limit`).
#[derive(Clone, Copy)]
pub(super) struct Offsets<'a> {
    offs: &'a [usize],
    hd: usize,
    limit: usize,
}

impl<'a> Offsets<'a> {
    /// None when an offset's vector would end past `limit`.
    pub fn new(offs: &'a [usize], hd: usize, limit: usize) -> Option<Self> {
        offs.iter()
            .all(|&o| o == MASKED || o.checked_add(hd).is_some_and(|e| e <= limit))
            .then_some(Offsets { offs, hd, limit })
    }

    /// The offsets `start .. start + n` (panics past the end, as slicing does).
    pub fn sub(self, start: usize, n: usize) -> Self {
        Offsets {
            offs: &self.offs[start..start + n],
            ..self
        }
    }

    pub fn len(&self) -> usize {
        self.offs.len()
    }

    /// Built for vectors of `hd` inside at most `len` floats.
    fn fits(&self, hd: usize, len: usize) -> bool {
        self.hd == hd && self.limit <= len
    }
}

/// The attention kernels for this CPU and head size (AVX2 + FMA when `hd` is a multiple of 8).
pub(super) fn attn_kernels(hd: usize) -> AttnKernels {
    #[cfg(target_arch = "x86_64")]
    if hd % 8 == 0 && avx2_fma() {
        return AttnKernels {
            scores: x86::scores,
            pv: x86::pv,
        };
    }
    AttnKernels {
        scores: scores_generic,
        pv: pv_generic,
    }
}

pub(super) fn scores_generic(
    q: &[f32],
    keys: &[f32],
    offs: Offsets<'_>,
    scale: f32,
    out: &mut [f32],
) {
    let hd = q.len();
    for (o, &off) in out.iter_mut().zip(offs.offs) {
        *o = if off == MASKED {
            f32::NEG_INFINITY
        } else {
            dot(q, &keys[off..off + hd]) * scale
        };
    }
}

pub(super) fn pv_generic(p: &[f32], sum: f32, values: &[f32], offs: Offsets<'_>, out: &mut [f32]) {
    let hd = out.len();
    out.fill(0.0);
    for (&pl, &off) in p.iter().zip(offs.offs) {
        if off == MASKED || pl == 0.0 {
            continue;
        }
        let w = pl / sum;
        for (a, &x) in out.iter_mut().zip(&values[off..off + hd]) {
            *a += w * x;
        }
    }
}

/// Dot product with 16 independent partial sums (vectorizes to 2 AVX or 4 SSE/NEON registers).
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    let mut w = L;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0] + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn f32s(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.reshape([-1])).unwrap()
    }

    #[test]
    fn dot_matches_f64() {
        for n in [0usize, 1, 5, 16, 17, 63, 512, 1377] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32 * 0.25 - 1.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5) % 11) as f32 * 0.5 - 2.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!(
                (dot(&a, &b) as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "n={n}"
            );
        }
    }

    #[test]
    fn kernels_agree() {
        for (rows, n, b) in [
            (1usize, 1usize, 1usize),
            (7, 23, 2),
            (9, 40, 1),
            (13, 515, 3),
            (9, 70, 16),
            (6, 33, 5),
        ] {
            let w: Vec<f32> = (0..rows * n)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let x: Vec<f32> = (0..b * n)
                .map(|i| ((i * 11) % 29) as f32 / 14.0 - 1.0)
                .collect();
            let (mut y1, mut y2) = (vec![0f32; rows * b], vec![0f32; rows * b]);
            rows_generic(&w, &x, b, &mut y1);
            rows_kernel()(&w, &x, b, &mut y2);
            for (a, c) in y1.iter().zip(&y2) {
                assert!((a - c).abs() <= 1e-4 * (1.0 + a.abs()), "{rows}x{n}, b={b}");
            }
        }
    }

    /// The AVX2 attention kernels against the portable loops (and an f64 sum), with masked
    /// positions, zero weights and every column-chunk size of the weighted sum.
    #[test]
    fn attention_kernels_agree() {
        for hd in [8usize, 16, 24, 56, 64, 72, 128, 200] {
            let len = 37;
            let keys: Vec<f32> = (0..(len + 3) * hd)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let q: Vec<f32> = (0..hd)
                .map(|i| ((i * 11) % 29) as f32 / 14.0 - 1.0)
                .collect();
            // positions in a scrambled order, a few masked
            let offs: Vec<usize> = (0..len)
                .map(|l| {
                    if l % 7 == 3 {
                        MASKED
                    } else {
                        ((l * 5) % (len + 3)) * hd
                    }
                })
                .collect();
            let (fast, slow) = (
                attn_kernels(hd),
                AttnKernels {
                    scores: scores_generic,
                    pv: pv_generic,
                },
            );
            let checked = Offsets::new(&offs, hd, keys.len()).expect("offsets within the keys");
            // an offset running past the keys is refused
            assert!(Offsets::new(&[(len + 3) * hd - hd + 1], hd, keys.len()).is_none());
            let (mut s1, mut s2) = (vec![0f32; len], vec![0f32; len]);
            (fast.scores)(&q, &keys, checked, 0.125, &mut s1);
            (slow.scores)(&q, &keys, checked, 0.125, &mut s2);
            for (l, (a, b)) in s1.iter().zip(&s2).enumerate() {
                if offs[l] == MASKED {
                    assert!(a.is_infinite() && b.is_infinite() && *a < 0.0);
                } else {
                    let o = offs[l];
                    let want: f64 = q
                        .iter()
                        .zip(&keys[o..o + hd])
                        .map(|(&x, &y)| x as f64 * y as f64)
                        .sum::<f64>()
                        * 0.125;
                    assert!(
                        (*a as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "hd {hd}"
                    );
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "hd {hd}");
                }
            }
            let p: Vec<f32> = (0..len)
                .map(|l| if l % 5 == 1 { 0.0 } else { l as f32 * 0.1 })
                .collect();
            let (mut o1, mut o2) = (vec![7f32; hd], vec![7f32; hd]);
            (fast.pv)(&p, 3.0, &keys, checked, &mut o1);
            (slow.pv)(&p, 3.0, &keys, checked, &mut o2);
            for (a, b) in o1.iter().zip(&o2) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "hd {hd}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn gemv_matches_libtorch_linear() {
        tch::manual_seed(0);
        for (out, inp, b, bias) in [(3, 5, 1, false), (700, 300, 1, true), (513, 257, 3, true)] {
            let w = Tensor::randn([out, inp], (Kind::Float, Device::Cpu));
            let bb = bias.then(|| Tensor::randn([out], (Kind::Float, Device::Cpu)));
            let x = Tensor::randn([b, inp], (Kind::Float, Device::Cpu));
            let want = x.linear(&w, bb.as_ref());
            let xs = f32s(&x);
            let mut y = vec![0f32; (b * out) as usize];
            // as two stacked parts, split anywhere, the second with a LoRA branch
            let k = out / 3;
            let (w0, w1) = (f32s(&w.narrow(0, 0, k)), f32s(&w.narrow(0, k, out - k)));
            let (b0, b1) = match &bb {
                Some(v) => (
                    Some(f32s(&v.narrow(0, 0, k))),
                    Some(f32s(&v.narrow(0, k, out - k))),
                ),
                None => (None, None),
            };
            let la = Tensor::randn([4, inp], (Kind::Float, Device::Cpu));
            let lb = Tensor::randn([out - k, 4], (Kind::Float, Device::Cpu));
            let want = Tensor::cat(
                &[
                    want.narrow(1, 0, k),
                    want.narrow(1, k, out - k)
                        + x.linear::<Tensor>(&la, None).linear::<Tensor>(&lb, None) * 0.5,
                ],
                1,
            );
            let (lav, lbv) = (f32s(&la), f32s(&lb));
            let parts = [
                Part {
                    w: &w0,
                    bias: b0.as_deref(),
                    lora: None,
                },
                Part {
                    w: &w1,
                    bias: b1.as_deref(),
                    lora: Some((&lav, &lbv, 0.5)),
                },
            ];
            crate::parallel::install(|| gemv_cat(&parts, &xs, b as usize, &mut y));
            let got = Tensor::from_slice(&y).view([b, out]);
            let err = f64::try_from((got - &want).abs().max()).unwrap();
            assert!(err < 1e-4, "({out}, {inp}, {b}): {err}");
        }
    }
}
