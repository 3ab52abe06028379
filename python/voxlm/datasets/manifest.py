"""A generic manifest for a user's own data: one row per sample, CSV or JSON Lines.

``root`` is the manifest file (``.csv``, ``.csv.gz``, ``.jsonl``, ``.json``) or a folder holding
``manifest.csv`` / ``manifest.jsonl``. Image paths are relative to the manifest's folder (absolute
paths are kept). Columns / keys (all but an image are optional):

==============  ========================================================================
``id``          sample id (default: the row number)
``image``       one image path
``images``      several paths: a JSON list, or in CSV separated by ``;``
``t2w``, ``adc``, ``dwi``  (or a JSON ``sequences`` object): MRI sequences -> ``sequences``
``report``      target text; or section columns ``findings``, ``impression``, ``chest``,
                ``abdomen``, ``pelvis`` (-> ``sections``; ``report`` = the non-empty ones joined
                by a blank line when no ``report`` is given)
``labels``      0/1 list (CSV: ``0;1;0``); names from ``label_names`` (JSON key or option);
                or ``label_columns=[...]`` option: one 0/1 column per label
``point``       ``[x, y, z]`` (CSV: ``x;y;z``), in the unit the user chose
``split``       train / validation / test (aliases val, valid, ...); no column = every row
                belongs to the split asked for
``question``, ``answer``, ``answer_text``, ``question_type``, ``choices``, ``pirads``,
``isup``, ``sequence``: copied (``pirads``/``isup`` as int)
==============  ========================================================================
Other columns go to ``record["meta"]``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..exceptions import ConfigError, DataError
from ._common import SPLIT_ALIASES, PathLike, check_record, read_csv
from .registry import register_reader

SECTION_COLUMNS = ("findings", "impression", "chest", "abdomen", "pelvis")
SEQUENCE_COLUMNS = ("t2w", "adc", "dwi")
PASS_THROUGH = ("question", "answer", "answer_text", "question_type", "sequence")
INT_FIELDS = ("pirads", "isup")
_KNOWN = {
    "id",
    "image",
    "images",
    "sequences",
    "report",
    "sections",
    "labels",
    "label_names",
    "point",
    "split",
    "choices",
    *SECTION_COLUMNS,
    *SEQUENCE_COLUMNS,
    *PASS_THROUGH,
    *INT_FIELDS,
}


def _find_manifest(root: pathlib.Path) -> pathlib.Path:
    if root.is_file():
        return root
    if root.is_dir():
        for name in (
            "manifest.csv",
            "manifest.jsonl",
            "manifest.csv.gz",
            "manifest.json",
            "manifest.tsv",
        ):
            if (root / name).is_file():
                return root / name
        raise DataError(
            f"manifest: expected the file {root / 'manifest.csv'} or {root / 'manifest.jsonl'} "
            "(or pass the manifest file itself as root)"
        )
    raise DataError(f"manifest: expected the manifest file {root}, but it does not exist")


def _rows(path: pathlib.Path) -> list[dict[str, Any]]:
    name = path.name.lower()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        try:
            text = path.read_text(encoding="utf-8-sig")  # a BOM as Windows editors write it
        except UnicodeDecodeError as e:
            raise DataError(f"manifest: {path} is not UTF-8 text: {e}") from None
        if name.endswith(".json") and text.lstrip()[:1] in ("[", "{"):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"manifest: {path} is not valid JSON: {e}") from None
            if isinstance(rows, dict) and rows and all(isinstance(v, list) for v in rows.values()):
                # {"train": [...], "validation": [...]} as M3D / AMOS-MM / CTRG write their lists
                rows = [
                    {**r, "split": r.get("split", k)} if isinstance(r, dict) else r
                    for k, v in rows.items()
                    for r in v
                ]
            elif isinstance(rows, dict):
                rows = [rows]
        else:
            rows = []
            for ln, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"manifest: {path} line {ln} is not valid JSON: {e}") from None
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise DataError(
                    f"manifest: {path} row {i}: expected a JSON object, got {type(r).__name__}"
                )
        return rows
    return read_csv(path, "manifest", delimiter="\t" if ".tsv" in name else ",")


def _split_list(v: Any) -> list[str]:
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    s = str(v).strip()
    if s.startswith("["):
        try:
            return [str(x) for x in json.loads(s)]
        except json.JSONDecodeError:
            pass
    return [p.strip() for p in s.split(";") if p.strip()]


def _resolve(base: pathlib.Path, p: str) -> str:
    p = os.path.expanduser(p.strip())
    return p if os.path.isabs(p) else str(base / p)


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


@register_reader("manifest")
def read_manifest(
    root: PathLike,
    split: str = "train",
    label_columns: Sequence[str] | None = None,
    label_names: Sequence[str] | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Records of ``split`` from a CSV / JSONL manifest (see the module docstring for columns)."""
    if isinstance(label_columns, str):  # one column name, not its letters
        label_columns = _split_list(label_columns.replace(",", ";"))
    path = _find_manifest(pathlib.Path(root))
    base = path.parent
    rows = _rows(path)
    has_split = any(not _empty(r.get("split")) for r in rows)
    want = SPLIT_ALIASES.get(str(split).strip().lower(), str(split).strip().lower())
    if has_split:
        present = sorted(
            {
                SPLIT_ALIASES.get(
                    str(r.get("split", "")).strip().lower(), str(r.get("split", "")).strip().lower()
                )
                for r in rows
            }
            - {""}
        )
        if want not in present:
            raise ConfigError(
                f"manifest: unknown split {split!r}; {path} has splits: {', '.join(present)}"
            )
    records = []
    for i, r in enumerate(rows):
        kind = path.name.lower()
        where = (
            f"manifest: {path} row {i + 1}"
            if kind.endswith((".jsonl", ".ndjson"))
            else (
                f"manifest: {path} item {i}"
                if kind.endswith(".json")
                else f"manifest: {path} row {i + 2}"
            )
        )
        rsplit = SPLIT_ALIASES.get(
            str(r.get("split", "")).strip().lower(), str(r.get("split", "")).strip().lower()
        )
        if has_split and rsplit != want:
            continue
        rec: dict[str, Any] = {
            "id": str(r["id"]) if not _empty(r.get("id")) else str(i),
            "split": want,
        }
        if not _empty(r.get("image")):
            rec["image"] = _resolve(base, str(r["image"]))
        if not _empty(r.get("images")):
            rec["images"] = [_resolve(base, p) for p in _split_list(r["images"])]
        seqs = dict(r["sequences"]) if isinstance(r.get("sequences"), dict) else {}
        seqs.update({k: r[k] for k in SEQUENCE_COLUMNS if not _empty(r.get(k))})
        if seqs:
            rec["sequences"] = {k: _resolve(base, str(v)) for k, v in seqs.items()}
        if not any(k in rec for k in ("image", "images", "sequences")):
            raise DataError(
                f"{where} (id {rec['id']!r}): no image path (expected a column image, images or "
                f"t2w/adc/dwi)"
            )
        sections = dict(r["sections"]) if isinstance(r.get("sections"), dict) else {}
        sections.update({k: str(r[k]) for k in SECTION_COLUMNS if k in r and r[k] is not None})
        sections = {k: "" if v is None else str(v) for k, v in sections.items()}
        if sections:
            rec["sections"] = sections
        if not _empty(r.get("report")):
            rec["report"] = str(r["report"])
        elif sections:
            rec["report"] = "\n\n".join(str(v).strip() for v in sections.values() if not _empty(v))
        try:
            if label_columns:
                rec["labels"] = np.asarray(
                    [int(float(r[c])) for c in label_columns], dtype=np.int64
                )
                rec["label_names"] = list(label_columns)
            elif not _empty(r.get("labels")):
                rec["labels"] = np.asarray(
                    [int(float(x)) for x in _split_list(r["labels"])], dtype=np.int64
                )
                names = label_names or r.get("label_names")
                if names:
                    rec["label_names"] = _split_list(names)
            if not _empty(r.get("point")):
                rec["point"] = [float(x) for x in _split_list(r["point"])]
            for k in INT_FIELDS:
                if not _empty(r.get(k)):
                    rec[k] = int(float(r[k]))
        except KeyError as e:
            raise DataError(f"{where} (id {rec['id']!r}): missing label column {e}") from None
        except (TypeError, ValueError) as e:
            raise DataError(
                f"{where} (id {rec['id']!r}): expected numbers in labels/point/pirads/isup: {e}"
            ) from None
        for k in PASS_THROUGH:
            if not _empty(r.get(k)):
                rec[k] = r[k]
        if isinstance(r.get("choices"), dict):
            rec["choices"] = dict(r["choices"])
        meta = {k: v for k, v in r.items() if k not in _KNOWN and k not in (label_columns or ())}
        if meta:
            rec["meta"] = meta
        if check_files:
            check_record(rec, where)
        records.append(rec)
    return records
