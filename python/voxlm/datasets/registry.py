"""Dataset readers register themselves by ``data.format`` name (``ct-rate``, ``ctrg-chest``,
...)."""

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
        raise ConfigError(
            f"data.format: unknown dataset format {name!r}; known: {', '.join(reader_names())}"
        )
    return _READERS[name]


def read_records(
    format: str, root: str | os.PathLike[str], split: str = "train", **options: Any
) -> list[dict[str, Any]]:
    """The records of ``split`` of the dataset at ``root`` in layout ``format``.

    ``options`` are checked against the reader's signature first: an option the reader does not
    take is a ``ConfigError`` listing the ones it accepts (readers with ``**kwargs`` take any)."""
    reader = get_reader(format)
    accepted = reader_options(reader)
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"data: option(s) {unknown} are not read by the {format!r} reader; it accepts: "
                + (", ".join(accepted) if accepted else "no options")
            )
    return reader(root, split=split, **options)


def reader_options(reader: Callable[..., Any]) -> list[str] | None:
    """The keyword options ``reader`` accepts besides ``root`` and ``split`` (None: ``**kwargs``,
    any option)."""
    import inspect

    try:
        params = inspect.signature(reader).parameters
    except (TypeError, ValueError):  # no introspectable signature: let the reader decide
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [n for n in names[1:] if n != "split"]  # the first parameter is the root
