"""Python-owned parameters, Rust-computed forwards.

:class:`RustBound` is the base of every voxlm module whose forward runs in a Rust object that
holds *references* to the module's ``nn.Parameter``s (no copies): optimizer steps, in-place
updates, ``load_state_dict`` and ``.to(dtype/device)`` (which replaces ``param.data``) are seen by
the next forward. Whatever replaces Parameter *objects* — ``load_state_dict(assign=True)``,
unpickling/deepcopy, conversions with ``torch.__future__.set_swap_module_params_on_conversion``
— triggers :meth:`rebind`.
"""

from __future__ import annotations

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
            return super()._apply(fn, recurse)
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
