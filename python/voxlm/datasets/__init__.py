"""Small real datasets bundled with voxlm, for demos and tests."""

from __future__ import annotations

import csv
import pathlib
import re
from dataclasses import dataclass

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


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
