"""Mixed precision around voxlm's Rust-bound modules.

``torch.autocast`` changes the dtypes of the ops it reaches; the Rust cores (LLaMA, ViT3D, ...)
check that activations match their weights and refuse a bfloat16 activation against float32
weights. Inside :func:`rust_modules_in_own_dtype`, every Rust-bound module runs with autocast
switched off and its floating inputs cast to its parameters' dtype, while the plain-torch parts
of a model (projectors, heads, perceivers, losses) run under autocast. The parameters stay in
float32 (master weights) unless the model itself was built in another dtype.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .distributed import rust_bound_modules


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor) and obj.is_floating_point() and obj.dtype != dtype:
        return obj.to(dtype)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(v, dtype) for v in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def rust_modules_in_own_dtype(
    model: nn.Module, device_type: str, enabled: bool = True
) -> Iterator[None]:
    """Patch the ``forward`` of every Rust-bound submodule of ``model`` for the duration."""
    if not enabled:
        yield
        return
    patched = []
    for m in rust_bound_modules(model):
        if "forward" in m.__dict__:
            continue
        p = next(m.parameters(), None)
        if p is None:
            continue
        orig = m.forward

        @functools.wraps(orig)
        def fwd(*args: Any, _orig: Any = orig, _dtype: torch.dtype = p.dtype, **kwargs: Any) -> Any:
            with torch.autocast(device_type, enabled=False):
                return _orig(*_cast(args, _dtype), **_cast(kwargs, _dtype))

        m.forward = fwd  # type: ignore[method-assign]
        patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
