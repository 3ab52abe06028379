"""Generic manifest reader (CSV / JSONL) for a user's own data."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

import voxlm.datasets as D
from voxlm.datasets import ReportDataset, read_records
from voxlm.exceptions import ConfigError, DataError


def _vol(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).normal(size=(4, 3, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return data


def test_manifest_csv(tmp_path):
    res = D.dia_llama_results()
    _vol(tmp_path / "scans" / "a.nii.gz", 0)
    _vol(tmp_path / "scans" / "b.nii.gz", 1)
    _vol(tmp_path / "scans" / "c.nii.gz", 2)
    np.save(tmp_path / "scans" / "d.npy", np.zeros((1, 2, 3, 3), np.float32))
    rows = [
        {
            "id": "p1",
            "image": "scans/a.nii.gz",
            "findings": res.references[0],
            "impression": "No change.",
            "labels": "0;1;1",
            "point": "1;2;0.5",
            "split": "train",
            "site": "A",
        },
        {
            "id": "p2",
            "images": "scans/b.nii.gz;scans/c.nii.gz",
            "findings": res.references[1],
            "impression": "",
            "labels": "1;0;0",
            "point": "",
            "split": "val",
            "site": "B",
        },
        {
            "id": "p3",
            "image": str(tmp_path / "scans" / "d.npy"),
            "findings": res.references[2],
            "impression": "x",
            "labels": "0;0;0",
            "point": "",
            "split": "train",
            "site": "A",
        },
    ]
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "images", *list(rows[0])[2:]])
        w.writeheader()
        w.writerows(rows)
    tr = read_records("manifest", tmp_path, split="train", label_names=["a", "b", "c"])
    assert [r["id"] for r in tr] == ["p1", "p3"]
    r = tr[0]
    assert r["image"] == str(tmp_path / "scans" / "a.nii.gz") and r["split"] == "train"
    assert r["sections"] == {"findings": res.references[0], "impression": "No change."}
    assert r["report"] == res.references[0].strip() + "\n\nNo change."
    np.testing.assert_array_equal(r["labels"], [0, 1, 1], strict=True)
    assert r["labels"].dtype == np.int64 and r["label_names"] == ["a", "b", "c"]
    assert r["point"] == [1.0, 2.0, 0.5] and r["meta"] == {"site": "A"}
    assert tr[1]["image"] == str(tmp_path / "scans" / "d.npy")  # absolute path kept
    va = read_records("manifest", tmp_path / "manifest.csv", split="validation")
    assert va[0]["images"] == [
        str(tmp_path / "scans" / "b.nii.gz"),
        str(tmp_path / "scans" / "c.nii.gz"),
    ]
    assert va[0]["report"] == res.references[1].strip() and "point" not in va[0]
    item = ReportDataset(va)[0]
    assert [tuple(t.shape) for t in item["images"]] == [(1, 4, 3, 2)] * 2
    assert item["paths"] == va[0]["images"]
    np.testing.assert_array_equal(
        item["images"][1][0].numpy(),
        nib.load(va[0]["images"][1]).get_fdata(dtype=np.float32),
        strict=True,
    )
    npy = ReportDataset(tr)[1]["image"]
    assert tuple(npy.shape) == (1, 2, 3, 3)
    with pytest.raises(ConfigError, match="train, validation"):
        read_records("manifest", tmp_path, split="test")


def test_manifest_jsonl_sequences_and_label_columns(tmp_path):
    for s in ("t2w", "adc", "dwi"):
        _vol(tmp_path / "case1" / f"{s}.nii.gz", 3)
    lines = [
        {
            "id": "c1",
            "sequences": {"t2w": "case1/t2w.nii.gz", "adc": "case1/adc.nii.gz"},
            "dwi": "case1/dwi.nii.gz",
            "report": "Lesion in the left peripheral zone.",
            "pirads": 4,
            "point": [3, 2, 1],
            "cancer": 1,
            "bph": 0,
            "question": "Rate the lesion.",
        }
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (r,) = read_records(
        "manifest", tmp_path / "data.jsonl", split="test", label_columns=["cancer", "bph"]
    )
    assert r["split"] == "test"  # no split column: every row is in the split asked for
    assert r["sequences"] == {
        k: str(tmp_path / "case1" / f"{k}.nii.gz") for k in ("t2w", "adc", "dwi")
    }
    np.testing.assert_array_equal(r["labels"], [1, 0], strict=True)
    assert (
        r["label_names"] == ["cancer", "bph"] and r["pirads"] == 4 and r["point"] == [3.0, 2.0, 1.0]
    )
    assert r["question"] == "Rate the lesion." and "meta" not in r
    item = ReportDataset([r])[0]
    assert (
        set(item["sequences"]) == {"t2w", "adc", "dwi"} and item["sequence_paths"] == r["sequences"]
    )


def test_manifest_bad_input(tmp_path):
    _vol(tmp_path / "a.nii.gz", 0)
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": "ok", "image": "a.nii.gz"})
        + "\n"
        + json.dumps({"id": "gone", "image": "missing/b.nii.gz"})
        + "\n"
    )
    with pytest.raises(DataError, match=r"row 2 \(id 'gone'\).*missing/b\.nii\.gz"):
        read_records("manifest", tmp_path / "m.jsonl")
    (tmp_path / "n.jsonl").write_text(json.dumps({"id": "x", "report": "no image"}) + "\n")
    with pytest.raises(DataError, match="no image path"):
        read_records("manifest", tmp_path / "n.jsonl")
    with pytest.raises(DataError, match="expected the manifest file .*sub, but it does not exist"):
        read_records("manifest", tmp_path / "sub")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="manifest.csv"):
        read_records("manifest", tmp_path / "sub")
    with pytest.raises(ConfigError, match="unknown dataset format"):
        read_records("nope", tmp_path)
    # hand-made records: ReportDataset checks them at construction
    with pytest.raises(DataError, match=r"records\[1\] \(id 'b'\): image file .*nothere\.nii\.gz"):
        ReportDataset(
            [
                {"id": "a", "image": str(tmp_path / "a.nii.gz")},
                {"id": "b", "image": str(tmp_path / "nothere.nii.gz")},
            ]
        )


def test_manifest_bad_values(tmp_path):
    _vol(tmp_path / "a.nii.gz", 0)
    (tmp_path / "m.csv").write_text("id,image,labels\nx1,a.nii.gz,0;1\nx2,a.nii.gz,0;yes\n")
    with pytest.raises(DataError, match=r"row 3 \(id 'x2'\): expected numbers"):
        read_records("manifest", tmp_path / "m.csv")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "image": "a.nii.gz"}\n{"id": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_records("manifest", tmp_path / "m.jsonl")
