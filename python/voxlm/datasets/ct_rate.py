"""CT-RATE (chest CT volumes with reports and 18 abnormality labels).

Sources: the CT-RATE dataset card / CT-CLIP README (ibrahimethemhamamci/CT-CLIP, ``scripts/data.py``
and ``data_preprocess/``) and TorchIO's ``torchio/datasets/ct_rate.py``:

* volumes
  ``dataset/{train,valid}/<split>_<pid>/<split>_<pid>_<scan>/<split>_<pid>_<scan>_<recon>.nii.gz``
  (also ``dataset/{train,valid}_fixed/`` with corrected headers; preferred when present);
* the tables, under ``dataset/`` in the Hugging Face repository (TorchIO reads them there) or
  directly under the root:
  ``radiology_text_reports/{train,validation}_reports.csv``: VolumeName (with ``.nii.gz``),
  ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN;
* ``multi_abnormality_labels/{train,valid}_predicted_labels.csv``: VolumeName + the 18 columns
  of :data:`ABNORMALITIES` (0/1);
* ``metadata/{train,validation}_metadata.csv``: VolumeName, ..., RescaleSlope, RescaleIntercept,
  XYSpacing (``"[x, y]"``), ZSpacing, ...

The original NIfTIs lack correct spacing and scaling; CT-CLIP computes HU = slope * x + intercept
and takes the spacing from the metadata table, so the reader puts those in ``record["meta"]``:
``{"rescale_slope", "rescale_intercept", "spacing": (x, y, z)}``, ``"origin"``
(ImagePositionPatient) and ``"orientation"`` (ImageOrientationPatient, 6 cosines) when given — what
CT-RATE's ``fix_metadata.py`` / TorchIO's ``CtRate._fix_image`` write into the header — plus the
raw row.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import numpy as np

from ..exceptions import DataError
from ._common import (
    PathLike,
    canonical_split,
    check_paths,
    first_existing,
    need_dir,
    read_csv,
    strip_nii,
)
from .registry import register_reader

#: The 18 label columns of ``multi_abnormality_labels/*_predicted_labels.csv``, in file order.
ABNORMALITIES = [
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
]
REPORT_COLUMNS = [
    "VolumeName",
    "ClinicalInformation_EN",
    "Technique_EN",
    "Findings_EN",
    "Impressions_EN",
]
# voxlm split -> (volume folder, reports/metadata file prefix, labels file prefix)
_NAMES = {"train": ("train", "train", "train"), "validation": ("valid", "validation", "valid")}


def volume_path(volume_dir: pathlib.Path, volume_name: str) -> pathlib.Path:
    """``train_1_a_1.nii.gz`` -> ``<volume_dir>/train_1/train_1_a/train_1_a_1.nii.gz``."""
    stem = strip_nii(volume_name)
    parts = stem.split("_")
    if len(parts) < 4:
        raise DataError(
            f"ct-rate: VolumeName {volume_name!r}: expected <split>_<pid>_<scan>_<recon>.nii.gz"
        )
    patient = "_".join(parts[:2])
    scan = "_".join(parts[:3])
    return volume_dir / patient / scan / (stem + ".nii.gz")


def _table(root: pathlib.Path, folder: str, name: str) -> pathlib.Path:
    return first_existing(
        [root / "dataset" / folder / name, root / folder / name], "ct-rate", f"{folder}/{name}"
    )


def _numbers(v: str | None) -> list[float] | None:
    """``"[0.75, 0.75]"``, ``"['0.75', '0.75']"``, ``"(0.75 0.75)"``, ``"0.75\\0.75"`` (DICOM's
    multi-value separator) -> ``[0.75, 0.75]``; None for a blank cell or anything else."""
    if v is None or not v.strip():
        return None
    t = v.strip().strip("[]()").replace("'", " ").replace('"', " ")
    try:
        found = [float(x) for x in re.split(r"[,\s\\]+", t) if x]
    except ValueError:
        return None
    return found if found and all(np.isfinite(found)) else None


def _has_table(root: pathlib.Path, folder: str, name: str) -> bool:
    return any((b / folder / name).is_file() for b in (root / "dataset", root))


def _literal(v: str | None) -> Any:
    return _numbers(v)


def _float(v: str, what: str, row: int, path: pathlib.Path) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = float("nan")
    if not np.isfinite(x):
        raise DataError(f"ct-rate: {path} row {row}: {what} {v!r} is not a number")
    return x


def _positive(v: str, what: str, row: int, path: pathlib.Path) -> float:
    x = _float(v, what, row, path)
    if not (np.isfinite(x) and x > 0):
        raise DataError(f"ct-rate: {path} row {row}: {what} {v!r} is not a positive spacing (mm)")
    return x


@register_reader("ct-rate")
def read_ct_rate(
    root: PathLike,
    split: str = "train",
    fixed: bool | None = None,
    labels: bool | None = None,
    metadata: bool | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Records of the ``train`` or ``validation`` split of CT-RATE at ``root``.

    Args:
        root: the dataset folder (holding ``dataset/``, ``radiology_text_reports/``, ...).
        split: ``train`` | ``validation`` (``valid``).
        fixed: read volumes from ``dataset/<split>_fixed`` (None: when that folder exists).
        labels / metadata: also read the label table / metadata table: True (it must exist),
            False, or None (default): when the file exists (many copies lack ``metadata/``;
            records then have no ``labels`` / ``meta``).

    Returns records ``{"id" (VolumeName without .nii.gz), "split", "image", "report"
    (Findings_EN), "sections" {"clinical_information", "technique", "findings", "impression"},
    "labels" int64 [18], "label_names" (:data:`ABNORMALITIES`), "meta"}``, in the reports CSV's
    row order.
    """
    fmt = "ct-rate"
    root = pathlib.Path(root)
    s = canonical_split(split, list(_NAMES), fmt)
    vname, rname, lname = _NAMES[s]
    # ``root`` is the Hugging Face repository (volumes under ``dataset/``) or its ``dataset/``
    if fixed is None:
        fixed = any((b / f"{vname}_fixed").is_dir() for b in (root / "dataset", root))
    folder = f"{vname}_fixed" if fixed else vname
    vdir = next(
        (b / folder for b in (root / "dataset", root) if (b / folder).is_dir()),
        root / "dataset" / folder,
    )
    need_dir(vdir, fmt, f"the volumes; also looked for {root / folder}")
    rep_path = _table(root, "radiology_text_reports", f"{rname}_reports.csv")
    reports = read_csv(rep_path, fmt, required=REPORT_COLUMNS)
    lab: dict[str, np.ndarray] = {}
    if labels is None:
        labels = _has_table(root, "multi_abnormality_labels", f"{lname}_predicted_labels.csv")
    if metadata is None:
        metadata = _has_table(root, "metadata", f"{rname}_metadata.csv")
    if labels:
        lab_path = _table(root, "multi_abnormality_labels", f"{lname}_predicted_labels.csv")
        for i, row in enumerate(read_csv(lab_path, fmt, required=["VolumeName", *ABNORMALITIES])):
            vals = [row[c].strip() for c in ABNORMALITIES]
            try:
                v = np.asarray([float(x) for x in vals])
            except (TypeError, ValueError):
                v = np.full(1, np.nan)
            if not np.isin(v, (0.0, 1.0)).all():
                raise DataError(
                    f"{fmt}: {lab_path} row {i + 2} ({row['VolumeName']}): expected 0/1 labels "
                    f"(0, 1, 0.0, 1.0) in the {len(ABNORMALITIES)} abnormality columns, got {vals}"
                )
            lab[strip_nii(row["VolumeName"].strip())] = v.astype(np.int64)
    meta: dict[str, dict[str, Any]] = {}
    if metadata:
        meta_path = _table(root, "metadata", f"{rname}_metadata.csv")
        need = ["VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing"]
        for i, row in enumerate(read_csv(meta_path, fmt, required=need)):
            xy = _numbers(row["XYSpacing"])
            if xy is not None and len(xy) == 2 and min(xy) > 0:
                x, y = xy
            else:
                raise DataError(
                    f"{fmt}: {meta_path} row {i + 2}: XYSpacing {row['XYSpacing']!r} is not "
                    f"'[x, y]' with x, y > 0"
                ) from None
            meta[strip_nii(row["VolumeName"].strip())] = {
                "rescale_slope": _float(row["RescaleSlope"], "RescaleSlope", i + 2, meta_path),
                "rescale_intercept": _float(
                    row["RescaleIntercept"], "RescaleIntercept", i + 2, meta_path
                ),
                "spacing": (x, y, _positive(row["ZSpacing"], "ZSpacing", i + 2, meta_path)),
                "origin": _literal(row.get("ImagePositionPatient")),
                "orientation": _literal(row.get("ImageOrientationPatient")),
                "row": dict(row),
            }
    records = []
    for i, row in enumerate(reports):
        vid = strip_nii(row["VolumeName"].strip())
        rec: dict[str, Any] = {
            "id": vid,
            "split": s,
            "image": str(volume_path(vdir, vid)),
            "report": row["Findings_EN"],
            "sections": {
                "clinical_information": row["ClinicalInformation_EN"],
                "technique": row["Technique_EN"],
                "findings": row["Findings_EN"],
                "impression": row["Impressions_EN"],
            },
        }
        if labels:
            if vid not in lab:
                raise DataError(
                    f"{fmt}: {rep_path} row {i + 2} ({vid}): no row for it in "
                    f"multi_abnormality_labels/{lname}_predicted_labels.csv"
                )
            rec["labels"] = lab[vid]
            rec["label_names"] = list(ABNORMALITIES)
        if metadata:
            if vid not in meta:
                raise DataError(
                    f"{fmt}: {rep_path} row {i + 2} ({vid}): no row for it in "
                    f"metadata/{rname}_metadata.csv"
                )
            rec["meta"] = meta[vid]
        records.append(rec)
    if check_files:
        check_paths(records, fmt, str(rep_path))
    return records
