"""M3D-VQA-like closed-ended questions from the synthetic chest-CT ground truth.

Each question is answerable from the image alone and its answer comes from the planted findings
(``ground_truth/<id>.json``), never from the report text: presence (yes / no, balanced: one
planted and one absent finding per case), which abnormality is seen, the side of an effusion /
nodule / consolidation / pneumothorax, the lobe of a lung nodule, the size of the largest nodule
and the amount of an effusion. Four choices A-D in a seeded random order, as M3D-VQA's CSVs
(``Question Type`` 4 abnormality, 5 location). :func:`write_m3d` writes the M3D layout that
``read_records("m3d-cap" | "m3d-vqa", root)`` reads.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..exceptions import ConfigError
from .writers import write_csv

#: findings a question may ask about (visible on the synthetic CT) and how a question names them
VISIBLE = {
    "pleural effusion": "a pleural effusion",
    "cardiomegaly": "cardiomegaly (an enlarged heart)",
    "lung lesion": "a lung nodule or mass",
    "consolidation": "a consolidation",
    "atelectasis": "atelectasis",
    "pneumothorax": "a pneumothorax",
    "support devices": "a support device (tube, catheter or pacemaker)",
    "enlarged cardiomediastinum": "enlarged mediastinal lymph nodes",
}
ABNORMALITY_NAMES = {
    "pleural effusion": "Pleural effusion",
    "cardiomegaly": "Cardiomegaly",
    "lung lesion": "Lung nodule or mass",
    "consolidation": "Consolidation",
    "atelectasis": "Atelectasis",
    "pneumothorax": "Pneumothorax",
    "support devices": "Support device",
    "enlarged cardiomediastinum": "Mediastinal lymphadenopathy",
}
PRESENCE_CHOICES = ("Yes", "No", "Cannot be determined", "Only with contrast")
SIDE_CHOICES = {"right": "Right", "left": "Left", "both": "Both sides"}
SIZE_BINS = ((10.0, "Smaller than 10 mm"), (20.0, "10 to 20 mm"), (30.0, "20 to 30 mm"))
SIZE_LAST = "30 mm or larger"
AMOUNTS = ("Small", "Moderate", "Large")
#: M3D-VQA ``Question Type`` codes
ABNORMALITY, LOCATION = 4, 5
COLUMNS = [
    "Image Path",
    "Text",
    "Question Type",
    "Question",
    "Choice A",
    "Choice B",
    "Choice C",
    "Choice D",
    "Answer",
    "Answer Choice",
]


def _mc(
    rng: np.random.Generator, qtype: int, question: str, answer: str, distractors: Sequence[str]
) -> dict[str, Any]:
    opts = [answer, *[d for d in distractors if d != answer][:3]]
    if len(opts) != 4:
        raise ConfigError(f"question {question!r}: expected 4 choices, got {opts}")
    order = rng.permutation(4)
    choices = {k: opts[j] for k, j in zip("ABCD", order)}
    letter = next(k for k, v in choices.items() if v == answer)
    return {
        "question_type": qtype,
        "question": question,
        "choices": choices,
        "answer": letter,
        "answer_text": answer,
    }


def _size_bin(mm: float) -> str:
    for hi, name in SIZE_BINS:
        if mm < hi:
            return name
    return SIZE_LAST


def case_questions(truth: Mapping[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
    """The questions of one case from its ground truth (``findings``, ``labels``,
    ``label_names``): ``[{"question_type", "question", "choices" {A..D}, "answer" (letter),
    "answer_text"}]``."""
    names = list(truth["label_names"])
    present = {n for n, v in zip(names, truth["labels"]) if int(v) == 1}
    seen = [c for c in VISIBLE if c in present]
    absent = [c for c in VISIBLE if c not in present]
    by_label: dict[str, dict[str, Any]] = {}
    for f in truth["findings"]:
        by_label.setdefault(f["label"], f)
    out: list[dict[str, Any]] = []
    rest = [c for c in PRESENCE_CHOICES if c not in ("Yes", "No")]
    if seen:
        c = seen[int(rng.integers(len(seen)))]
        q = f"Is there {VISIBLE[c]} in this CT?"
        out.append(_mc(rng, ABNORMALITY, q, "Yes", ["No", *rest]))
    if absent:
        c = absent[int(rng.integers(len(absent)))]
        q = f"Is there {VISIBLE[c]} in this CT?"
        out.append(_mc(rng, ABNORMALITY, q, "No", ["Yes", *rest]))
    if seen and len(absent) >= 3:
        c = seen[int(rng.integers(len(seen)))]
        wrong = [ABNORMALITY_NAMES[a] for a in rng.permutation(absent)[:3]]
        out.append(
            _mc(
                rng,
                ABNORMALITY,
                "Which abnormality is seen in this CT?",
                ABNORMALITY_NAMES[c],
                wrong,
            )
        )
    for label, what in (
        ("pleural effusion", "the pleural effusion"),
        ("lung lesion", "the lung nodule or mass"),
        ("consolidation", "the consolidation"),
        ("pneumothorax", "the pneumothorax"),
    ):
        f = by_label.get(label)
        if f is None or f.get("side") not in SIDE_CHOICES:
            continue
        ans = SIDE_CHOICES[f["side"]]
        others = [v for v in SIDE_CHOICES.values() if v != ans] + ["Neither side"]
        out.append(_mc(rng, LOCATION, f"On which side is {what}?", ans, others))
    f = by_label.get("lung lesion")
    if f is not None and f.get("lobe") in ("upper", "middle", "lower"):
        ans = f"{f['lobe'].capitalize()} lobe"
        others = [f"{x} lobe" for x in ("Upper", "Middle", "Lower") if f"{x} lobe" != ans]
        out.append(
            _mc(
                rng,
                LOCATION,
                "In which lobe is the lung nodule or mass?",
                ans,
                [*others, "Main bronchus"],
            )
        )
    if f is not None and f.get("size_mm"):
        ans = _size_bin(float(max(f["size_mm"])))
        bins = [name for _, name in SIZE_BINS] + [SIZE_LAST]
        out.append(
            _mc(
                rng,
                ABNORMALITY,
                "What is the greatest diameter of the largest lung nodule or mass?",
                ans,
                [b for b in bins if b != ans],
            )
        )
    f = by_label.get("pleural effusion")
    if f is not None and f.get("amount") in ("small", "moderate", "large"):
        ans = f["amount"].capitalize()
        out.append(
            _mc(
                rng,
                ABNORMALITY,
                "How large is the pleural effusion?",
                ans,
                [a for a in AMOUNTS if a != ans] + ["No effusion"],
            )
        )
    return out


def m3d_volume(hu: np.ndarray, window: tuple[float, float] = (-1000.0, 1000.0)) -> np.ndarray:
    """M3D's preprocessed volume from a synthetic CT ``[X, Y, Z]`` HU: ``[1, Z, Y, X]`` float32
    in [0, 1] (clipped to ``window``, min-max over it; M3D's own data prepare normalises each
    volume min-max and resizes to 32x256x256, which the recipe's transform does here)."""
    lo, hi = window
    a = (np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - lo) / (hi - lo)
    return np.ascontiguousarray(a.transpose(2, 1, 0)[None]).astype(np.float32)


def write_m3d(
    root: pathlib.Path,
    cases: Sequence[Any],
    split: Sequence[int],
    seed: int,
) -> dict[str, int]:
    """M3D-Cap (``M3D_Cap.json`` + ``npy/<id>.npy`` + ``text/<id>.txt``) and M3D-VQA
    (``M3D-VQA/M3D_VQA_{train,val,test}.csv``) for ``cases`` (voxlm.synth.chest_ct ``Case``);
    returns the number of questions per split."""
    (root / "npy").mkdir(parents=True, exist_ok=True)
    (root / "text").mkdir(parents=True, exist_ok=True)
    cap: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    rows: dict[str, list[list[Any]]] = {"train": [], "val": [], "test": []}
    rng = np.random.default_rng([int(seed), 41])
    for c, s in zip(cases, split):
        img, txt = f"npy/{c.id}.npy", f"text/{c.id}.txt"
        np.save(root / img, m3d_volume(c.hu))
        (root / txt).write_text(c.report + "\n", encoding="utf-8")
        cap[("train", "validation", "test")[s]].append({"image": img, "text": txt})
        truth = {
            "labels": c.labels.tolist(),
            "label_names": list(_label_names()),
            "findings": c.findings,
        }
        for q in case_questions(truth, rng):
            ch = q["choices"]
            rows[("train", "val", "test")[s]].append(
                [
                    img,
                    c.report,
                    q["question_type"],
                    q["question"],
                    ch["A"],
                    ch["B"],
                    ch["C"],
                    ch["D"],
                    q["answer_text"],
                    q["answer"],
                ]
            )
    (root / "M3D_Cap.json").write_text(json.dumps(cap, indent=1))
    for s, r in rows.items():
        write_csv(root / "M3D-VQA" / f"M3D_VQA_{s}.csv", COLUMNS, r)
    return {s: len(r) for s, r in rows.items()}


def _label_names() -> tuple[str, ...]:
    from .chest_ct import CONDITIONS

    return tuple(CONDITIONS)
