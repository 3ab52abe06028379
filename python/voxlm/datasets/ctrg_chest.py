"""CTRG-Chest-548K, as Dia-LLaMA reads it.

Source: zhi-xuan-chen/Dia-LLaMA, ``src/Dataset/my_dataset/CTRG_dataset.py`` (class
``CTRG_Dataset``) and ``src/Dataset/dataset_{train,val,test}.py`` (which pass ``data_dir=
.../CTRG-Chest-548K_volume/``, ``annotation.json`` and ``CTRG_finding_labels.csv``, splits
``"train"``, ``"val"``, ``"test"``):

* ``annotation.json`` = ``{"train" | "val" | "test": [{"id": ..., "finding": ..., ...}]}``;
* ``CTRG_finding_labels.csv``: column ``id`` then 14 CheXbert labels (``row[1:]`` in the
  reference), codes 0 blank / 1 positive / 2 negative / 3 uncertain; the reference keeps only
  code 1 as positive (``torch.where(cls_labels == 1, cls_labels, 0)``);
* volumes ``<data_dir>/<id>.nii.gz``.

voxlm's reader takes ``root`` holding ``annotation.json``, ``CTRG_finding_labels.csv`` and the
volume folder ``CTRG-Chest-548K_volume/`` (the public download's name) or ``volumes/``.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from ..exceptions import DataError
from ..metrics import CHEXBERT_CONDITIONS
from ..metrics import diagnostic_prompt as label_sentences
from ._common import (
    PathLike,
    canonical_split,
    check_paths,
    first_existing,
    need_file,
    need_list,
    read_csv,
    read_json,
)
from .registry import register_reader

#: Dia-LLaMA's ``CONDITIONS`` (the CSV header with spaces), in the CSV's column order: the one
#: copy is :data:`voxlm.metrics.CHEXBERT_CONDITIONS`.
CONDITIONS = list(CHEXBERT_CONDITIONS)

#: Dia-LLaMA's fixed instruction after the label sentences (``CTRG_dataset.py``, ``guide``),
#: trailing space included; the one copy (:data:`voxlm.recipes.dia_llama.INSTRUCTION` is this).
GUIDE = (
    "Based on the above visual information and some key abnormal information related to specific "
    "diseases, please generate a complete medical report corresponding to this CT image. "
    "Providing a "
    "comprehensive report which contains detailed information about the anatomical structures "
    "and any "
    "abnormalities is essential. "
)


def diagnostic_prompt(labels: Any, names: Any = None, guide: str = GUIDE) -> str:
    """Dia-LLaMA's question: ``The "{disease}" is positive|negative. `` per label (positive where
    the label is 1; :func:`voxlm.metrics.diagnostic_prompt`), then ``guide`` (transcribed from
    ``CTRG_Dataset.__getitem__``).

    ``labels``: [L] 0/1 (a record's ``labels``) or a record dict."""
    if isinstance(labels, dict):
        labels, names = labels["labels"], labels.get("label_names", names)
    names = list(names) if names is not None else CONDITIONS
    states = [1 if int(v) == 1 else 0 for v in np.asarray(labels).reshape(-1).tolist()]
    return label_sentences(states, names) + guide


def _id_text(v: Any) -> str:
    """An annotation/label-table id as text: ``12``, ``"12"``, ``" 12 "`` and ``12.0`` -> ``"12"``
    (leading zeros, as in ``"0012"``, are kept: they name the volume file)."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    t = str(v).strip()
    if t.endswith(".0") and t[:-2].isdigit():
        t = t[:-2]
    return t


def _volume(vdir: pathlib.Path, sid: str) -> str:
    """``<vdir>/<id>.nii.gz`` (Dia-LLaMA's name), or ``<id>.nii`` when only that exists."""
    gz = vdir / f"{sid}.nii.gz"
    plain = vdir / f"{sid}.nii"
    return str(plain if not gz.exists() and plain.exists() else gz)


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def read_label_table(path: pathlib.Path) -> tuple[dict[int, np.ndarray], list[str]]:
    """``({id: codes int64 [14]}, condition names)`` of ``CTRG_finding_labels.csv``.

    The label columns are every column but the id (``id``, any case) and unnamed index columns
    (``Unnamed: 0``, the one ``DataFrame.to_csv`` adds); when their names are Dia-LLaMA's 14
    conditions (``enlarged_cardiomediastinum`` or ``Enlarged Cardiomediastinum``), they are put in
    :data:`CONDITIONS` order, the order Dia-LLaMA reads (``row[1:]``) and its prompt names them;
    14 columns of other names are taken by position, as Dia-LLaMA does.
    An empty cell is code 0 (blank: not mentioned), as CheXbert writes it; codes written as
    floats (``2.0``) are read as integers; any other value is a DataError naming the row."""
    fmt = "ctrg-chest"
    rows = read_csv(path, fmt)
    if not rows:
        return {}, list(CONDITIONS)
    header = list(rows[0])
    id_col = next((c for c in header if c.strip().lower() == "id"), None)
    if id_col is None:
        raise DataError(f"{fmt}: {path} lacks the column 'id'; its columns are {header}")
    cols = [c for c in header if c != id_col and not c.startswith("Unnamed: ")]
    by_norm = {_norm(c): c for c in cols}
    if len(cols) == len(CONDITIONS) and set(by_norm) == {_norm(c) for c in CONDITIONS}:
        cols, names = [by_norm[_norm(c)] for c in CONDITIONS], list(CONDITIONS)
    elif len(cols) == len(CONDITIONS):
        names = list(CONDITIONS)  # 14 columns of other names: by position, as Dia-LLaMA reads them
    else:
        names = list(cols)
    codes: dict[int, np.ndarray] = {}
    for i, row in enumerate(rows, 2):
        vals = [row[c].strip() for c in cols]
        try:
            rid = int(_id_text(row[id_col]))
            c = np.asarray([int(float(v)) if v else 0 for v in vals], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise DataError(
                f"{fmt}: {path} row {i} (id {row[id_col]!r}): expected an integer id and codes "
                f"0 / 1 / 2 / 3, got {vals}"
            ) from None
        if ((c < 0) | (c > 3)).any():
            raise DataError(
                f"{fmt}: {path} row {i} (id {rid}): CheXbert codes are 0 blank / 1 positive / "
                f"2 negative / 3 uncertain, got {vals}"
            )
        codes[rid] = c
    return codes, names


_SPLIT_KEYS = {"train": "train", "validation": "val", "test": "test"}
VOLUME_DIRS = ("CTRG-Chest-548K_volume", "volumes")


@register_reader("ctrg-chest")
def read_ctrg_chest(
    root: PathLike,
    split: str = "train",
    volume_dir: PathLike | None = None,
    annotation: PathLike | None = None,
    labels_csv: PathLike | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Records of one split of CTRG-Chest (layout of Dia-LLaMA's ``CTRG_Dataset``).

    Args:
        root: folder with ``annotation.json``, ``CTRG_finding_labels.csv`` and the volumes.
        split: ``train`` | ``validation`` (``val`` in the JSON) | ``test``.
        volume_dir / annotation / labels_csv: override the three locations.
        check_files: DataError now for a row whose volume is missing.

    Returns records ``{"id", "split", "image", "report" (the ``finding``), "labels"
    (int64 [14], 1 where the code is 1), "label_codes" (int64 [14], raw 0/1/2/3),
    "label_names" (:data:`CONDITIONS`)}``.
    """
    fmt = "ctrg-chest"
    root = pathlib.Path(root)
    s = canonical_split(split, list(_SPLIT_KEYS), fmt)
    ann_path = pathlib.Path(annotation) if annotation is not None else root / "annotation.json"
    lab_path = (
        pathlib.Path(labels_csv) if labels_csv is not None else root / "CTRG_finding_labels.csv"
    )
    need_file(ann_path, fmt, "annotation.json: {'train'|'val'|'test': [{'id', 'finding'}]}")
    need_file(lab_path, fmt, "CheXbert label table: id + 14 label columns")
    vdir = (
        pathlib.Path(volume_dir)
        if volume_dir is not None
        else first_existing([root / d for d in VOLUME_DIRS], fmt, "the volume folder")
    )
    # the download's zip unpacks to CTRG-Chest-548K_volume/CTRG-Chest-548K_volume/<id>.nii.gz
    for _ in range(3):
        if not (vdir / vdir.name).is_dir():
            break
        vdir = vdir / vdir.name
    ann = read_json(ann_path, fmt)
    key = _SPLIT_KEYS[s]
    if not isinstance(ann, dict) or key not in ann:
        have = list(ann) if isinstance(ann, dict) else type(ann).__name__
        raise DataError(f"{fmt}: {ann_path} has no {key!r} list (split {s!r}); it has {have}")
    codes, names = read_label_table(lab_path)
    records = []
    for i, item in enumerate(need_list(ann, key, ann_path, fmt)):
        if not isinstance(item, dict) or "id" not in item or "finding" not in item:
            raise DataError(
                f"{fmt}: {ann_path} {key}[{i}]: expected {{'id', 'finding', ...}}, "
                f"got {item!r:.200}"
            )
        sid = _id_text(item["id"])
        try:
            cid = int(sid)
        except (TypeError, ValueError):
            raise DataError(
                f"{fmt}: {ann_path} {key}[{i}]: id {item['id']!r} is not an integer"
            ) from None
        if cid not in codes:
            raise DataError(
                f"{fmt}: {ann_path} {key}[{i}] (id {cid}): no row with this id in {lab_path}"
            )
        c = codes[cid]
        if not isinstance(item["finding"], str):
            raise DataError(
                f"{fmt}: {ann_path} {key}[{i}] (id {sid}): 'finding' must be the report text, got "
                f"{type(item['finding']).__name__} {item['finding']!r:.80}"
            )
        records.append(
            {
                "id": sid,
                "split": s,
                "image": _volume(vdir, sid),
                "report": item["finding"],
                "labels": (c == 1).astype(np.int64),
                "label_codes": c.copy(),
                "label_names": list(names),
            }
        )
    if check_files:
        check_paths(records, fmt, str(ann_path))
    return records
