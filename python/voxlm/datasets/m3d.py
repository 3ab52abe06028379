"""M3D-Cap and M3D-VQA (M3D-Data, used by M3D-LaMed).

Source: BAAI-DCAI/M3D, ``LaMed/src/dataset/multi_dataset.py`` (``CapDataset``, ``VQADataset``),
``LaMed/src/train/train.py`` (defaults ``data_root="./Data/data/"``,
``cap_data_path=".../M3D_Cap_npy/M3D_Cap.json"``, ``vqa_data_*_path=".../M3D-VQA/M3D_VQA_{train,
val,test}.csv"``) and ``Data/process/m3d_cap_data_prepare.py`` (volumes saved as float32
``[1, 32, 256, 256]`` in [0, 1] after CropForeground + Resize, reports to ``text.txt``):

* M3D-Cap: ``M3D_Cap.json`` = ``{"train" | "validation" | "test": [{"image": <npy path>, "text":
  <txt path>}]}``, both paths relative to the data root; the report is the text file's content.
* M3D-VQA: ``M3D_VQA_{train,val,test,test5k}.csv`` with columns Image Path (relative to the data
  root), Text, Question Type (1 plane, 2 phase, 3 organ, 4 abnormality, 5 location), Question,
  Choice A..D, Answer, Answer Choice.

``root`` is the data root; the JSON/CSVs are looked for in ``root``, ``root/M3D_Cap_npy`` and
``root/M3D-VQA``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

from ..exceptions import DataError
from ._common import (
    PathLike,
    canonical_split,
    check_paths,
    first_existing,
    need_list,
    read_csv,
    read_json,
)
from .registry import register_reader

VQA_COLUMNS = [
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
QUESTION_TYPES = {1: "plane", 2: "phase", 3: "organ", 4: "abnormality", 5: "location"}
_VQA_FILES = {"train": "train", "validation": "val", "test": "test", "test5k": "test5k"}


@register_reader("m3d-cap")
def read_m3d_cap(
    root: PathLike,
    split: str = "train",
    json_path: PathLike | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Records ``{"id", "split", "image" (.npy), "report" (the text file), "meta": {"text_path"}}``
    of M3D-Cap's ``train`` | ``validation`` | ``test`` list (``M3D_Cap.json``)."""
    fmt = "m3d-cap"
    root = pathlib.Path(root)
    s = canonical_split(split, ["train", "validation", "test"], fmt)
    jp = (
        pathlib.Path(json_path)
        if json_path is not None
        else first_existing(
            [root / "M3D_Cap.json", root / "M3D_Cap_npy" / "M3D_Cap.json"], fmt, "M3D_Cap.json"
        )
    )
    data = read_json(jp, fmt)
    if not isinstance(data, dict) or s not in data:
        have = list(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{fmt}: {jp} has no {s!r} list; it has {have}")
    records = []
    for i, item in enumerate(need_list(data, s, jp, fmt)):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("image"), str)
            and isinstance(item.get("text"), str)
        ):
            raise DataError(
                f"{fmt}: {jp} {s}[{i}]: expected {{'image', 'text'}}, got {item!r:.200}"
            )
        # paths are relative to the data root (M3D's train.py joins them to data_root); copies
        # whose JSON sits in M3D_Cap_npy/ with paths relative to that folder are read as well
        bases = (root, jp.parent, root / "M3D_Cap_npy")
        base = next(
            (b for b in bases if (b / item["text"]).is_file()),
            next((b for b in bases if (b / item["image"]).exists()), root),
        )
        img, txt = base / item["image"], base / item["text"]
        rid = str(pathlib.PurePosixPath(item["image"]).with_suffix(""))
        if not item["text"].strip().lower().endswith(".txt"):
            # a copy whose JSON holds the caption itself rather than the path of its text.txt
            report, meta = item["text"].strip(), {}
        elif not txt.is_file():
            raise DataError(f"{fmt}: {jp} {s}[{i}] (id {rid!r}): text file {txt} does not exist")
        else:
            try:
                report = txt.read_text(encoding="utf-8-sig", errors="replace").strip()
            except OSError as e:
                raise DataError(
                    f"{fmt}: {jp} {s}[{i}] (id {rid!r}): cannot read {txt}: {e}"
                ) from None
            meta = {"text_path": str(txt)}
        records.append(
            {
                "id": rid,
                "split": s,
                "image": str(img),
                "report": report.replace("\r\n", "\n"),
                "meta": meta,
            }
        )
    if check_files:
        check_paths(records, fmt, f"{jp} {s}")
    return records


