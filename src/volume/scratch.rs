//! Byte buffers kept between the fused pipeline's files on the same thread.
//!
//! A DataLoader worker is a fresh process: without reuse, every file's compressed bytes and
//! inflated voxels land in newly mapped memory (glibc maps buffers of this size one by one), and
//! faulting those pages in (kernel zeroing included) cost ~0.02-0.06 CPU s on each of a worker's
//! first files. Inside [`scope`] (the pipeline's per-file work, on its cached pool's threads),
//! [`give`] keeps up to [`KEEP`] buffers per thread for the next [`take`]; outside it, buffers
//! are freed as usual, so `load_image` and friends retain nothing.

use std::cell::{Cell, RefCell};

/// Buffers kept per thread (one file's compressed bytes and its inflated voxels).
pub const KEEP: usize = 2;
/// Largest buffer kept (bytes); larger ones are freed.
pub const MAX_BYTES: usize = 1 << 30;

thread_local! {
    static CACHE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static ENABLED: Cell<bool> = const { Cell::new(false) };
}

static PRIMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// glibc maps every allocation above its mmap threshold (128 KiB at start) afresh and unmaps it
/// on free, raising the threshold (to at most 32 MiB) only as such blocks are freed: a fresh
/// process (a DataLoader worker) faulted in the resample and resize buffers anew for each of its
/// first ~4 files (19k, 5k, 12k, 7k page faults, 0.01-0.04 CPU s each, then none). Allocating
/// and freeing one untouched 31 MiB block once (one mmap + munmap, no page touched) moves the
/// threshold there at once, as glibc itself would after the first such free. Other allocators:
/// one alloc + free, nothing else. The flag is inherited by fork together with malloc's state.
fn prime_allocator() {
    use std::sync::atomic::Ordering;
    if !PRIMED.swap(true, Ordering::Relaxed) {
        let block: Vec<u8> = Vec::with_capacity(31 << 20);
        drop(std::hint::black_box(block));
    }
}

/// Run `f` with buffer reuse on for this thread (nested scopes keep it on).
pub fn scope<R>(f: impl FnOnce() -> R) -> R {
    prime_allocator();
    let was = ENABLED.with(|e| e.replace(true));
    let r = f();
    ENABLED.with(|e| e.set(was));
    r
}

/// Buffers from this size on are new allocations offered to the kernel's transparent huge pages.
const HUGE_FROM: usize = 4 << 20;

/// A kept buffer for `want` bytes: the smallest with at least that capacity; else, for `want`
/// from [`HUGE_FROM`] on, a new empty buffer of that capacity (see [`fresh`]; a kept one too
/// small is freed), and below it the largest kept (it grows) or an empty `Vec`. Its contents
/// are stale (initialised) bytes.
pub fn take(want: usize) -> Vec<u8> {
    let kept = CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let fit = (0..c.len())
            .filter(|&i| c[i].capacity() >= want)
            .min_by_key(|&i| c[i].capacity());
        let pick = fit.or_else(|| (0..c.len()).max_by_key(|&i| c[i].capacity()));
        pick.map(|i| c.swap_remove(i)).unwrap_or_default()
    });
    if kept.capacity() >= want || want < HUGE_FROM {
        return kept;
    }
    drop(kept);
    fresh(want)
}

/// An empty buffer with capacity for `cap` bytes (empty if that much cannot be allocated: the
/// caller's own reservation then reports it), whose untouched pages Linux may back with 2 MiB
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`, honoured when THP is in `always` or
/// `madvise` mode). Filling a 30 MB buffer then takes ~15 page faults instead of ~7,500, which
/// a DataLoader worker pays for its first files (each worker is a fresh process); the kernel
/// zeroes the same bytes either way. A hint only: refused or elsewhere, nothing changes.
fn fresh(cap: usize) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve_exact(cap).is_err() {
        return v;
    }
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (v.as_ptr() as usize).div_ceil(HUGE) * HUGE;
        let end = (v.as_ptr() as usize + v.capacity()) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside this Vec's allocation (rounded inwards to whole
            // huge pages); MADV_HUGEPAGE changes no contents, only how pages are backed.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// Hand a buffer back for reuse (inside [`scope`]; freed otherwise, or when too large or
/// [`KEEP`] are kept already).
pub fn give(v: Vec<u8>) {
    if v.capacity() == 0 || v.capacity() > MAX_BYTES || !ENABLED.with(|e| e.get()) {
        return;
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < KEEP {
            c.push(v);
        }
    });
}

/// `take(len)` resized to exactly `len` bytes (only bytes beyond the kept buffer's length are
/// zeroed; the rest are stale and must be overwritten by the caller).
pub fn take_len(len: usize) -> Vec<u8> {
    let mut v = take(len);
    if v.len() < len {
        v.resize(len, 0);
    } else {
        v.truncate(len);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_only_inside_scope() {
        give(vec![1u8; 10]);
        assert_eq!(take(1).capacity(), 0, "nothing is kept outside a scope");
        scope(|| {
            give(Vec::with_capacity(100));
            give(vec![7u8; 50]);
            give(vec![0u8; 30]); // a third: freed
            let a = take(60);
            assert!(a.capacity() >= 100, "the smallest that fits");
            let b = take(500);
            assert_eq!(
                b.len(),
                50,
                "none fits: the largest left, stale contents kept"
            );
            assert!(b.iter().all(|&x| x == 7));
            assert_eq!(take(1).capacity(), 0);
            give(b);
            let c = take_len(80);
            assert_eq!(c.len(), 80);
            assert!(c[..50].iter().all(|&x| x == 7) && c[50..].iter().all(|&x| x == 0));
        });
        give(vec![1u8; 10]);
        assert_eq!(take(1).capacity(), 0);
    }

    #[test]
    fn large_buffers_are_new_and_hold_what_is_written() {
        scope(|| {
            give(vec![3u8; 1000]);
            // too small for a large request: freed, a new empty buffer of the capacity instead
            let mut big = take(HUGE_FROM + 12345);
            assert!(big.is_empty() && big.capacity() >= HUGE_FROM + 12345);
            assert_eq!(take(1).capacity(), 0, "the small kept buffer was freed");
            big.extend((0..HUGE_FROM + 12345).map(|i| (i % 251) as u8));
            assert!(big.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
            give(big);
            assert!(take_len(HUGE_FROM).len() == HUGE_FROM, "kept and reused");
        });
        // an impossible size: an empty buffer, the caller's reservation reports it
        assert_eq!(fresh(usize::MAX).capacity(), 0);
    }
}
