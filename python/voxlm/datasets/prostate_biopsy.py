"""Prostate-MRI-US-Biopsy lesion crops as PICG uses them (PI-RADS scoring of biopsy targets).

Source: med-air/PICG2scoring. ``scoring_train/datasets/prostate_lesion_public_np.py``
(``Prostate_lesionDataset_public``) reads split files whose lines are
``Prostate-MRI-US-Biopsy-0001-Target1 3`` (``<case>-Target<k> <PI-RADS>``, e.g.
``scoring_train/data/public_train.txt`` / ``public_test.txt``), splits the name at ``-Target``
and loads ``<root>/<case>/<case>_{T2W,ADC,DWI}_Target<k>.nii.gz`` with nibabel (class = PI-RADS
- 1). ``guideline_network/create_json.py`` names the same crops ``.npy``
(``prostate/case_input/<case>/<case>_{ADC,DWI,T2W}_Target<t>.npy``) with ``stl_record.csv``
columns patient_ID, Target, PI-RADS. The crops come from TCIA's DICOM series and lesion STL
files (a doubled STL bounding box); that cropping code is not public, so the lesion position is
the crop's centre and no ``point`` is given.

``root`` holds the case folders; the split files are ``split_files[split]`` or
``<root>/{public_,}{train,val,test}.txt`` (also under ``<root>/data/``).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigError, DataError
from ._common import PathLike, canonical_split, check_record, first_existing
from .registry import register_reader

CHANNELS = {"t2w": "T2W", "adc": "ADC", "dwi": "DWI"}
_FILE_SPLITS = {
    "train": ("train",),
    "validation": ("val", "valid", "validation"),
    "test": ("test",),
}


def _split_file(root: pathlib.Path, s: str) -> pathlib.Path:
    cands = [
        d / f"{pre}{n}.txt"
        for d in (root, root / "data")
        for n in _FILE_SPLITS[s]
        for pre in ("public_", "")
    ]
    return first_existing(
        cands, "prostate-biopsy", f"the {s} split file (lines '<case>-Target<k> <PI-RADS>')"
    )


@register_reader("prostate-biopsy")
def read_prostate_biopsy(
    root: PathLike,
    split: str = "train",
    split_files: Mapping[str, PathLike] | None = None,
    ext: str | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """One record per split-file line: ``{"id": "<case>-Target<k>", "split", "sequences": {"t2w",
    "adc", "dwi"}, "pirads" (1..5), "meta": {"case", "target"}}``.

    ``ext``: ``".nii.gz"`` (scoring network) or ``".npy"`` (guideline network); None: the one
    that exists for the first line.
    """
    fmt = "prostate-biopsy"
    root = pathlib.Path(root)
    if split_files is not None:
        known = {
            canonical_split(k, list(_FILE_SPLITS), fmt): pathlib.Path(v)
            for k, v in split_files.items()
        }
        s = canonical_split(split, sorted(known), fmt)
        path = known[s]
        if not path.is_file():
            raise DataError(f"{fmt}: expected the split file {path}, but it does not exist")
    else:
        s = canonical_split(split, list(_FILE_SPLITS), fmt)
        path = _split_file(root, s)
    if ext not in (None, ".nii.gz", ".npy"):
        raise ConfigError(f"{fmt}: ext must be '.nii.gz' or '.npy', got {ext!r}")
    records = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{fmt}: {path} is not a text split file: {e}") from None
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{fmt}: {path} line {ln}"
        if len(parts) != 2 or "-Target" not in parts[0]:
            raise DataError(f"{where}: expected '<case>-Target<k> <PI-RADS>', got {line!r}")
        name, score = parts
        case, target = name.split("-Target", 1)
        try:
            f = float(score)
            if not f.is_integer():
                raise ValueError(score)
            pirads = int(f)
        except (ValueError, OverflowError):
            raise DataError(f"{where}: PI-RADS {score!r} is not an integer") from None
        if not 1 <= pirads <= 5:
            raise DataError(f"{where} ({name}): PI-RADS {pirads} is outside 1..5")
        if ext is None:
            probe = root / case / f"{case}_T2W_Target{target}"
            ext = (
                ".npy"
                if not probe.with_name(probe.name + ".nii.gz").exists()
                and probe.with_name(probe.name + ".npy").exists()
                else ".nii.gz"
            )
        rec = {
            "id": name,
            "split": s,
            "pirads": pirads,
            "meta": {"case": case, "target": int(target) if target.isdigit() else target},
            "sequences": {
                k: str(root / case / f"{case}_{c}_Target{target}{ext}") for k, c in CHANNELS.items()
            },
        }
        if check_files:
            check_record(rec, where)
        records.append(rec)
    return records
