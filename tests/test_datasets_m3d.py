"""M3D-Cap and M3D-VQA readers (layout of BAAI-DCAI/M3D LaMed/src/dataset/multi_dataset.py and
Data/process/m3d_cap_data_prepare.py) on miniature copies."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import voxlm.datasets as D
from voxlm.datasets import ReportDataset, read_records
from voxlm.datasets.m3d import VQA_COLUMNS, vqa_answer, vqa_question
from voxlm.exceptions import ConfigError, DataError


def make_m3d_cap(root):
    res = D.dia_llama_results()
    rng = np.random.default_rng(3)
    splits = {
        "train": ["ct_case/000006", "ct_quizze/000102"],
        "validation": ["ct_case/000011"],
        "test": ["ct_case/000020"],
    }
    data, truth = {}, {}
    k = 0
    for split, cases in splits.items():
        data[split] = []
        for c in cases:
            d = root / "M3D_Cap_npy" / c
            d.mkdir(parents=True)
            # the real volumes are float32 [1, 32, 256, 256] in [0, 1]; one at full size, others
            # small
            shape = (1, 32, 256, 256) if k == 0 else (1, 4, 16, 16)
            vol = rng.random(shape, dtype=np.float32)
            np.save(d / "Axial_C__portal_venous_phase.npy", vol)
            (d / "text.txt").write_text(res.references[k])
            data[split].append(
                {
                    "image": f"M3D_Cap_npy/{c}/Axial_C__portal_venous_phase.npy",
                    "text": f"M3D_Cap_npy/{c}/text.txt",
                }
            )
            truth[f"M3D_Cap_npy/{c}/Axial_C__portal_venous_phase"] = (res.references[k], vol)
            k += 1
    (root / "M3D_Cap_npy" / "M3D_Cap.json").write_text(json.dumps(data))
    return splits, truth


def test_m3d_cap_records_and_npy_loading(tmp_path):
    splits, truth = make_m3d_cap(tmp_path)
    for split in ("train", "validation", "test"):
        recs = read_records("m3d-cap", tmp_path, split=split)
        assert len(recs) == len(splits[split])
        for r in recs:
            text, vol = truth[r["id"]]
            assert r["report"] == text.strip() and r["split"] == split
            assert r["image"] == str(tmp_path / (r["id"] + ".npy"))
    it = ReportDataset(read_records("m3d-cap", tmp_path))[0]
    assert it["image"].dtype == torch.float32 and tuple(it["image"].shape) == (1, 32, 256, 256)
    np.testing.assert_array_equal(it["image"].numpy(), np.load(it["path"]), strict=True)


def test_m3d_cap_bad_input(tmp_path):
    make_m3d_cap(tmp_path)
    with pytest.raises(ConfigError, match="train, validation, test"):
        read_records("m3d-cap", tmp_path, split="test5k")
    (tmp_path / "M3D_Cap_npy/ct_quizze/000102/text.txt").unlink()
    with pytest.raises(DataError, match=r"train\[1\].*000102/text\.txt does not exist"):
        read_records("m3d-cap", tmp_path)
    (tmp_path / "M3D_Cap_npy/ct_case/000011/Axial_C__portal_venous_phase.npy").unlink()
    with pytest.raises(
        DataError, match=r"row 0 .*000011/Axial_C__portal_venous_phase\.npy does not exist"
    ):
        read_records("m3d-cap", tmp_path, split="validation")
    (tmp_path / "M3D_Cap_npy/M3D_Cap.json").unlink()
    with pytest.raises(DataError, match="M3D_Cap.json"):
        read_records("m3d-cap", tmp_path)


ROWS = [
    # Image Path, Text, Question Type, Question, Choice A..D, Answer, Answer Choice
    (
        "ct_case/000006/Axial_C__portal_venous_phase.npy",
        None,
        "1",
        "In which plane is the image scanned?",
        "Sagittal plane",
        "Coronal plane",
        "Axial plane",
        "Oblique plane",
        "Axial plane",
        "C",
    ),
    (
        "ct_case/000006/Axial_C__portal_venous_phase.npy",
        None,
        "2",
        "Which CT phase is this image?",
        "Non-contrast",
        "Arterial phase",
        "Portal venous phase",
        "Delayed phase",
        "Portal venous phase",
        "C",
    ),
    (
        "ct_quizze/000102/Axial_non_contrast.npy",
        None,
        "4",
        "What abnormality is seen in the lungs?",
        "Solid nodules",
        "Pneumothorax",
        "Pleural effusion",
        "Consolidation",
        "Solid nodules",
        "A",
    ),
    (
        "ct_quizze/000102/Axial_non_contrast.npy",
        None,
        "5",
        "Where is the largest nodule located?",
        "Left lower lobe",
        "Posterior segment of the right upper lobe",
        "Middle lobe",
        "Lingula",
        "Posterior segment of the right upper lobe",
        "B",
    ),
]


def make_m3d_vqa(root):
    res = D.dia_llama_results()
    (root / "M3D-VQA").mkdir(parents=True)
    for p in {r[0] for r in ROWS}:
        (root / "M3D_Cap_npy" / p).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / "M3D_Cap_npy" / p, np.zeros((1, 2, 4, 4), np.float32))
    for split in ("train", "val", "test", "test5k"):
        with open(root / "M3D-VQA" / f"M3D_VQA_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(VQA_COLUMNS)
            for i, r in enumerate(ROWS):
                w.writerow(["M3D_Cap_npy/" + r[0], res.references[i], *r[2:]])


def test_m3d_vqa_records_close_and_open(tmp_path):
    make_m3d_vqa(tmp_path)
    res = D.dia_llama_results()
    for split in ("train", "validation", "test", "test5k"):
        recs = read_records("m3d-vqa", tmp_path, split=split)
        assert len(recs) == 4 and all(r["split"] == split for r in recs)
    r = read_records("m3d-vqa", tmp_path, split="test5k")[3]
    assert r["image"] == str(tmp_path / "M3D_Cap_npy" / ROWS[3][0])
    assert (
        r["question_type"] == "location" and r["answer"] == "B" and r["report"] == res.references[3]
    )
    assert r["choices"] == {
        "A": "Left lower lobe",
        "B": "Posterior segment of the right upper lobe",
        "C": "Middle lobe",
        "D": "Lingula",
    }
    # VQADataset.__getitem__ text, close- and open-ended
    assert vqa_question(r) == (
        "Where is the largest nodule located? Choices: A. Left lower lobe B. Posterior "
        "segment of the right upper lobe C. Middle lobe D. Lingula"
    )
    assert vqa_answer(r) == "B. Posterior segment of the right upper lobe"
    assert vqa_question(r, close_ended=False) == "Where is the largest nodule located?"
    assert vqa_answer(r, close_ended=False) == "Posterior segment of the right upper lobe"


def test_m3d_vqa_bad_input(tmp_path):
    make_m3d_vqa(tmp_path)
    with pytest.raises(ConfigError, match="train, validation, test, test5k"):
        read_records("m3d-vqa", tmp_path, split="dev5")
    (tmp_path / "M3D_Cap_npy" / ROWS[2][0]).unlink()
    with pytest.raises(
        DataError, match=r"M3D_VQA_train\.csv row 4 .*Axial_non_contrast\.npy does not exist"
    ):
        read_records("m3d-vqa", tmp_path)
    (tmp_path / "M3D-VQA" / "M3D_VQA_val.csv").unlink()
    with pytest.raises(DataError, match="M3D_VQA_val.csv"):
        read_records("m3d-vqa", tmp_path, split="val")
