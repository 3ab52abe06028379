//! voxlm's rayon thread pool, safe across `fork()`.
//!
//! A forked child (a `torch.utils.data.DataLoader` worker) inherits rayon's global pool
//! *state* but not its threads, so the first parallel call in the child would wait forever.
//! [`install`] runs work in a pool owned by the current process: when the process id changes,
//! a fresh pool is built (the parent's, whose threads do not exist here, is leaked, never joined).

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

static POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);

fn threads() -> usize {
    std::env::var("VOXLM_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The pool of this process (built on first use, rebuilt after a fork).
pub fn pool() -> Arc<ThreadPool> {
    let pid = std::process::id();
    let mut guard = match POOL.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some((p, pool)) = guard.as_ref() {
        if *p == pid {
            return pool.clone();
        }
    }
    if let Some((_, stale)) = guard.take() {
        std::mem::forget(stale); // its threads belong to the parent process
    }
    let fresh = Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(threads())
            .thread_name(|i| format!("voxlm-{i}"))
            .build()
            .unwrap_or_else(|_| {
                // ok: building a one-thread pool only fails if the OS refuses to spawn a thread
                ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .expect("spawn one thread") // ok: see above
            }),
    );
    *guard = Some((pid, fresh.clone()));
    fresh
}

/// Run `f` (and every rayon call inside it) in this process's pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Threads of the pool.
pub fn current_num_threads() -> usize {
    pool().current_num_threads()
}
