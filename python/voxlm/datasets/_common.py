"""Shared helpers of the dataset readers: split names, layout checks, CSV/JSON reading.

Every reader raises :class:`~voxlm.exceptions.DataError` for a layout or row that is wrong (naming
the file expected, or the row and the path) and :class:`~voxlm.exceptions.ConfigError` for an
option that is wrong (an unknown split lists the known ones), at construction time, so that
nothing fails later inside a ``DataLoader`` worker.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import pathlib
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..exceptions import ConfigError, DataError

PathLike = str | os.PathLike[str]

#: voxlm's split names and the spellings the public datasets use for them.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "tr": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "validate": "validation",
    "va": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
    "ts": "test",
}


def canonical_split(split: str, known: Sequence[str], format: str) -> str:
    """``split`` as voxlm names it (``train`` | ``validation`` | ``test`` or a dataset's own
    extra split such as M3D-VQA's ``test5k``); ConfigError listing ``known`` otherwise."""
    if not isinstance(split, str):
        raise ConfigError(
            f"{format}: split must be a string, one of {', '.join(known)}; got {split!r}"
        )
    s = split.strip().lower()
    s = SPLIT_ALIASES.get(s, s)
    if s not in known:
        raise ConfigError(
            f"{format}: unknown split {split!r}; this layout has splits: {', '.join(known)}"
        )
    return s


def need_file(path: pathlib.Path, format: str, what: str = "") -> pathlib.Path:
    """``path`` if it is a file, else DataError naming the file the layout expects."""
    if not path.is_file():
        extra = f" ({what})" if what else ""
        raise DataError(f"{format}: expected the file {path}{extra}, but it does not exist")
    return path


def need_dir(path: pathlib.Path, format: str, what: str = "") -> pathlib.Path:
    if not path.is_dir():
        extra = f" ({what})" if what else ""
        raise DataError(f"{format}: expected the folder {path}{extra}, but it does not exist")
    return path


def first_existing(candidates: Iterable[pathlib.Path], format: str, what: str) -> pathlib.Path:
    """The first of ``candidates`` that exists; DataError listing all of them otherwise."""
    cands = list(candidates)
    for c in cands:
        if c.exists():
            return c
    raise DataError(
        f"{format}: expected {what} at one of: {', '.join(str(c) for c in cands)}; none exists"
    )


def read_json(path: pathlib.Path, format: str) -> Any:
    need_file(path, format)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a BOM as Windows editors write it
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{format}: {path} is not valid JSON: {e}") from None


def need_list(obj: Any, key: str, path: pathlib.Path, format: str) -> list[Any]:
    """``obj[key]`` if it is a list (a split's items), else DataError naming the key and file."""
    v = obj[key]
    if not isinstance(v, list):
        raise DataError(
            f"{format}: {path} {key!r}: expected a list of items, got {type(v).__name__}"
        )
    return v


def header_names(cells: Sequence[str]) -> list[str]:
    """A CSV header's column names as pandas reads them: stripped of padding (`` Findings_EN``),
    an empty name (the index column ``DataFrame.to_csv`` writes) as ``Unnamed: <j>``, and a
    repeated name ``X`` as ``X.1``, ``X.2``, ... so that no column hides another."""
    cols: list[str] = []
    seen: set[str] = set()
    for j, c in enumerate(cells):
        name = c.strip() or f"Unnamed: {j}"
        base, k = name, 0
        while name in seen:
            k += 1
            name = f"{base}.{k}"
        seen.add(name)
        cols.append(name)
    return cols


def read_csv(
    path: pathlib.Path, format: str, required: Sequence[str] = (), delimiter: str = ","
) -> list[dict[str, str]]:
    """Rows of a CSV (``.csv`` or gzip ``.csv.gz``, UTF-8 with or without a BOM, ``\n`` or
    ``\r\n`` line ends — also inside quoted cells, which come back with ``\n``) as dicts keyed by
    :func:`header_names`; DataError if the file or one of the ``required`` columns is missing, or a
    row has more cells than the header."""
    need_file(path, format)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise DataError(f"{format}: cannot read {path} as UTF-8 CSV text: {e}") from None
    text = text.replace("\r\n", "\n")
    try:
        table = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as e:
        raise DataError(f"{format}: {path} is not a readable CSV: {e}") from None
    # blank lines skipped as DictReader does
    while table and not any(c.strip() for c in table[0]):
        table = table[1:]
    cols = header_names(table[0]) if table else []
    missing = [c for c in required if c not in cols]
    if missing:
        raise DataError(f"{format}: {path} lacks the column(s) {missing}; its columns are {cols}")
    rows = []
    for i, cells in enumerate(table[1:], 2):
        if not cells or not any(c.strip() for c in cells):
            continue
        if len(cells) > len(cols) and not any(c.strip() for c in cells[len(cols) :]):
            cells = cells[: len(cols)]  # stray trailing commas
        if len(cells) < len(cols) and all(c.startswith("Unnamed: ") for c in cols[len(cells) :]):
            cells = cells + [""] * (len(cols) - len(cells))  # a header's stray trailing commas
        if len(cells) != len(cols):
            raise DataError(
                f"{format}: {path} row {i} has {len(cells)} cells, the header has {len(cols)} "
                f"columns {cols}"
            )
        rows.append(dict(zip(cols, cells)))
    return rows


def check_paths(records: Sequence[Mapping[str, Any]], format: str, where: str = "") -> None:
    """DataError for the first record whose image file(s) do not exist, naming the row and path.

    Looks at ``image`` (one path), ``images`` (list) and ``sequences`` (dict) of each record."""
    src = f" of {where}" if where else ""
    for i, r in enumerate(records):
        check_record(r, f"{format}: row {i}{src}")


def check_record(r: Mapping[str, Any], where: str) -> None:
    """DataError ``"<where> (id ..): <key> file <path> does not exist"`` for a missing file."""
    rid = str(r.get("id", "?"))
    tag = "" if f"({rid})" in where else f" (id {rid!r})"
    for key, p in record_paths(r):
        if not os.path.exists(p):
            raise DataError(f"{where}{tag}: {key} file {os.fspath(p)} does not exist")


def record_paths(r: Mapping[str, Any]) -> list[tuple[str, PathLike]]:
    """``(key, path)`` for every file a record points to (``image``, ``images[i]``,
    ``sequences[name]``)."""
    out: list[tuple[str, PathLike]] = []
    if isinstance(r.get("image"), (str, os.PathLike)):
        out.append(("image", r["image"]))
    for j, p in enumerate(r.get("images") or []):
        if isinstance(p, (str, os.PathLike)):
            out.append((f"images[{j}]", p))
    for k, p in (r.get("sequences") or {}).items():
        if isinstance(p, (str, os.PathLike)):
            out.append((f"sequences[{k!r}]", p))
    return out


def strip_nii(name: str) -> str:
    """``train_1_a_1.nii.gz`` -> ``train_1_a_1`` (also ``.nii``, ``.mha``, ``.npy``)."""
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".npy"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name
