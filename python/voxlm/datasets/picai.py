"""PI-CAI (prostate bpMRI: T2W, ADC, high-b DWI) with PI-RADS, ISUP and csPCa labels.

Sources: the PI-CAI public training and development set (zenodo, folders per patient:
``<patient_id>/<patient_id>_<study_id>_{t2w,adc,hbv,sag,cor}.mha``) and DIAGNijmegen/picai_labels
(``clinical_information/marksheet.csv`` with patient_id, study_id, mri_date, patient_age, psa,
psad, prostate_volume, histopath_type, lesion_GS, lesion_ISUP, case_ISUP, case_csPCa, lesion_PIRADS
(``"4,4"`` per lesion, ``N/A`` for none), center; lesion masks
``csPCa_lesion_delineations/human_expert/{original,resampled}/<pid>_<sid>.nii.gz`` with values 0 or
the lesion's ISUP 2..5). PI-RADS parsing follows picai_prep's ``parse_scores`` (``N/A`` skipped).

``root`` holds the patient folders (directly, or in the release's ``picai_public_images_fold0``
.. ``fold4`` folders) and ``clinical_information/marksheet.csv``; the label folders are found
under ``root`` or ``labels_root`` (a picai_labels checkout; ``root/picai_labels`` by default).
The public set has no official split: ``split="train"`` is every case unless ``splits`` gives
``{split: [subject ids "<pid>_<sid>"]}`` (a dict or a JSON file), e.g. one of picai_baseline's
cross-validation folds.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..exceptions import ConfigError, DataError
from ._common import SPLIT_ALIASES, PathLike, check_record, first_existing, read_csv
from .registry import register_reader

SEQUENCES = {"t2w": "t2w", "adc": "adc", "dwi": "hbv"}
EXTRA_VIEWS = ("sag", "cor")
MASK_DIRS = (
    "csPCa_lesion_delineations/human_expert/resampled",
    "csPCa_lesion_delineations/human_expert/original",
)
# Gleason score -> ISUP grade group (Epstein 2016), for marksheets without lesion_ISUP / case_ISUP
_GS_TO_ISUP = {
    (3, 3): 1,
    (3, 4): 2,
    (4, 3): 3,
    (4, 4): 4,
    (3, 5): 4,
    (5, 3): 4,
    (4, 5): 5,
    (5, 4): 5,
    (5, 5): 5,
}


def parse_scores(text: str | None) -> list[int]:
    """``"4,4"`` -> ``[4, 4]``; ``N/A`` entries and blanks skipped (picai_prep's
    ``parse_scores``); integral floats as a table re-saved by pandas writes them (``"4.0"``)
    are read as integers. ValueError for anything else (``"4.5"``, ``"high"``)."""
    if text is None:
        return []
    out = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part or part.upper() in ("N/A", "NA") or part.lower() == "nan":
            continue
        v = float(part)
        if not v.is_integer():
            raise ValueError(f"score {part!r} is not an integer")
        out.append(int(v))
    return out


def _gs_isup(text: str | None) -> list[int]:
    out = []
    for m in re.finditer(r"(\d)\s*\+\s*(\d)", str(text or "")):
        a, b = int(m.group(1)), int(m.group(2))
        out.append(0 if a + b == 0 else _GS_TO_ISUP.get((a, b), 1 if a + b <= 6 else 5))
    return out


def lesion_centroids(mask: np.ndarray) -> list[list[float]]:
    """Centroids ``[x, y, z]`` (voxel indices, in the array's axis order) of the 26-connected
    components of ``mask > 0``, largest first (ties by position) — what ``scipy.ndimage.label``
    with a full 3x3x3 structure and ``center_of_mass`` give."""
    fg = np.argwhere(np.asarray(mask) > 0)
    if fg.size == 0:
        return []
    index = {tuple(v): i for i, v in enumerate(fg.tolist())}
    seen = np.zeros(len(fg), dtype=bool)
    offsets = [
        (a, b, c)
        for a in (-1, 0, 1)
        for b in (-1, 0, 1)
        for c in (-1, 0, 1)
        if (a, b, c) != (0, 0, 0)
    ]
    comps: list[tuple[int, list[float]]] = []
    for start in range(len(fg)):
        if seen[start]:
            continue
        seen[start] = True
        stack, members = [start], []
        while stack:
            i = stack.pop()
            members.append(i)
            x, y, z = fg[i]
            for a, b, c in offsets:
                j = index.get((x + a, y + b, z + c))
                if j is not None and not seen[j]:
                    seen[j] = True
                    stack.append(j)
        pts = fg[members].astype(np.float64)
        comps.append((len(members), pts.mean(0).tolist()))
    comps.sort(key=lambda t: (-t[0], t[1]))
    return [c for _, c in comps]


def _idn(v: str | None) -> str:
    """A patient / study id as the file names spell it (``10000.0`` from a re-saved table ->
    ``10000``)."""
    t = str(v if v is not None else "").strip()
    return t[:-2] if t.endswith(".0") and t[:-2].isdigit() else t


def _num(v: str | None) -> float | None:
    """A marksheet number; None for a blank, ``N/A``, ``nan`` or non-numeric cell."""
    try:
        x = float(v) if v is not None and v.strip() else None
    except ValueError:
        return None
    return x if x is not None and np.isfinite(x) else None


def _splits(splits: Mapping[str, Sequence[str]] | PathLike | None) -> dict[str, set[str]] | None:
    """``{split: {subject ids}}`` from a dict or JSON file of ``{split: [ids]}`` or of
    picai_baseline's exported ``{split: {"subject_list": [ids], ...}}``."""
    if splits is None:
        return None
    where = "splits"
    if not isinstance(splits, Mapping):
        p = pathlib.Path(splits)
        where = str(p)
        if not p.is_file():
            raise DataError(f"picai: expected the splits file {p}, but it does not exist")
        try:
            splits = json.loads(p.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"picai: the splits file {p} is not valid JSON: {e}") from None
    if not isinstance(splits, Mapping):
        raise DataError(
            f"picai: {where}: expected {{split: [subject ids '<pid>_<sid>']}}, got "
            f"{type(splits).__name__}"
        )
    out: dict[str, set[str]] = {}
    for k, v in splits.items():
        if isinstance(v, Mapping) and "subject_list" in v:
            v = v["subject_list"]
        if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, set)):
            raise DataError(
                f"picai: {where} {k!r}: expected a list of subject ids '<pid>_<sid>', got "
                f"{type(v).__name__}"
            )
        name = str(k).strip().lower()
        out[SPLIT_ALIASES.get(name, name)] = {str(x).strip() for x in v}
    return out


