"""CTRG-Chest reader (layout of Dia-LLaMA's src/Dataset/my_dataset/CTRG_dataset.py) on a miniature
copy built from the real bundled label table and the real released reports."""

from __future__ import annotations

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch

import voxlm.datasets as D
from voxlm.datasets import open_dataset, read_records
from voxlm.datasets.ctrg_chest import CONDITIONS, diagnostic_prompt
from voxlm.exceptions import ConfigError, DataError

SPLITS = {"train": [0, 1, 2], "val": [3], "test": [4, 5]}


def make_ctrg(root, volume_dir="CTRG-Chest-548K_volume", shape=(6, 5, 4)):
    """annotation.json + CTRG_finding_labels.csv (real rows) + small NIfTI volumes."""
    res = D.dia_llama_results()
    ids, codes, names = D.ctrg_finding_labels()
    rows = {int(i): c for i, c in zip(ids, codes)}
    chosen = [int(i) for i in res.ids[:6]]
    reports = dict(zip((int(i) for i in res.ids), res.references))
    ann = {
        k: [{"id": chosen[j], "finding": reports[chosen[j]]} for j in v] for k, v in SPLITS.items()
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotation.json").write_text(json.dumps(ann))
    with open(root / "CTRG_finding_labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *names])
        for cid in chosen:
            w.writerow([cid, *rows[cid].tolist()])
    (root / volume_dir).mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    vols = {}
    for cid in chosen:
        data = rng.normal(size=shape).astype(np.float32)
        nib.save(
            nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.0, 1.0])),
            root / volume_dir / f"{cid}.nii.gz",
        )
        vols[cid] = data
    return chosen, rows, reports, vols


def test_ctrg_records_match_the_layout(tmp_path):
    chosen, rows, reports, _ = make_ctrg(tmp_path)
    for split, key in (("train", "train"), ("validation", "val"), ("val", "val"), ("test", "test")):
        recs = read_records("ctrg-chest", tmp_path, split=split)
        assert [int(r["id"]) for r in recs] == [chosen[j] for j in SPLITS[key]]
        for r in recs:
            cid = int(r["id"])
            assert r["split"] == {"val": "validation"}.get(key, key)
            assert r["image"] == str(tmp_path / "CTRG-Chest-548K_volume" / f"{cid}.nii.gz")
            assert r["report"] == reports[cid]
            np.testing.assert_array_equal(r["label_codes"], rows[cid], strict=True)
            # the reference keeps only code 1 as positive
            np.testing.assert_array_equal(
                r["labels"], (rows[cid] == 1).astype(np.int64), strict=True
            )
            assert r["labels"].dtype == np.int64 and r["label_names"] == CONDITIONS


def test_ctrg_volumes_folder_alias_and_loading_vs_nibabel(tmp_path):
    chosen, _, _, vols = make_ctrg(tmp_path, volume_dir="volumes")
    ds = open_dataset("ctrg-chest", tmp_path, split="test")
    item = ds[0]
    cid = int(item["id"])
    assert item["path"] == str(tmp_path / "volumes" / f"{cid}.nii.gz")
    ref = nib.load(item["path"]).get_fdata(dtype=np.float32)[None]
    assert item["image"].dtype == torch.float32 and tuple(item["image"].shape) == (1, 6, 5, 4)
    np.testing.assert_array_equal(item["image"].numpy(), ref, strict=True)  # float32 NIfTI: exact
    np.testing.assert_array_equal(item["image"][0].numpy(), vols[cid], strict=True)
    assert item["labels"].dtype == torch.int64


def test_diagnostic_prompt_format_matches_released_questions():
    """The released results hold the prompt the model saw: rebuilding it from its own
    positive/negative states with diagnostic_prompt gives the same text, character for character."""
    res = D.dia_llama_results()
    for q in res.prompts:
        text = re.sub(r"^.*</image>", "", q)
        states = re.findall(r'The "([^"]+)" is (positive|negative)\. ', text)
        assert [s[0] for s in states] == CONDITIONS
        labels = np.asarray([1 if s[1] == "positive" else 0 for s in states])
        assert diagnostic_prompt(labels) == text


def test_ctrg_bad_input(tmp_path):
    chosen, *_ = make_ctrg(tmp_path)
    with pytest.raises(ConfigError, match="train, validation, test"):
        read_records("ctrg-chest", tmp_path, split="dev2")
    (tmp_path / "CTRG-Chest-548K_volume" / f"{chosen[1]}.nii.gz").unlink()
    with pytest.raises(DataError, match=rf"row 1 .*{chosen[1]}\.nii\.gz"):
        read_records("ctrg-chest", tmp_path, split="train")
    (tmp_path / "CTRG_finding_labels.csv").unlink()
    with pytest.raises(DataError, match="CTRG_finding_labels.csv"):
        read_records("ctrg-chest", tmp_path, split="test")
    (tmp_path / "annotation.json").unlink()
    with pytest.raises(DataError, match="annotation.json"):
        read_records("ctrg-chest", tmp_path, split="test")


def test_ctrg_missing_volume_folder(tmp_path):
    make_ctrg(tmp_path, volume_dir="elsewhere")
    with pytest.raises(DataError, match="CTRG-Chest-548K_volume"):
        read_records("ctrg-chest", tmp_path)
    assert len(read_records("ctrg-chest", tmp_path, volume_dir=tmp_path / "elsewhere")) == 3


def test_ctrg_bad_tables(tmp_path):
    chosen, *_ = make_ctrg(tmp_path)
    ann = json.loads((tmp_path / "annotation.json").read_text())
    ann["test"].append({"id": 99999, "finding": "Both lungs are clear."})
    (tmp_path / "annotation.json").write_text(json.dumps(ann))
    with pytest.raises(
        DataError,
        match=r"test\[2\] \(id 99999\): no row with this id in .*CTRG_finding_labels\.csv",
    ):
        read_records("ctrg-chest", tmp_path, split="test")
    (tmp_path / "annotation.json").write_text('{"train": [')
    with pytest.raises(DataError, match="annotation.json is not valid JSON"):
        read_records("ctrg-chest", tmp_path)
    (tmp_path / "annotation.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DataError, match=r"has no 'train' list .*\['training'\]"):
        read_records("ctrg-chest", tmp_path)
