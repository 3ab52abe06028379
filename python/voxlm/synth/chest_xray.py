"""Synthetic chest radiographs (PA + lateral) with findings and Findings / Impression reports.

Each study is a synthetic chest CT (:mod:`voxlm.synth.chest_ct`, same planted findings and the
real CTRG-Chest label distribution) projected as X-ray attenuation: ``mu = max(HU + 1000, 0) /
1000`` summed along the beam, image ``1 - exp(-k * line integral)`` (bright = attenuating). PA:
beam posterior -> anterior, patient's right on the image's left; lateral: beam right -> left,
anterior on the left. Stored as 8-bit greyscale PNG.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..exceptions import ConfigError
from . import reports as R
from .chest_ct import _splits, generate_case, sample_codes
from .writers import PathLike, atomic_dir, check_size, write_csv, write_png

#: MIMIC-CXR-JPG's CheXpert table columns (alphabetical, as in mimic-cxr-2.0.0-chexpert.csv).
CHEXPERT_COLUMNS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)


def project(hu_xyz: np.ndarray, spacing: Sequence[float], view: str, k: float = 0.08) -> np.ndarray:
    """A radiograph-like uint8 image ``[rows, cols]`` of a HU volume ``[X, Y, Z]`` (RAS)."""
    mu = np.clip(hu_xyz.astype(np.float32) + 1000, 0, None) / 1000
    if view == "PA":
        line = mu.sum(1) * spacing[1] / 10  # [X, Z], cm
        img = line[::-1, ::-1].T  # rows superior -> inferior, cols patient right -> left
    elif view == "LATERAL":
        line = mu.sum(0) * spacing[0] / 10  # [Y, Z]
        img = line[::-1, ::-1].T  # cols anterior -> posterior
    else:
        raise ConfigError(f"project view: expected 'PA' or 'LATERAL', got {view!r}")
    out = 1 - np.exp(-k * img)  # k per cm of water-equivalent path
    out = (out - out.min()) / max(float(out.max() - out.min()), 1e-6)
    return np.clip(np.rint(255 * out), 0, 255).astype(np.uint8)


def _nth(k: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(k, f"{k}th")


def _sentence(f: dict[str, Any]) -> str:
    lab = f["label"]
    side = f.get("side", "right")
    zone = {"upper": "upper", "middle": "mid", "lower": "lower"}.get(
        f.get("lobe", "lower"), "lower"
    )
    if lab == "lung lesion":
        return (
            f"A {int(round(f['size_mm'][0]))} mm "
            f"{'mass' if f.get('kind') == 'mass' else 'nodule'} "
            f"projects over the {side} {zone} lung."
        )
    text = {
        "lung opacity": f"Hazy ground-glass opacity in the {side} {zone} lung.",
        "consolidation": f"Focal consolidation in the {side} {zone} lung.",
        "pneumonia": (
            f"Patchy airspace opacity in the {side} {zone} lung, concerning for pneumonia."
        ),
        "atelectasis": f"Linear atelectasis at the {side} lung base.",
        "edema": "Diffuse interstitial pulmonary edema.",
        "pneumothorax": f"A {side} pneumothorax is present.",
        "pleural effusion": (
            f"Bilateral {f.get('amount', 'small')} pleural effusions."
            if side == "both"
            else f"A {f.get('amount', 'small')} {side} pleural effusion."
        ),
        "pleural other": "Bilateral pleural thickening."
        if side == "both"
        else f"The {side} pleura is thickened.",
        "fracture": f"Fracture of the {side} {_nth(int(f.get('rib', 6)))} rib.",
        "support devices": (
            "A left chest wall pacemaker with its lead in the right ventricle."
            if f.get("kind") == "pacemaker"
            else "A central venous catheter terminates in the superior vena cava."
        ),
        "enlarged cardiomediastinum": "The hila are enlarged."
        if f.get("where") == "hilum"
        else "The mediastinum is widened.",
        "cardiomegaly": "The heart is enlarged.",
    }
    return text[lab]


def cxr_report(findings: Sequence[dict[str, Any]], codes: Sequence[int]) -> tuple[str, str]:
    """``(findings, impression)`` section texts of a study."""
    pos = [f for f in findings]
    have = {f["label"] for f in pos}
    parts = [_sentence(f) for f in pos]
    if not have & {
        "lung lesion",
        "lung opacity",
        "consolidation",
        "pneumonia",
        "atelectasis",
        "edema",
    }:
        parts.insert(0, "The lungs are clear.")
    neg = [
        w
        for lbl, w in (("pleural effusion", "pleural effusion"), ("pneumothorax", "pneumothorax"))
        if lbl not in have
    ]
    if neg:
        parts.append("No " + " or ".join(neg) + ".")
    if not have & {"cardiomegaly", "enlarged cardiomediastinum"}:
        parts.append("The cardiomediastinal silhouette is normal.")
    impression = " ".join(_sentence(f) for f in pos) if pos else "No acute cardiopulmonary process."
    return " ".join(parts), impression


def _report_text(findings: str, impression: str) -> str:
    return (
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
        " INDICATION:  ___ with chest pain.\n\n COMPARISON:  None.\n\n"
        f" FINDINGS:\n \n {findings}\n \n IMPRESSION:\n \n {impression}\n"
    )


def _dicom_id(seed: int, study: int, view: str) -> str:
    h = hashlib.sha1(f"{seed}|{study}|{view}".encode()).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def chest_xray(
    out: PathLike,
    n: int,
    seed: int = 0,
    layout: str = "mimic-cxr",
    shape: tuple[int, int, int] = (96, 80, 80),
    prevalence: Mapping[str, float] | None = None,
) -> pathlib.Path:
    """Write ``n`` PA + lateral studies in the MIMIC-CXR-JPG layout under ``out``.

    ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.png`` (PNG, not JPEG: voxlm writes PNG without
    Pillow), the report ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt`` (MIMIC-CXR's FINDINGS: / IMPRESSION:
    sections), ``mimic-cxr-2.0.0-{metadata,split,chexpert}.csv.gz`` (split 70/10/20 % as
    train/validate/test; CheXpert 1.0 positive, 0.0 negative, -1.0 uncertain, blank unmentioned),
    and ``ground_truth/<study_id>.json``. ``shape`` is the CT grid projected (X, Y, Z).
    """
    if layout != "mimic-cxr":
        raise ConfigError(f"chest_xray layout: expected 'mimic-cxr', got {layout!r}")
    n, shape = check_size("chest_xray", n, shape, out, bytes_per_voxel=0.5, volumes=1)
    out = pathlib.Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"chest_xray: {out} exists and is not empty")
    rng = np.random.default_rng([int(seed), 3])
    codes = sample_codes(rng, n, prevalence)
    split = _splits(rng, n, (0.7, 0.1, 0.2))
    split_names = ("train", "validate", "test")
    col_idx = {c: R.IDX[c.lower()] for c in CHEXPERT_COLUMNS}
    with atomic_dir(out) as tmp:
        meta, splits, chex = [], [], []
        for i in range(n):
            case = generate_case(10_000 + i, codes[i], seed=seed, shape=shape)
            subject, study = 10_000_000 + i, 50_000_000 + i
            folder = tmp / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
            findings, impression = cxr_report(case.findings, case.codes)
            views = []
            for view in ("PA", "LATERAL"):
                did = _dicom_id(seed, study, view)
                img = project(case.hu, case.spacing, view)
                write_png(folder / f"s{study}" / f"{did}.png", img)
                meta.append(
                    [
                        did,
                        subject,
                        study,
                        "CHEST (PA AND LAT)",
                        view,
                        img.shape[0],
                        img.shape[1],
                        20200101,
                        "120000.000",
                        "CHEST (PA AND LAT)",
                        "postero-anterior" if view == "PA" else "lateral",
                        "Erect",
                    ]
                )
                splits.append([did, study, subject, split_names[split[i]]])
                views.append({"dicom_id": did, "view": view})
            (folder / f"s{study}.txt").write_text(_report_text(findings, impression))
            row: list[Any] = [subject, study]
            for c in CHEXPERT_COLUMNS:
                code = int(case.codes[col_idx[c]])
                row.append({0: "", 1: "1.0", 2: "0.0", 3: "-1.0"}[code])
            chex.append(row)
            gt = tmp / "ground_truth"
            gt.mkdir(exist_ok=True)
            (gt / f"{study}.json").write_text(
                json.dumps(
                    {
                        "subject_id": subject,
                        "study_id": study,
                        "split": split_names[split[i]],
                        "views": views,
                        "codes": case.codes.tolist(),
                        "labels": case.labels.tolist(),
                        "label_names": list(R.CONDITIONS),
                        "findings": case.findings,
                        "findings_text": findings,
                        "impression": impression,
                    },
                    indent=1,
                )
            )
        write_csv(
            tmp / "mimic-cxr-2.0.0-metadata.csv.gz",
            [
                "dicom_id",
                "subject_id",
                "study_id",
                "PerformedProcedureStepDescription",
                "ViewPosition",
                "Rows",
                "Columns",
                "StudyDate",
                "StudyTime",
                "ProcedureCodeSequence_CodeMeaning",
                "ViewCodeSequence_CodeMeaning",
                "PatientOrientationCodeSequence_CodeMeaning",
            ],
            meta,
        )
        write_csv(
            tmp / "mimic-cxr-2.0.0-split.csv.gz",
            ["dicom_id", "study_id", "subject_id", "split"],
            splits,
        )
        write_csv(
            tmp / "mimic-cxr-2.0.0-chexpert.csv.gz",
            ["subject_id", "study_id", *CHEXPERT_COLUMNS],
            chex,
        )
        (tmp / "synth.json").write_text(
            json.dumps(
                {
                    "kind": "chest-xray",
                    "layout": layout,
                    "n": n,
                    "seed": seed,
                    "shape": list(shape),
                },
                indent=1,
            )
        )
    return out
