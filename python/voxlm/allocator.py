"""glibc ``malloc`` settings for training on CPU: stop the process from keeping freed activation
buffers between steps.

libtorch's CPU allocator takes every tensor's memory from glibc (``posix_memalign``). glibc
serves requests above its mmap threshold with ``mmap`` and hands them back on ``free``, but the
threshold is *dynamic*: freeing an mmapped block raises it to that block's size (up to 32 MB on
64-bit), so after the first backward pass most activation buffers (tens of MB at 2048 tokens x
2048 width) come from the heap instead, and freed heap memory stays in the process. The resident
set then creeps up from step to step by about the activations' size (measured in
bench/RESULTS.md, "lora at LLaMA-3's vocabulary": ``malloc_trim(0)`` after a step handed 90 % of
the growth back). Fixing the thresholds (``mallopt(M_MMAP_THRESHOLD)`` and
``mallopt(M_TRIM_THRESHOLD)``, which also turns the dynamic adjustment off) keeps large buffers
mmapped, so memory freed in the backward goes back to the system at once.

These are **process-wide** settings (they affect every later allocation of the process, not only
voxlm's). voxlm applies them once, on the first training-mode forward with gradients of
:class:`voxlm.llm.LlamaForCausalLM` (the training entry point every recipe and the trainer go
through), unless the environment variable ``VOXLM_MALLOC_TRIM=0`` is set (also ``false``/``off``/
``no``). :func:`configure_malloc` applies them explicitly; glibc's own ``MALLOC_MMAP_THRESHOLD_``
and ``MALLOC_TRIM_THRESHOLD_`` environment variables, when set, are left to take effect instead.
On a C library other than glibc nothing is changed.

Cost: each large allocation is a fresh ``mmap`` whose pages are faulted in on first touch, a few
percent of a training step at the benchmark's size (bench/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import os

#: glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: allocations of at least this many bytes are mmapped (and unmapped on free)
MMAP_THRESHOLD = 1 << 20
#: free memory at the top of the heap above this many bytes is handed back
TRIM_THRESHOLD = 32 << 20

ENV = "VOXLM_MALLOC_TRIM"

_applied: bool | None = None


def _libc() -> ctypes.CDLL | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError, AttributeError):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def configure_malloc(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Fix glibc's mmap and trim thresholds (bytes) for the whole process. Returns True when
    both were set, False where the C library is not glibc (nothing changed).

    Raises :class:`voxlm.exceptions.ConfigError` for thresholds that are not positive ints.
    """
    from .exceptions import ConfigError

    for name, v in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v > 2**31 - 1:
            raise ConfigError(f"{name}: expected a positive int below 2**31 bytes, got {v!r}")
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold)) == 1
    return bool(libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold)) == 1 and ok)


def malloc_trim() -> bool:
    """Hand free heap memory back to the system now (glibc ``malloc_trim(0)``). Returns whether
    anything was released (False where the C library is not glibc)."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(ctypes.c_size_t(0)) == 1)


def enabled_by_env() -> bool:
    """False when ``VOXLM_MALLOC_TRIM`` is ``0``/``false``/``off``/``no``, or when glibc's own
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` are set (the user chose)."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    return not ("MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ)


def configure_for_training() -> bool:
    """Apply :func:`configure_malloc` once per process unless the environment opts out
    (:func:`enabled_by_env`); what voxlm's training forward calls. Returns whether the settings
    are in effect."""
    global _applied
    if _applied is None:
        _applied = enabled_by_env() and configure_malloc()
    return _applied
