"""AMOS-MM reader (release JSON as read by bowang-lab/AMOS-MM-Solution) on a miniature copy."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

import voxlm.datasets as D
from voxlm.datasets import open_dataset, read_records
from voxlm.datasets.m3d import vqa_answer, vqa_question
from voxlm.exceptions import ConfigError, DataError


def _sentences(text):
    return [s.strip() + "." for s in re.split(r"\.\s*", text) if s.strip()]


def make_amos(root):
    res = D.dia_llama_results()
    rng = np.random.default_rng(2)
    (root / "imagesTr").mkdir(parents=True)
    (root / "imagesVa").mkdir()
    items = {"training": [], "validation": []}
    vqa = {"training": [], "validation": []}
    regions = {}
    for k, (key, folder, num) in enumerate(
        [
            ("training", "imagesTr", "0001"),
            ("training", "imagesTr", "0002"),
            ("validation", "imagesVa", "5001"),
        ]
    ):
        name = f"amos_{num}.nii.gz"
        shape = (4, 4, 3, 2) if num == "5001" else (4, 4, 3)  # some AMOS-MM volumes are 4-D
        nib.save(
            nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), np.eye(4)),
            root / folder / name,
        )
        sents = _sentences(res.references[k])
        find = {
            "chest": " ".join(sents[:2]),
            "abdomen": " ".join(sents[2:4]),
            "pelvis": "" if k == 1 else " ".join(sents[4:5]),
        }
        regions[f"amos_{num}"] = find
        items[key].append(
            {
                "image": f"./{folder}/{name}",
                "meta": {"spacing": [0.8, 0.8, 5.0]},
                "labels": {
                    "report": {
                        "findings": find,
                        "impression": {r: [v[:30]] if v else [] for r, v in find.items()},
                    }
                },
            }
        )
        vqa[key].append(
            {
                "image": f"./{folder}/{name}",
                "labels": {
                    "qa": [
                        {
                            "question": "Is there a nodule in the right upper lobe?",
                            "options": {
                                "A": "Yes",
                                "B": "No",
                                "C": "Cannot be determined",
                                "D": "Calcified",
                            },
                            "answer": "A",
                            "type": "abnormality",
                        },
                        {
                            "question": "Which organ shows low density shadows?",
                            "options": {
                                "A": "Spleen",
                                "B": "Liver",
                                "C": "Kidney",
                                "D": "Pancreas",
                            },
                            "answer": "B",
                            "type": "organ",
                        },
                    ]
                },
            }
        )
    (root / "report_generation_train_val.json").write_text(json.dumps(items))
    (root / "vqa_train_val.json").write_text(json.dumps(vqa))
    return regions


def test_amos_report_records(tmp_path):
    regions = make_amos(tmp_path)
    tr = read_records("amos-mm", tmp_path, split="train")
    assert [r["id"] for r in tr] == ["amos_0001", "amos_0002"]
    r = tr[1]
    assert r["image"] == str(tmp_path / "imagesTr" / "amos_0002.nii.gz") and r["split"] == "train"
    assert r["sections"] == regions["amos_0002"]
    assert r["report"] == regions["amos_0002"]["chest"] + "\n" + regions["amos_0002"]["abdomen"]
    assert r["meta"]["spacing"] == [0.8, 0.8, 5.0] and r["meta"]["impression"]["pelvis"] == ""
    each = read_records("amos-mm", tmp_path, split="train", region="each")
    assert [r["id"] for r in each] == [
        "amos_0001/chest",
        "amos_0001/abdomen",
        "amos_0001/pelvis",
        "amos_0002/chest",
        "amos_0002/abdomen",
    ]  # empty pelvis skipped
    assert all(r["report"] == regions[r["id"].split("/")[0]][r["region"]] for r in each)
    chest = read_records("amos-mm", tmp_path, split="validation", region="chest")
    assert [(r["id"], r["region"]) for r in chest] == [("amos_5001/chest", "chest")]


def test_amos_vqa_records_and_m3d_prompt(tmp_path):
    make_amos(tmp_path)
    recs = read_records("amos-mm", tmp_path, split="validation", task="vqa")
    assert [r["id"] for r in recs] == ["amos_5001/q0", "amos_5001/q1"]
    r = recs[1]
    assert r["answer"] == "B" and r["answer_text"] == "Liver" and r["question_type"] == "organ"
    assert r["image"] == str(tmp_path / "imagesVa" / "amos_5001.nii.gz")
    # AMOSVQADataset's prompt pieces
    assert vqa_question(r) == (
        "Which organ shows low density shadows? Choices: A. Spleen B. Liver C. Kidney D. Pancreas"
    )
    assert vqa_answer(r) == "B. Liver"


def test_amos_4d_volume_loads_channel_first(tmp_path):
    make_amos(tmp_path)
    it = open_dataset("amos-mm", tmp_path, split="validation")[0]
    ref = nib.load(it["path"]).get_fdata(dtype=np.float32)
    assert tuple(it["image"].shape) == (2, 4, 4, 3)
    np.testing.assert_array_equal(it["image"].numpy(), np.moveaxis(ref, -1, 0), strict=True)


def test_amos_bad_input(tmp_path):
    make_amos(tmp_path)
    with pytest.raises(ConfigError, match="train, validation"):
        read_records("amos-mm", tmp_path, split="test")
    with pytest.raises(ConfigError, match="task"):
        read_records("amos-mm", tmp_path, task="seg")
    with pytest.raises(ConfigError, match="region"):
        read_records("amos-mm", tmp_path, region="head")
    (tmp_path / "imagesTr" / "amos_0002.nii.gz").unlink()
    with pytest.raises(
        DataError, match=r"row 1 .*amos_0002.*imagesTr/amos_0002\.nii\.gz does not exist"
    ):
        read_records("amos-mm", tmp_path)
    (tmp_path / "vqa_train_val.json").unlink()
    with pytest.raises(DataError, match="vqa_train_val.json"):
        read_records("amos-mm", tmp_path, task="vqa")
