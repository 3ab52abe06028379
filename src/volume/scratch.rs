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

/// A kept buffer for `want` bytes: the smallest with at least that capacity, else the largest
/// (it grows); an empty `Vec` when none is kept. Its contents are stale (initialised) bytes.
pub fn take(want: usize) -> Vec<u8> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let fit = (0..c.len())
            .filter(|&i| c[i].capacity() >= want)
            .min_by_key(|&i| c[i].capacity());
        let pick = fit.or_else(|| (0..c.len()).max_by_key(|&i| c[i].capacity()));
        pick.map(|i| c.swap_remove(i)).unwrap_or_default()
    })
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
}