@register_reader("picai")
def read_picai(
    root: PathLike,
    split: str = "train",
    labels_root: PathLike | None = None,
    splits: Mapping[str, Sequence[str]] | PathLike | None = None,
    mask: str = "resampled",
    points: bool = False,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """One record per marksheet row (study):

    ``{"id": "<pid>_<sid>", "split", "sequences": {"t2w", "adc", "dwi" (the hbv file)}, "pirads"
    (max over the lesions), "lesion_pirads" [per lesion],
    "isup" (case_ISUP), "case_csPCa" (0/1), "labels" int64 [1] (= csPCa), "label_names"
    ["csPCa"], "mask" (lesion delineation path, when one exists), "meta": {patient_id, study_id,
    age, psa, psad, prostate_volume, center, histopath_type, sag/cor paths, ...}}``.

    ``pirads`` is absent when the marksheet scores no lesion (``N/A``). ``mask``: ``"resampled"``
    (on the T2W grid; falls back to ``original``) or ``"original"``. ``points=True`` reads each
    mask and adds ``"points"`` (the lesions' voxel centroids ``[x, y, z]`` in the mask's NIfTI
    axis order, largest lesion first: :func:`lesion_centroids`) and ``"point"`` (the first one).
    """
    fmt = "picai"
    root = pathlib.Path(root)
    sp = _splits(splits)
    known = sorted(sp) if sp is not None else ["train"]
    s = SPLIT_ALIASES.get(str(split).strip().lower(), str(split).strip().lower())
    if s not in known:
        raise ConfigError(
            f"{fmt}: unknown split {split!r}; this layout has splits: {', '.join(known)}"
            + ("" if sp is not None else " (pass splits={split: [subject ids]} for more)")
        )
    if mask not in ("resampled", "original"):
        raise ConfigError(f"{fmt}: mask must be 'resampled' or 'original', got {mask!r}")
    # a picai_labels checkout beside the images (``root/picai_labels``) is found without the option
    lroots = [root] + (
        [pathlib.Path(labels_root)]
        if labels_root is not None
        else ([root / "picai_labels"] if (root / "picai_labels").is_dir() else [])
    )
    # the zenodo release unzips to ``picai_public_images_fold{0..4}/<patient_id>/``; those patient
    # folders are read where they are (or directly under root, as picai_prep's ``images/``)
    image_dirs = [root] + sorted(
        (d for d in root.glob("picai_public_images_fold*") if d.is_dir()), key=lambda d: d.name
    )
    sheet = first_existing(
        [r / "clinical_information" / "marksheet.csv" for r in reversed(lroots)],
        fmt,
        "the marksheet",
    )
    rows = read_csv(sheet, fmt, required=["patient_id", "study_id"])
    order = MASK_DIRS if mask == "resampled" else MASK_DIRS[::-1]
    mask_dirs = [r / d for d in order for r in lroots if (r / d).is_dir()]
    records = []
    for i, row in enumerate(rows):
        pid, sid = _idn(row["patient_id"]), _idn(row["study_id"])
        if not pid or not sid:
            raise DataError(f"{fmt}: {sheet} row {i + 2}: empty patient_id / study_id")
        cid = f"{pid}_{sid}"
        if sp is not None and cid not in sp[s]:
            continue
        where = f"{fmt}: {sheet} row {i + 2} ({cid})"
        base = next((d / pid for d in image_dirs if (d / pid).is_dir()), root / pid)
        rec: dict[str, Any] = {
            "id": cid,
            "split": s,
            "sequences": {k: str(base / f"{cid}_{v}.mha") for k, v in SEQUENCES.items()},
        }
        try:
            les = parse_scores(row.get("lesion_PIRADS"))
        except ValueError:
            raise DataError(
                f"{where}: lesion_PIRADS {row.get('lesion_PIRADS')!r} is not a list of scores"
            ) from None
        if les:
            rec["pirads"] = max(les)
        rec["lesion_pirads"] = les
        isup = _num(row.get("case_ISUP"))
        try:
            lesion_isup = (
                parse_scores(row.get("lesion_ISUP"))
                if (row.get("lesion_ISUP") or "").strip()
                else _gs_isup(row.get("lesion_GS"))
            )
        except ValueError:
            raise DataError(
                f"{where}: lesion_ISUP {row.get('lesion_ISUP')!r} is not a list of ISUP grades"
            ) from None
        if isup is None and lesion_isup:
            isup = float(max(lesion_isup))
        if isup is not None:
            rec["isup"] = int(isup)
        cs = (row.get("case_csPCa") or "").strip().upper()
        if cs in ("YES", "NO", "1", "0", "1.0", "0.0", "TRUE", "FALSE"):
            rec["case_csPCa"] = int(cs in ("YES", "1", "1.0", "TRUE"))
        elif "isup" in rec:
            rec["case_csPCa"] = int(rec["isup"] >= 2)
        if "case_csPCa" in rec:
            rec["labels"] = np.asarray([rec["case_csPCa"]], dtype=np.int64)
            rec["label_names"] = ["csPCa"]
        for d in mask_dirs:
            if (d / f"{cid}.nii.gz").is_file():
                rec["mask"] = str(d / f"{cid}.nii.gz")
                break
        if points and "mask" in rec:
            from ..volume import load_volume

            try:
                pts = lesion_centroids(load_volume(rec["mask"]).data)
            except OSError as e:
                raise DataError(
                    f"{where}: cannot read the lesion mask {rec['mask']}: {e}"
                ) from None
            rec["points"] = pts
            if pts:
                rec["point"] = pts[0]
        meta = {
            "patient_id": pid,
            "study_id": sid,
            "lesion_isup": lesion_isup,
            **{k: _num(row.get(k)) for k in ("patient_age", "psa", "psad", "prostate_volume")},
            **{k: row.get(k, "") for k in ("mri_date", "histopath_type", "lesion_GS", "center")},
            **{k: str(base / f"{cid}_{k}.mha") for k in EXTRA_VIEWS},
        }
        if "points" in rec:
            meta["point_unit"] = "voxel index [x, y, z] of the mask's NIfTI grid"
        rec["meta"] = meta
        if check_files:
            check_record(rec, where)
        records.append(rec)
    return records
