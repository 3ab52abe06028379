"""Dataset readers for the public layouts of the methods, collation, and small real datasets
bundled with voxlm (for demos and tests).

``read_records(format, root, split)`` -> list of record dicts (keys in the team contract:
``id``, ``split``, ``image`` / ``images`` / ``sequences``, ``report`` / ``sections``, ``labels``,
...); formats: ``ct-rate``, ``amos-mm``, ``m3d-cap``, ``m3d-vqa``, ``ctrg-chest``, ``picai``,
``prostate-biopsy``, ``mimic-cxr``, ``manifest``. ``ReportDataset`` loads the images of the
records, ``ReportCollator`` builds LM batches, ``open_dataset`` = both readers and dataset.
"""

from __future__ import annotations

import csv
import pathlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import amos_mm, ct_rate, ctrg_chest, m3d, manifest, mimic_cxr, picai, prostate_biopsy  # noqa: F401

# (importing the reader modules registers them)
from ._common import PathLike
from .collate import ReportCollator, ReportDataset
from .registry import get_reader, read_records, reader_names, register_reader

HERE = pathlib.Path(__file__).resolve().parent


def open_dataset(
    format: str,
    root: PathLike,
    split: str = "train",
    transform: Any = None,
    image_loader: Any = None,
    **options: Any,
) -> ReportDataset:
    """``ReportDataset(read_records(format, root, split, **options), transform)``."""
    return ReportDataset(
        read_records(format, root, split=split, **options),
        transform=transform,
        image_loader=image_loader,
    )


@dataclass(frozen=True)
class ReportSet:
    """Generated and reference reports with their diagnostic prompts and labels."""

    ids: list[str]
    prompts: list[str]
    references: list[str]
    predictions: list[str]
    labels: np.ndarray  # [N, 14] int64, 1 positive / 0 negative


def dia_llama_results() -> ReportSet:
    """The 362 CTRG-Chest test reports released by Dia-LLaMA (generated vs radiologist)."""
    ids, prompts, refs, preds, labels = [], [], [], [], []
    with open(HERE / "dia_llama_results.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            ids.append(row["ID"])
            prompts.append(row["Question"])
            refs.append(row["Ground Truth"])
            preds.append(row["Pred"])
            labels.append([int(v) for v in re.findall(r"\d+", row["GT_labels"])])
    return ReportSet(ids, prompts, refs, preds, np.asarray(labels, dtype=np.int64))


def ctrg_finding_labels() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CTRG-Chest CheXbert codes: ``(ids [N], codes [N, 14], condition names)``."""
    with open(HERE / "ctrg_finding_labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    ids = np.asarray([int(r[0]) for r in body], dtype=np.int64)
    codes = np.asarray([[int(v) for v in r[1:]] for r in body], dtype=np.int64)
    return ids, codes, header[1:]


__all__ = [
    "ReportCollator",
    "ReportDataset",
    "ReportSet",
    "ctrg_finding_labels",
    "dia_llama_results",
    "get_reader",
    "open_dataset",
    "read_records",
    "reader_names",
    "register_reader",
]
