"""voxlm.synth chest CT in the M3D layout: M3D-Cap + M3D-VQA closed-ended questions whose answers
follow the planted ground truth, read back through the production m3d-cap / m3d-vqa readers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxlm import synth
from voxlm.datasets import read_records
from voxlm.synth import vqa as V


@pytest.fixture(scope="module")
def m3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("m3d") / "data"
    synth.chest_ct(
        root,
        14,
        seed=3,
        layout="m3d",
        prevalence={"pleural effusion": 0.5, "lung lesion": 0.5, "cardiomegaly": 0.4},
    )
    return root


def _truth(root, image_path):
    cid = image_path.rsplit("/", 1)[-1].removesuffix(".npy")
    return json.loads((root / "ground_truth" / f"{cid}.json").read_text())


def test_readers_read_the_layout(m3d):
    caps = {s: read_records("m3d-cap", m3d, split=s) for s in ("train", "validation", "test")}
    assert sum(len(v) for v in caps.values()) == 14
    vqa = read_records("m3d-vqa", m3d, split="train")
    assert vqa and {r["question_type"] for r in vqa} <= {"abnormality", "location"}
    x = np.load(caps["train"][0]["image"])
    assert x.shape == (1, 32, 64, 64) and x.dtype == np.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    truth = _truth(m3d, caps["train"][0]["image"])
    assert caps["train"][0]["report"] == truth["report"].strip()


def test_answers_follow_the_ground_truth(m3d):
    n_yes = n_no = 0
    for split in ("train", "validation", "test"):
        for r in read_records("m3d-vqa", m3d, split=split):
            ch = r["choices"]
            assert len(set(ch.values())) == 4 and ch[r["answer"]] == r["answer_text"]
            t = _truth(m3d, r["image"])
            present = {n for n, v in zip(t["label_names"], t["labels"]) if v}
            first = {}
            for f in t["findings"]:
                first.setdefault(f["label"], f)
            q = r["question"]
            if q.startswith("Is there "):
                label = next(c for c, w in V.VISIBLE.items() if q == f"Is there {w} in this CT?")
                assert r["answer_text"] == ("Yes" if label in present else "No")
                n_yes += r["answer_text"] == "Yes"
                n_no += r["answer_text"] == "No"
            elif q == "Which abnormality is seen in this CT?":
                names = {V.ABNORMALITY_NAMES[c] for c in present if c in V.ABNORMALITY_NAMES}
                assert r["answer_text"] in names
                assert not (set(ch.values()) - {r["answer_text"]}) & names
            elif q == "On which side is the pleural effusion?":
                assert r["answer_text"] == V.SIDE_CHOICES[first["pleural effusion"]["side"]]
            elif q == "In which lobe is the lung nodule or mass?":
                assert r["answer_text"].lower() == f"{first['lung lesion']['lobe']} lobe"
            elif q.startswith("What is the greatest diameter"):
                mm = max(first["lung lesion"]["size_mm"])
                assert r["answer_text"] == V._size_bin(mm)
            elif q == "How large is the pleural effusion?":
                assert r["answer_text"].lower() == first["pleural effusion"]["amount"]
    assert n_yes >= 5 and n_no >= 5  # one present and one absent finding asked per case


def test_deterministic(m3d, tmp_path):
    again = synth.chest_ct(
        tmp_path / "again",
        14,
        seed=3,
        layout="m3d",
        prevalence={"pleural effusion": 0.5, "lung lesion": 0.5, "cardiomegaly": 0.4},
    )
    for name in ("M3D_VQA_train.csv", "M3D_VQA_test.csv"):
        assert (again / "M3D-VQA" / name).read_bytes() == (m3d / "M3D-VQA" / name).read_bytes()


def test_bad_layout_is_named(tmp_path):
    from voxlm.exceptions import ConfigError

    with pytest.raises(ConfigError, match="'ctrg-chest', 'ct-rate' or 'm3d', got 'm3d-vqa'"):
        synth.chest_ct(tmp_path / "x", 2, layout="m3d-vqa")
