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
    format: str,
    root: str | os.PathLike[str],
    split: str = "train",
    missing: str = "error",
    **options: Any,
) -> list[dict[str, Any]]:
    """The records of ``split`` of the dataset at ``root`` in layout ``format``.

    ``options`` are checked against the reader's signature first: an option the reader does not
    take is a ``ConfigError`` listing the ones it accepts (readers with ``**kwargs`` take any).

    ``missing``: ``"error"`` (default): a row whose image file does not exist is a DataError
    naming the row and the path; ``"skip"``: such rows are left out (a partial download, e.g. a
    few CT-RATE volumes beside the full report tables), and a split left with no record is a
    DataError."""
    from ..exceptions import DataError
    from ._common import record_paths

    if not isinstance(root, (str, os.PathLike)) or not str(os.fspath(root)).strip():
        raise ConfigError(f"data.root: expected the dataset folder (a path), got {root!r}")
    if not isinstance(split, str):
        raise ConfigError(
            f"data.split: expected a split name (train / validation / test), got {split!r}"
        )
    if missing not in ("error", "skip"):
        raise ConfigError(f"data.missing: expected 'error' or 'skip', got {missing!r}")
    reader = get_reader(format)
    accepted = reader_options(reader)
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"data: option(s) {unknown} are not read by the {format!r} reader; it accepts: "
                + (", ".join(accepted) if accepted else "no options")
            )
    if missing == "error":
        return reader(root, split=split, **options)
    if accepted is not None and "missing" not in accepted:
        raise ConfigError(f"data.missing: the {format!r} reader cannot skip missing files")
    records = reader(root, split=split, **{**options, "check_files": False})
    kept = [r for r in records if all(os.path.exists(p) for _, p in record_paths(r))]
    if records and not kept:
        raise DataError(
            f"{format}: none of the {len(records)} records of split {split!r} under {root} has "
            f"its image file(s) (the first expects {[str(p) for _, p in record_paths(records[0])]})"
        )
    return kept


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
    names = [n for n in names[1:] if n != "split"]  # the first parameter is the root
    # read_records' own option, for every reader that can leave its file checks to it
    return [*names, "missing"] if "check_files" in names else names
