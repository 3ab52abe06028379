"""Dataset readers register themselves by ``data.format`` name (``ct-rate``, ``ctrg-chest``, ...)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from ..exceptions import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_READERS: dict[str, Callable[..., list[dict[str, Any]]]] = {}


def register_reader(name: str) -> Callable[[F], F]:
    """Decorator for ``reader(root, split="train", **options) -> list[record dict]``."""

    def deco(fn: F) -> F:
        _READERS[name] = fn
        return fn

    return deco


def reader_names() -> list[str]:
    return sorted(_READERS)


def get_reader(name: str) -> Callable[..., list[dict[str, Any]]]:
    if name not in _READERS:
        raise ConfigError(f"data.format: unknown dataset format {name!r}; known: {', '.join(reader_names())}")
    return _READERS[name]


def read_records(format: str, root: str | os.PathLike[str], split: str = "train", **options: Any) -> list[dict[str, Any]]:
    """The records of ``split`` of the dataset at ``root`` in layout ``format``."""
    return get_reader(format)(root, split=split, **options)
