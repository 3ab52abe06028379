"""PI-CAI reader (public training set folders + DIAGNijmegen/picai_labels marksheet and lesion
delineations) on a miniature copy written with SimpleITK (.mha) and nibabel (.nii.gz)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import voxlm
from voxlm.datasets import ReportDataset, read_records
from voxlm.datasets.picai import parse_scores
from voxlm.exceptions import ConfigError, DataError

COLUMNS = [
    "patient_id",
    "study_id",
    "mri_date",
    "patient_age",
    "psa",
    "psad",
    "prostate_volume",
    "histopath_type",
    "lesion_GS",
    "lesion_ISUP",
    "case_ISUP",
    "case_csPCa",
    "lesion_PIRADS",
    "center",
]
# clinical values of the first marksheet rows of picai_labels; lesion columns in its formats
ROWS = [
    [
        "10000",
        "1000000",
        "2019-07-02",
        "74",
        "7.7",
        "",
        "55",
        "MRBx",
        "0+0",
        "0",
        "0",
        "NO",
        "N/A",
        "PCNN",
    ],
    [
        "10001",
        "1000001",
        "2016-05-27",
        "64",
        "8.7",
        "0.09",
        "102",
        "",
        "",
        "",
        "0",
        "NO",
        "3",
        "ZGT",
    ],
    [
        "10005",
        "1000005",
        "2012-07-18",
        "64",
        "12.1",
        "0.24",
        "51",
        "MRBx",
        "4+3,0+0",
        "3,0",
        "3",
        "YES",
        "4,5",
        "RUMC",
    ],
    [
        "10006",
        "1000006",
        "2020-10-23",
        "73",
        "6.2",
        "0.23",
        "27",
        "SysBx+MRBx",
        "0+0,3+3",
        "0,1",
        "1",
        "NO",
        "4,3",
        "PCNN",
    ],
]


def _mha(path, arr, spacing):
    img = sitk.GetImageFromArray(arr)  # numpy (z, y, x)
    img.SetSpacing(spacing)
    img.SetOrigin((-30.0, -20.0, 10.0))
    sitk.WriteImage(img, str(path), useCompression=True)


def make_picai(root, labels_root=None):
    labels_root = labels_root or root
    rng = np.random.default_rng(4)
    arrays = {}
    for pid, sid, *_ in ROWS:
        d = root / pid
        d.mkdir(parents=True)
        for seq, shape, sp in (
            ("t2w", (6, 8, 8), (0.5, 0.5, 3.0)),
            ("adc", (4, 5, 5), (2.0, 2.0, 3.0)),
            ("hbv", (4, 5, 5), (2.0, 2.0, 3.0)),
            ("sag", (8, 6, 8), (3.0, 0.5, 0.5)),
            ("cor", (8, 6, 8), (0.5, 3.0, 0.5)),
        ):
            arr = rng.integers(0, 1000, size=shape).astype(np.int16)
            _mha(d / f"{pid}_{sid}_{seq}.mha", arr, sp)
            arrays[(pid, seq)] = arr
    (labels_root / "clinical_information").mkdir(parents=True, exist_ok=True)
    with open(labels_root / "clinical_information" / "marksheet.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(ROWS)
    for variant in ("resampled", "original"):
        md = labels_root / "csPCa_lesion_delineations" / "human_expert" / variant
        md.mkdir(parents=True)
        m = np.zeros((8, 8, 6), np.uint8)
        m[2:4, 3:5, 2:3] = 3
        nib.save(nib.Nifti1Image(m, np.eye(4)), md / "10005_1000005.nii.gz")
    return arrays


def test_parse_scores_like_picai_prep():
    assert (
        parse_scores("4,4") == [4, 4] and parse_scores("N/A") == [] and parse_scores("N/A,3") == [3]
    )
    assert parse_scores("") == [] and parse_scores("5") == [5]


def test_picai_records(tmp_path):
    make_picai(tmp_path)
    recs = read_records("picai", tmp_path)
    assert [r["id"] for r in recs] == [
        "10000_1000000",
        "10001_1000001",
        "10005_1000005",
        "10006_1000006",
    ]
    r = recs[2]
    assert r["sequences"] == {
        "t2w": str(tmp_path / "10005" / "10005_1000005_t2w.mha"),
        "adc": str(tmp_path / "10005" / "10005_1000005_adc.mha"),
        "dwi": str(tmp_path / "10005" / "10005_1000005_hbv.mha"),
    }
    assert (
        r["pirads"] == 5
        and r["lesion_pirads"] == [4, 5]
        and r["isup"] == 3
        and r["case_csPCa"] == 1
    )
    np.testing.assert_array_equal(r["labels"], [1], strict=True)
    assert r["mask"].endswith("human_expert/resampled/10005_1000005.nii.gz")
    assert (
        r["meta"]["psa"] == 12.1
        and r["meta"]["center"] == "RUMC"
        and r["meta"]["lesion_isup"] == [3, 0]
    )
    assert r["meta"]["sag"] == str(tmp_path / "10005" / "10005_1000005_sag.mha")
    assert "pirads" not in recs[0] and recs[0]["lesion_pirads"] == [] and recs[0]["case_csPCa"] == 0
    assert recs[1]["pirads"] == 3 and "mask" not in recs[1]
    assert recs[3]["pirads"] == 4 and recs[3]["isup"] == 1 and recs[3]["case_csPCa"] == 0
    orig = read_records("picai", tmp_path, mask="original")[2]
    assert orig["mask"].endswith("human_expert/original/10005_1000005.nii.gz")


def test_picai_labels_root_and_splits(tmp_path):
    data, labels = tmp_path / "images", tmp_path / "picai_labels"
    data.mkdir()
    labels.mkdir()
    make_picai(data, labels_root=labels)
    (tmp_path / "folds.json").write_text(
        json.dumps({"train": ["10000_1000000", "10005_1000005"], "val": ["10001_1000001"]})
    )
    tr = read_records("picai", data, labels_root=labels, splits=tmp_path / "folds.json")
    assert [r["id"] for r in tr] == ["10000_1000000", "10005_1000005"]
    assert tr[1]["mask"] == str(
        labels / "csPCa_lesion_delineations/human_expert/resampled/10005_1000005.nii.gz"
    )
    va = read_records(
        "picai", data, split="validation", labels_root=labels, splits=tmp_path / "folds.json"
    )
    assert [r["id"] for r in va] == ["10001_1000001"] and va[0]["split"] == "validation"


def test_picai_bad_input(tmp_path):
    make_picai(tmp_path)
    with pytest.raises(ConfigError, match="splits: train"):
        read_records("picai", tmp_path, split="test")
    (tmp_path / "10006" / "10006_1000006_hbv.mha").unlink()
    with pytest.raises(
        DataError, match=r"marksheet\.csv row 5 \(10006_1000006\).*dwi.*10006_1000006_hbv\.mha"
    ):
        read_records("picai", tmp_path)
    (tmp_path / "clinical_information" / "marksheet.csv").unlink()
    with pytest.raises(DataError, match="clinical_information/marksheet.csv"):
        read_records("picai", tmp_path)


def test_picai_sequences_equal_simpleitk(tmp_path):
    """Enable (rename to test_...) once voxlm.load_image reads MetaImage: the loaded sequences equal
    SimpleITK's arrays, in voxlm's (x, y, z) axis order."""
    arrays = make_picai(tmp_path)
    assert hasattr(voxlm, "load_image")
    it = ReportDataset(read_records("picai", tmp_path))[2]
    for key, seq in (("t2w", "t2w"), ("adc", "adc"), ("dwi", "hbv")):
        ref = arrays[("10005", seq)].transpose(2, 1, 0).astype(np.float32)[None]
        np.testing.assert_array_equal(it["sequences"][key].numpy(), ref, strict=True)
    assert it["sequence_paths"]["dwi"].endswith("_hbv.mha")


def test_picai_lesion_points_vs_scipy(tmp_path):
    from scipy import ndimage

    make_picai(tmp_path)
    m = np.zeros((8, 8, 6), np.uint8)
    m[1:4, 1:3, 0:2] = 2  # 12 voxels
    m[5:7, 5:8, 3:6] = 4  # 18 voxels (largest)
    m[7, 0, 5] = 3  # 1 voxel
    m[4, 3, 2] = 2  # touches the first lesion diagonally (26-connectivity)
    p = tmp_path / "csPCa_lesion_delineations/human_expert/resampled/10006_1000006.nii.gz"
    nib.save(nib.Nifti1Image(m, np.eye(4)), p)
    r = read_records("picai", tmp_path, points=True)[3]
    lab, n = ndimage.label(m > 0, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum(m > 0, lab, range(1, n + 1))
    ref = [
        list(ndimage.center_of_mass(m > 0, lab, i + 1)) for i in np.argsort(-sizes, kind="stable")
    ]
    assert n == 3 and len(r["points"]) == 3
    np.testing.assert_allclose(r["points"], ref, atol=1e-12)
    assert r["point"] == r["points"][0] and r["meta"]["point_unit"].startswith("voxel")
    assert "points" not in read_records("picai", tmp_path)[3]
