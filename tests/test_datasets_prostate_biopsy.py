"""Prostate-MRI-US-Biopsy lesion crops as PICG reads them (med-air/PICG2scoring
scoring_train/datasets/prostate_lesion_public_np.py, guideline_network/create_json.py)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from voxlm.datasets import ReportDataset, read_records
from voxlm.exceptions import ConfigError, DataError

# lines of PICG's scoring_train/data/public_train.txt / public_test.txt
TRAIN = [
    "Prostate-MRI-US-Biopsy-0001-Target1 3",
    "Prostate-MRI-US-Biopsy-0008-Target1 3",
    "Prostate-MRI-US-Biopsy-0008-Target2 4",
]
TEST = ["Prostate-MRI-US-Biopsy-0003-Target1 3"]


def make_crops(root, ext=".nii.gz", data_dir=True):
    rng = np.random.default_rng(5)
    crops = {}
    for line in TRAIN + TEST:
        name = line.split()[0]
        case, k = name.split("-Target")
        (root / case).mkdir(parents=True, exist_ok=True)
        for ch in ("T2W", "ADC", "DWI"):
            arr = rng.normal(size=(6, 5, 4)).astype(np.float32)
            p = root / case / f"{case}_{ch}_Target{k}{ext}"
            if ext == ".npy":
                np.save(p, arr)
            else:
                nib.save(nib.Nifti1Image(arr, np.diag([0.5, 0.5, 1.5, 1])), p)
            crops[(name, ch)] = arr
    d = root / "data" if data_dir else root
    d.mkdir(exist_ok=True)
    (d / "public_train.txt").write_text("\n".join(TRAIN) + "\n")
    (d / "public_test.txt").write_text("\n".join(TEST) + "\n")
    return crops


def test_prostate_biopsy_records_and_loading(tmp_path):
    crops = make_crops(tmp_path)
    tr = read_records("prostate-biopsy", tmp_path)
    assert [(r["id"], r["pirads"]) for r in tr] == [
        (line.split()[0], int(line.split()[1])) for line in TRAIN
    ]
    r = tr[2]
    case = "Prostate-MRI-US-Biopsy-0008"
    assert r["sequences"] == {
        k: str(tmp_path / case / f"{case}_{c}_Target2.nii.gz")
        for k, c in (("t2w", "T2W"), ("adc", "ADC"), ("dwi", "DWI"))
    }
    assert r["meta"] == {"case": case, "target": 2} and r["split"] == "train"
    te = read_records("prostate-biopsy", tmp_path, split="test")
    assert [r["id"] for r in te] == ["Prostate-MRI-US-Biopsy-0003-Target1"]
    it = ReportDataset(tr)[2]
    for k, c in (("t2w", "T2W"), ("adc", "ADC"), ("dwi", "DWI")):
        ref = nib.load(it["sequence_paths"][k]).get_fdata(dtype=np.float32)[None]
        assert it["sequences"][k].shape == ref.shape == (1, 6, 5, 4)
        np.testing.assert_array_equal(it["sequences"][k].numpy(), ref, strict=True)
        np.testing.assert_array_equal(
            it["sequences"][k][0].numpy(), crops[(r["id"], c)], strict=True
        )


def test_prostate_biopsy_npy_crops(tmp_path):
    crops = make_crops(tmp_path, ext=".npy", data_dir=False)
    (r,) = read_records("prostate-biopsy", tmp_path, split="test")
    assert r["sequences"]["adc"].endswith("Prostate-MRI-US-Biopsy-0003_ADC_Target1.npy")
    it = ReportDataset([r])[0]
    assert tuple(it["sequences"]["adc"].shape) == (1, 6, 5, 4)
    np.testing.assert_array_equal(
        it["sequences"]["adc"][0].numpy(), crops[(r["id"], "ADC")], strict=True
    )


def test_prostate_biopsy_bad_input(tmp_path):
    make_crops(tmp_path)
    with pytest.raises(ConfigError, match="train, validation, test"):
        read_records("prostate-biopsy", tmp_path, split="fold3")
    with pytest.raises(DataError, match="validation split file"):
        read_records("prostate-biopsy", tmp_path, split="validation")
    (
        tmp_path / "Prostate-MRI-US-Biopsy-0008" / "Prostate-MRI-US-Biopsy-0008_DWI_Target2.nii.gz"
    ).unlink()
    with pytest.raises(
        DataError, match=r"public_train\.txt line 3 .*Target2.*dwi.*_DWI_Target2\.nii\.gz"
    ):
        read_records("prostate-biopsy", tmp_path)
    (tmp_path / "bad.txt").write_text("Prostate-MRI-US-Biopsy-0001-Target1 7\n")
    with pytest.raises(DataError, match="line 1 .*PI-RADS 7 is outside 1..5"):
        read_records("prostate-biopsy", tmp_path, split_files={"train": tmp_path / "bad.txt"})