def answer_letter(v: Any, letters: str = "ABCD") -> str | None:
    """The choice letter of an answer cell: ``"A"``, ``" a "``, ``"A."``, ``"(A)"``, ``"A. liver"``
    -> ``"A"``; None when it names none of ``letters``."""
    t = str(v if v is not None else "").strip()
    t = t[1:].lstrip() if t.startswith("(") else t
    if not t or t[0].upper() not in letters:
        return None
    rest = t[1:]
    if rest and not (rest[0] in ".):" or rest[0].isspace()):
        return None  # a word that starts with the letter ("Axial"), not a choice
    return t[0].upper()


def vqa_question(record: Mapping[str, Any], close_ended: bool = True) -> str:
    """M3D's question text: ``Question`` + `` Choices: A. .. B. .. C. .. D. ..`` when close-ended
    (``VQADataset.__getitem__``; the image tokens and a space go before it)."""
    q = str(record["question"])
    if close_ended:
        c = record["choices"]
        q += " " + "Choices: A. {} B. {} C. {} D. {}".format(c["A"], c["B"], c["C"], c["D"])
    return q


def vqa_answer(record: Mapping[str, Any], close_ended: bool = True) -> str:
    """M3D's answer text: ``"{letter}. {answer}"`` close-ended, the answer text open-ended."""
    return (
        f"{record['answer']}. {record['answer_text']}"
        if close_ended
        else str(record["answer_text"])
    )


@register_reader("m3d-vqa")
def read_m3d_vqa(
    root: PathLike, split: str = "train", csv_path: PathLike | None = None, check_files: bool = True
) -> list[dict[str, Any]]:
    """Records of ``M3D_VQA_{train,val,test,test5k}.csv``: ``{"id", "split", "image", "question",
    "choices" {"A".."D"}, "answer" (letter), "answer_text", "question_type" (plane, phase, organ,
    abnormality, location), "report" (the Text column), "meta": {"question_type_code"}}``.

    Close- and open-ended use the same records: see :func:`vqa_question` / :func:`vqa_answer`.
    """
    fmt = "m3d-vqa"
    root = pathlib.Path(root)
    s = canonical_split(split, list(_VQA_FILES), fmt)
    name = f"M3D_VQA_{_VQA_FILES[s]}.csv"
    cp = (
        pathlib.Path(csv_path)
        if csv_path is not None
        else first_existing([root / name, root / "M3D-VQA" / name], fmt, name)
    )
    rows = read_csv(cp, fmt, required=VQA_COLUMNS)
    # Image Path is relative to the data root (M3D's VQADataset joins it to data_root); a root that
    # is the M3D-VQA folder itself (the CSVs' folder) or its parent is found from the first row
    # (or, for paths without the leading folder, the M3D_Cap_npy folder beside it)
    bases = list(
        dict.fromkeys(
            [
                root,
                cp.parent,
                cp.parent.parent,
                root / "M3D_Cap_npy",
                cp.parent.parent / "M3D_Cap_npy",
            ]
        )
    )
    base = next((b for b in bases if rows and (b / rows[0]["Image Path"].strip()).exists()), root)
    records: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        code = row["Question Type"].strip()
        try:
            qt = QUESTION_TYPES.get(int(float(code)), code)
        except (ValueError, OverflowError):
            qt = code
        letter = answer_letter(row["Answer Choice"])
        if letter is None:
            raise DataError(
                f"{fmt}: {cp} row {i + 2}: Answer Choice {row['Answer Choice']!r} is not one of "
                "A, B, C, D"
            )
        if not row["Image Path"].strip():
            raise DataError(f"{fmt}: {cp} row {i + 2}: the Image Path cell is empty")
        records.append(
            {
                "id": f"{s}-{i}",
                "split": s,
                "image": str(base / row["Image Path"].strip()),
                "question": row["Question"],
                "choices": {k: row[f"Choice {k}"] for k in "ABCD"},
                "answer": letter,
                "answer_text": row["Answer"],
                "question_type": qt,
                "report": row["Text"],
                "meta": {"question_type_code": code, "csv_row": i + 2},
            }
        )
    if check_files:
        seen: set[str] = set()
        for i, r in enumerate(records):
            if r["image"] in seen:
                continue
            seen.add(r["image"])
            if not pathlib.Path(r["image"]).exists():
                raise DataError(
                    f"{fmt}: {cp} row {i + 2} (id {r['id']!r}): "
                    f"image file {r['image']} does not exist"
                )
    return records
