"""AMOS-MM (MICCAI 2024 abdominal multimodal analysis challenge): CT + region reports + VQA.

Sources: the challenge's release layout as read by bowang-lab/AMOS-MM-Solution
(``LaMed/src/dataset/multi_dataset.py``: ``AMOSCapDataset`` with regions ``abdomen``, ``chest``,
``pelvis``; ``AMOSVQADataset`` building ``"Choices: A. {} B. {} C. {} D. {}"`` and the answer
``"{letter}. {option}"``) and by other public users of the release's JSON (``data["training"]``,
``item["image"]`` = ``"./imagesTr/amos_XXXX.nii.gz"``, ``item["labels"]["report"]["findings"]
[region]``, ``item["labels"]["qa"]`` with ``question``, ``options`` A..D, ``answer``):

* ``imagesTr/amos_XXXX.nii.gz``, ``imagesVa/amos_XXXX.nii.gz`` (some 4-D);
* ``report_generation_train_val.json`` (or ``dataset.json``) = ``{"training": [...],
  "validation": [...]}``, items ``{"image", "meta": {...}, "labels": {"report": {"findings":
  {"chest", "abdomen", "pelvis"}, "impression": {...}}}}`` (an empty region is ``""``);
* ``vqa_train_val.json`` (or the same ``dataset.json``): items ``{"image", "labels": {"qa":
  [{"question", "options": {"A".."D"}, "answer": "A", "type"}]}}``.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

from ..exceptions import ConfigError, DataError
from ._common import (
    PathLike,
    canonical_split,
    check_paths,
    first_existing,
    need_list,
    read_json,
)
from .m3d import answer_letter
from .registry import register_reader

REGIONS = ("chest", "abdomen", "pelvis")
_KEYS = {"train": "training", "validation": "validation"}


def _image(root: pathlib.Path, p: str) -> str:
    return (
        str(root / p[2:])
        if p.startswith("./")
        else (p if pathlib.Path(p).is_absolute() else str(root / p))
    )


def _id(p: str) -> str:
    name = pathlib.PurePosixPath(p).name
    return name[:-7] if name.endswith(".nii.gz") else pathlib.PurePosixPath(name).stem


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return " ".join(str(x).strip() for x in v if str(x).strip())
    return str(v).strip()


def _find_json(root: pathlib.Path, task: str) -> pathlib.Path | None:
    """A JSON file of another name in ``root`` (e.g. a copy's ``report_train_val.json``) that holds
    ``{"training" | "validation": [items]}`` whose first item has ``labels.report`` (task
    ``report``) or ``labels.qa`` (``vqa``); None when there is none."""
    want = "report" if task == "report" else "qa"
    for p in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            if p.stat().st_size > 512 << 20:
                continue
            data = json.loads(p.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if not isinstance(data, dict):
            continue
        for key in _KEYS.values():
            items = data.get(key)
            if isinstance(items, list) and items and isinstance(items[0], dict):
                labels = items[0].get("labels")
                if isinstance(labels, dict) and want in labels:
                    return p
    return None


def _answer_letter(answer: Any, opts: dict[str, Any]) -> str | None:
    """The option letter an answer names: ``"A"``, ``"a"``, ``"A."``, ``"(A)"``, ``"A. text"``,
    or the text of one option (case and padding ignored); None when it names none."""
    letter = answer_letter(answer, "".join(c for c in opts if len(c) == 1))
    if letter is not None:
        return letter
    t = " ".join(str(answer).split()).lower()
    hits = [c for c, v in opts.items() if " ".join(str(v).split()).lower() == t]
    return hits[0] if len(hits) == 1 else None


@register_reader("amos-mm")
def read_amos_mm(
    root: PathLike,
    split: str = "train",
    task: str = "report",
    region: str | Sequence[str] | None = None,
    json_path: PathLike | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Records of AMOS-MM's ``train`` (``training``) or ``validation`` list.

    Args:
        task: ``"report"``: one record per scan, ``report`` = the non-empty region findings joined
            by newlines (chest, abdomen, pelvis), ``sections`` = {region: findings}, impressions in
            ``meta["impression"]``. ``"vqa"``: one record per question (``question``, ``choices``,
            ``answer`` letter, ``answer_text``, ``question_type``).
        region: (report task) ``"each"``: one record per non-empty region (id ``amos_XXXX/chest``,
            ``report`` = that region, ``region`` key); a region name or a list of them: only those,
            one record per non-empty one.
    """
    fmt = "amos-mm"
    root = pathlib.Path(root)
    s = canonical_split(split, list(_KEYS), fmt)
    if task not in ("report", "vqa"):
        raise ConfigError(f"{fmt}: task must be 'report' or 'vqa', got {task!r}")
    regions: tuple[str, ...] | None = None
    if region is not None:
        regions = (
            REGIONS
            if region == "each"
            else ((region,) if isinstance(region, str) else tuple(region))
        )
        bad = [r for r in regions if r not in REGIONS]
        if bad or task != "report":
            raise ConfigError(
                f"{fmt}: region must be 'each' or some of {', '.join(REGIONS)} (report task); "
                f"got {region!r} with task {task!r}"
            )
    names = (
        ["report_generation_train_val.json", "dataset.json"]
        if task == "report"
        else ["vqa_train_val.json", "dataset.json"]
    )
    jp = (
        pathlib.Path(json_path)
        if json_path is not None
        else next((root / n for n in names if (root / n).is_file()), None)
        or _find_json(root, task)
        or first_existing([root / n for n in names], fmt, f"the {task} JSON")
    )
    data = read_json(jp, fmt)
    key = _KEYS[s]
    if not isinstance(data, dict) or key not in data:
        have = list(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{fmt}: {jp} has no {key!r} list (split {s!r}); it has {have}")
    records: list[dict[str, Any]] = []
    for i, item in enumerate(need_list(data, key, jp, fmt)):
        where = f"{fmt}: {jp} {key}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            raise DataError(f"{where}: expected an object with 'image', got {item!r:.200}")
        img, sid = _image(root, item["image"]), _id(item["image"])
        labels = item.get("labels") or {}
        meta = item.get("meta") or {}
        if not isinstance(labels, dict) or not isinstance(meta, dict):
            raise DataError(
                f"{where} ({sid}): expected 'labels' and 'meta' objects, got "
                f"{type(labels).__name__} and {type(meta).__name__}"
            )
        meta = dict(meta)
        if task == "report":
            rep = labels.get("report")
            if not isinstance(rep, dict) or not isinstance(rep.get("findings"), dict):
                raise DataError(
                    f"{where} ({sid}): expected labels.report.findings {{chest, abdomen, pelvis}}"
                )
            find = {r: _text(rep["findings"].get(r)) for r in REGIONS}
            imp = rep.get("impression")
            if isinstance(imp, dict):
                meta["impression"] = {r: _text(imp.get(r)) for r in REGIONS}
            elif imp is not None:
                meta["impression"] = _text(imp)
            if regions is None:
                records.append(
                    {
                        "id": sid,
                        "split": s,
                        "image": img,
                        "sections": find,
                        "report": "\n".join(find[r] for r in REGIONS if find[r]),
                        "meta": meta,
                    }
                )
            else:
                for r in regions:
                    if find[r]:
                        records.append(
                            {
                                "id": f"{sid}/{r}",
                                "split": s,
                                "image": img,
                                "region": r,
                                "report": find[r],
                                "sections": find,
                                "meta": meta,
                            }
                        )
        else:
            qa = labels.get("qa")
            if not isinstance(qa, list):
                raise DataError(
                    f"{where} ({sid}): expected labels.qa [{{question, options, answer}}]"
                )
            for k, q in enumerate(qa):
                opts = q.get("options") if isinstance(q, dict) else None
                if isinstance(opts, list) and 1 <= len(opts) <= 26:  # options as a list: A, B, ..
                    opts = {chr(ord("A") + j): v for j, v in enumerate(opts)}
                if not isinstance(opts, dict) or "question" not in q or "answer" not in q:
                    raise DataError(
                        f"{where} ({sid}) qa[{k}]: expected {{question, options A..D, answer}}"
                    )
                if isinstance(opts, dict):
                    opts = {str(c).strip().upper(): v for c, v in opts.items()}
                letter = _answer_letter(q["answer"], opts)
                if letter is None:
                    raise DataError(
                        f"{where} ({sid}) qa[{k}]: answer {q['answer']!r} "
                        "is not one of the options "
                        f"{sorted(opts)}"
                    )
                records.append(
                    {
                        "id": f"{sid}/q{k}",
                        "split": s,
                        "image": img,
                        "question": str(q["question"]),
                        "choices": {c: str(v) for c, v in opts.items()},
                        "answer": letter,
                        "answer_text": str(opts[letter]),
                        "question_type": q.get("type"),
                        "meta": meta,
                    }
                )
    if check_files:
        check_paths(records, fmt, f"{jp} {key}")
    return records
