"""Python-owned parameters, Rust-computed forwards.

:class:`RustBound` is the base of every voxlm module whose forward runs in a Rust object that
holds *references* to the module's ``nn.Parameter``s (no copies): optimizer steps, in-place
updates, ``load_state_dict`` and ``.to(dtype/device)`` (which replaces ``param.data``) are seen by
the next forward. Whatever replaces Parameter *objects* — ``load_state_dict(assign=True)``,
unpickling/deepcopy, conversions with ``torch.__future__.set_swap_module_params_on_conversion``
— triggers :meth:`rebind`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


class RustBound(nn.Module):
    _core: Any = None

    def _make_core(self) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError(f"{type(self).__name__} must define _make_core")

    def rebind(self) -> None:
        """Bind the Rust forward to the current parameter objects (by reference)."""
        self._core = self._make_core()

    def _bound(self) -> Any:
        if self._core is None:
            self.rebind()
        return self._core

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        if not torch.__future__.get_swap_module_params_on_conversion():
            before = [id(p) for p in self.parameters()]
            out = super()._apply(fn, recurse)
            # a conversion torch cannot do in place (e.g. to the meta device) replaces the
            # Parameter objects: the Rust core would keep computing with the old ones
            if [id(p) for p in self.parameters()] != before:
                self._core = None  # bound again (and checked) at the next forward
            return out
        # swapping needs the parameters' only references: release Rust's, then bind again
        self._core = None
        try:
            return super()._apply(fn, recurse)
        finally:
            self.rebind()

    def load_state_dict(self, state_dict, strict=True, assign=False):  # type: ignore[no-untyped-def]
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if assign:
            self._after_assign()
            self.rebind()
        return out

    def _after_assign(self) -> None:
        """Hook for subclasses that tie parameters (re-tie after assignment)."""

    def __getstate__(self):  # type: ignore[no-untyped-def]
        state = self.__dict__.copy()
        state["_core"] = None  # references, not data: rebuilt on load
        return state

    def __setstate__(self, state) -> None:  # type: ignore[no-untyped-def]
        self.__dict__.update(state)
        self.rebind()


# ---------------------------------------------------------------------------------------------
# argument checks shared by the Python-side modules (each raises a voxlm exception naming what was
# expected and what was given)

#: the largest parameter count a constructor accepts before allocating (2^34 floats = 64 GiB),
#: whatever the machine
MAX_PARAMETERS = 1 << 34


def _memory_bytes() -> int | None:
    """This machine's physical memory (None when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_device(device: Any, name: str = "device") -> torch.device | None:
    """``torch.device(device)`` (None passes), or a DeviceError for a string torch does not know
    or a backend this process cannot use (CUDA without a GPU, MPS off macOS)."""
    from .exceptions import DeviceError

    if device is None:
        return None
    if not isinstance(device, (str, int, torch.device)) or isinstance(device, bool):
        raise DeviceError(f"{name}: expected a device string or torch.device, got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DeviceError(
            f"{name}: expected a device such as 'cpu' or 'cuda:0', got {device!r}"
        ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{name}: {device!r} requested, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{name}: {device!r} requested, but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"{name}: {device!r} requested, but MPS is not available here")
    elif dev.type not in ("cpu", "meta"):
        avail = getattr(getattr(torch, dev.type, None), "is_available", None)
        if not (callable(avail) and avail()):
            raise DeviceError(f"{name}: {device!r} requested, but that backend is not available")
    return dev


def check_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype | None:
    """A floating torch dtype (None passes; the strings ``"float32"``, ``"bfloat16"``, ... too),
    else a DTypeError."""
    from .exceptions import DTypeError

    if dtype is None:
        return None
    if isinstance(dtype, str):
        dt = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(dt, torch.dtype):
            raise DTypeError(f"{name}: expected a floating torch dtype, got {dtype!r}")
        dtype = dt
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DTypeError(
            f"{name}: expected a floating torch dtype (float32, bfloat16, ...), got {dtype!r}"
        )
    return dtype


def check_budget(what: str, n_parameters: int, dtype: torch.dtype | None = None) -> None:
    """ConfigError, raised before anything is allocated, when a module's sizes ask for more
    parameters than :data:`MAX_PARAMETERS` or than this machine's physical memory holds
    (``dtype``'s element size, float32 by default): torch would otherwise fail deep inside its
    allocator, or the allocation would be overcommitted and the process killed later."""
    from .exceptions import ConfigError

    item = torch.empty((), dtype=dtype or torch.float32).element_size()
    need = int(n_parameters) * item
    mem = _memory_bytes()
    if n_parameters > MAX_PARAMETERS or (mem is not None and need > mem):
        have = f"this machine's {mem / 2**30:.1f} GiB of memory" if mem else "the limit"
        raise ConfigError(
            f"{what}: these sizes need {n_parameters:.3g} parameters ({need / 2**30:.1f} GiB), "
            f"more than {have}; expected smaller sizes"
        )


def check_tensor(x: Any, name: str, floating: bool = False) -> torch.Tensor:
    """``x`` if it is a torch.Tensor (a floating one with ``floating``), else a VoxlmTypeError /
    DTypeError naming ``name``."""
    from .exceptions import DTypeError, VoxlmTypeError

    if not isinstance(x, torch.Tensor):
        hint = " (convert with torch.from_numpy)" if type(x).__module__ == "numpy" else ""
        raise VoxlmTypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}{hint}")
    if floating and not x.is_floating_point():
        raise DTypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    return x


def check_number(
    v: Any,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``float(v)`` for a finite real number within the bounds (``low_open`` / ``high_open``
    exclude them), else a ConfigError naming ``name``, the range and the value."""
    import math
    import numbers

    from .exceptions import ConfigError

    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    low = "-inf" if minimum is None else minimum
    high = "inf" if maximum is None else maximum
    rng = f" in {lo}{low}, {high}{hi}"
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise ConfigError(f"{name}: expected a finite number{rng}, got {v!r}")
    f = float(v)
    if minimum is not None and (f < minimum or (low_open and f == minimum)):
        raise ConfigError(f"{name}: expected a number{rng}, got {v!r}")
    if maximum is not None and (f > maximum or (high_open and f == maximum)):
        raise ConfigError(f"{name}: expected a number{rng}, got {v!r}")
    return f


def check_int(v: Any, name: str, minimum: int | None = 1) -> int:
    """``v`` for an int (not bool; numpy integers too) >= ``minimum``, else a ConfigError."""
    import numbers

    from .exceptions import ConfigError

    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ConfigError(f"{name}: expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {v}")
    return int(v)
