"""MIMIC-CXR-JPG (chest X-ray studies with several views and a free-text report) and RRG24 records.

Sources: MIMIC-CXR-JPG 2.0.0 on PhysioNet (``files/p10/p10000032/s50414267/<dicom_id>.jpg``;
``mimic-cxr-2.0.0-metadata.csv.gz`` with dicom_id, subject_id, study_id, ViewPosition, ...;
``mimic-cxr-2.0.0-split.csv.gz`` with dicom_id, study_id, subject_id, split in train / validate /
test; ``mimic-cxr-2.0.0-chexpert.csv.gz`` with subject_id, study_id and 14 CheXpert labels coded
1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned); the reports of MIMIC-CXR
(``files/p10/p10000032/s50414267.txt``) split into sections by MIT-LCP/mimic-cxr's
``txt/section_parser.py`` (``section_text`` + ``normalize_section_names``, transcribed below;
its per-study ``custom_mimic_cxr_rules`` are not applied). RRG24 (BioNLP 2024 shared task, the
``interpret-cxr`` release): records ``{"images" (or "images_path"): [paths, PA/AP/LATERAL order],
"findings", "impression", "source"}`` in a JSON list or JSON Lines file.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..exceptions import ConfigError, DataError
from ._common import (
    SPLIT_ALIASES,
    PathLike,
    canonical_split,
    check_record,
    first_existing,
    read_csv,
)
from .registry import register_reader

CHEXPERT = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]
VIEW_ORDER = {"PA": 0, "AP": 1, "LATERAL": 2, "LL": 3}

# --- MIT-LCP/mimic-cxr txt/section_parser.py (transcription) ------------------------------------
_FREQUENT_SECTIONS = {
    "preamble": "preamble",
    "impression": "impression",
    "comparison": "comparison",
    "indication": "indication",
    "findings": "findings",
    "examination": "examination",
    "technique": "technique",
    "history": "history",
    "comparisons": "comparison",
    "clinical history": "history",
    "reason for examination": "indication",
    "notification": "notification",
    "reason for exam": "indication",
    "clinical information": "history",
    "exam": "examination",
    "clinical indication": "indication",
    "conclusion": "impression",
    "chest, two views": "findings",
    "recommendation(s)": "recommendations",
    "type of examination": "examination",
    "reference exam": "comparison",
    "patient history": "history",
    "addendum": "addendum",
    "comparison exam": "comparison",
    "date": "date",
    "comment": "comment",
    "findings and impression": "impression",
    "wet read": "wet read",
    "comparison film": "comparison",
    "recommendations": "recommendations",
    "findings/impression": "impression",
    "pfi": "history",
    "recommendation": "recommendations",
    "wetread": "wet read",
    "ndication": "impression",
    "impresson": "impression",
    "imprression": "impression",
    "imoression": "impression",
    "impressoin": "impression",
    "imprssion": "impression",
    "impresion": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "impession": "impression",
    "findings/ impression": "impression",
    "finding": "findings",
    "findins": "findings",
    "findindgs": "findings",
    "findgings": "findings",
    "findngs": "findings",
    "findnings": "findings",
    "finidngs": "findings",
    "idication": "indication",
    "reference findings": "findings",
    "comparision": "comparison",
    "comparsion": "comparison",
    "comparrison": "comparison",
    "comparisions": "comparison",
}
_P_FINDINGS = re.compile(
    "({})".format(
        "|".join(
            [
                "chest",
                "portable",
                "pa and lateral",
                "lateral and pa",
                "ap and lateral",
                "lateral and ap",
                "frontal and",
                "two views",
                "frontal view",
                "pa view",
                "ap view",
                "one view",
                "lateral view",
                "bone window",
                "frontal upright",
                "frontal semi-upright",
                "ribs",
                "pa and lat",
            ]
        )
    )
)
_MAIN_SECTIONS = ["impression", "findings", "history", "comparison", "addendum"]
_P_SECTION = re.compile(r"\n ([A-Z ()/,-]+):\s", re.DOTALL)


def normalize_section_names(section_names: list[str]) -> list[str]:
    names = [s.lower().strip() for s in section_names]
    for i, s in enumerate(names):
        if s in _FREQUENT_SECTIONS:
            names[i] = _FREQUENT_SECTIONS[s]
            continue
        main = next((m for m in _MAIN_SECTIONS if m in s), None)
        if main is not None:
            names[i] = main
            continue
        if _P_FINDINGS.search(s) is not None:
            names[i] = "findings"
    return names


def section_text(text: str) -> tuple[list[str], list[str], list[int]]:
    """``(sections, section_names, section_idx)`` of a MIMIC-CXR report (``section_parser.py``)."""
    sections: list[str] = []
    names: list[str] = []
    idxs: list[int] = []
    s = _P_SECTION.search(text, 0)
    if s:
        sections.append(text[0 : s.start(1)])
        names.append("preamble")
        idxs.append(0)
        while s:
            current = s.group(1).lower()
            idx_start = s.end()
            idx_skip = text[idx_start:].find("\n")
            if idx_skip == -1:
                idx_skip = 0
            s = _P_SECTION.search(text, idx_start + idx_skip)
            idx_end = len(text) if s is None else s.start()
            sections.append(text[idx_start:idx_end])
            names.append(current)
            idxs.append(idx_start)
    else:
        sections.append(text)
        names.append("full report")
        idxs.append(0)
    names = normalize_section_names(names)
    for i in reversed(range(len(names))):
        if names[i] in ("impression", "findings") and sections[i].strip() == "":
            sections.pop(i)
            names.pop(i)
            idxs.pop(i)
    if "impression" not in names and "findings" not in names and "\n \n" in sections[-1]:
        sections.append("\n \n".join(sections[-1].split("\n \n")[1:]))
        sections[-2] = sections[-2].split("\n \n")[0]
        names.append("last_paragraph")
        idxs.append(idxs[-1] + len(sections[-2]))
    return sections, names, idxs


# --- end of the transcription --------------------------------------------------------------------

_P_LOOSE = re.compile(r"(?:^|\n)[ \t]*([A-Za-z][A-Za-z ()/,-]{0,40}?)[ \t]*:", re.DOTALL)
_KNOWN_SECTIONS = set(_FREQUENT_SECTIONS.values()) | set(_MAIN_SECTIONS)


def loose_sections(text: str) -> tuple[list[str], list[str]]:
    """``(sections, names)`` of a report whose headers the reference pattern misses — a header at
    the very start, without the leading space MIMIC-CXR's files have, or in mixed case
    (``Findings:``, ``IMPRESSION :``): every line that starts with a name
    :func:`normalize_section_names` knows, then a colon, starts a section."""
    hits = [
        (m.start(1), m.end(), name)
        for m in _P_LOOSE.finditer(text)
        for name in normalize_section_names([m.group(1)])
        if name in _KNOWN_SECTIONS
    ]
    if not hits:
        return [text], ["full report"]
    sections, names = [text[: hits[0][0]]], ["preamble"]
    for k, (_, body, name) in enumerate(hits):
        end = hits[k + 1][0] if k + 1 < len(hits) else len(text)
        sections.append(text[body:end])
        names.append(name)
    return sections, names


def report_sections(text: str) -> dict[str, str]:
    """``{"findings", "impression"}`` of a report: the last section of each name, stripped (as
    ``create_section_files.py`` picks them with ``list_rindex``); "" when absent.

    The reference parser (:func:`section_text`) first; when it finds neither a findings nor an
    impression section, :func:`loose_sections` (headers at line starts in any case)."""
    sections, names, _ = section_text(text)
    if "findings" not in names and "impression" not in names:
        loose, loose_names = loose_sections(text)
        if "findings" in loose_names or "impression" in loose_names:
            sections, names = loose, loose_names
    out = {}
    for key in ("findings", "impression"):
        idx = max((i for i, n in enumerate(names) if n == key), default=-1)
        out[key] = sections[idx].strip() if idx >= 0 else ""
    return out


def _target(sections: dict[str, str], section: str | None) -> str:
    if section is None:
        return "\n".join(
            v for v in (sections.get("findings", ""), sections.get("impression", "")) if v
        )
    return sections.get(section, "")


def _read_rrg24(
    root: pathlib.Path,
    path: pathlib.Path,
    split: str,
    section: str | None,
    drop_empty: bool,
    check_files: bool,
) -> list[dict[str, Any]]:
    fmt = "mimic-cxr"
    if not path.is_file():
        raise DataError(f"{fmt}: expected the RRG24 records file {path}, but it does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{fmt}: {path} is not UTF-8 text: {e}") from None
    try:
        rows = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        )
    except json.JSONDecodeError as e:
        raise DataError(f"{fmt}: {path} is not JSON / JSON Lines: {e}") from None
    records = []
    for i, r in enumerate(rows):
        where = f"{fmt}: {path} record {i}"
        # the Hugging Face release has both: "images" (decoded images) and "images_path"
        cands = [r.get(k) for k in ("images", "images_path")] if isinstance(r, dict) else []
        imgs = next(
            (c for c in cands if isinstance(c, list) and all(isinstance(p, str) for p in c)),
            next((c for c in cands if c is not None), None),
        )
        if isinstance(imgs, str):
            imgs = [imgs]
        if not isinstance(imgs, list) or not imgs or not all(isinstance(p, str) for p in imgs):
            raise DataError(f"{where}: expected 'images': [paths], got {imgs!r:.200}")
        rs = r.get("split")
        if rs is not None and SPLIT_ALIASES.get(str(rs).lower(), str(rs).lower()) != split:
            continue
        sections = {
            "findings": str(r.get("findings") or "").strip(),
            "impression": str(r.get("impression") or "").strip(),
        }
        rep = _target(sections, section)
        if drop_empty and not rep:
            continue
        rec = {
            "id": str(r.get("id", i)),
            "split": split,
            "images": [str(root / p) for p in imgs],
            "sections": sections,
            "report": rep,
            "meta": {"source": r.get("source")},
        }
        if check_files:
            check_record(rec, where)
        records.append(rec)
    return records


def _idn(v: str) -> str:
    """A subject / study id as the file names spell it: padding and a ``.0`` that a table re-saved
    by pandas adds (``50414267.0``) removed."""
    t = str(v).strip()
    return t[:-2] if t.endswith(".0") and t[:-2].isdigit() else t


@register_reader("mimic-cxr")
def read_mimic_cxr(
    root: PathLike,
    split: str = "train",
    section: str | None = "findings",
    drop_empty: bool = True,
    views: Sequence[str] | None = None,
    reports_root: PathLike | None = None,
    rrg24: PathLike | None = None,
    ext: str | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """One record per study: ``{"id" (study id), "split", "images" (paths, PA, AP, LATERAL, LL,
    then others; ties by dicom_id), "sections" {"findings", "impression"}, "report" (the
    ``section``: "findings" | "impression" | None = both joined), "labels" int64 [14] (CheXpert
    1.0), "label_codes" float [14] (1, 0, -1, nan = blank), "label_names", "meta": {"subject_id",
    "views", "dicom_ids"}}``.

    Args:
        split: ``train`` | ``validation`` (``validate`` in the split file) | ``test``.
        drop_empty: skip studies whose report has no text for ``section`` (or no report file).
        views: keep only these ViewPositions (e.g. ``["PA", "AP"]``); studies left without an
            image are skipped.
        reports_root: folder holding ``files/p1X/...txt`` (default ``root/mimic-cxr-reports``
            when it holds ``files/``, else ``root``).
        rrg24: read RRG24 records from this JSON / JSONL file instead (paths relative to ``root``).
        ext: image file extension (``".jpg"`` in MIMIC-CXR-JPG); None: the first of ``.jpg``,
            ``.png`` (converted copies, voxlm's synthetic set), ``.JPG``, ``.PNG``, ``.jpeg``
            that exists for the dicom_id (``.jpg`` when none does).
    """
    fmt = "mimic-cxr"
    root = pathlib.Path(root)
    s = canonical_split(split, ["train", "validation", "test"], fmt)
    if section not in (None, "findings", "impression"):
        raise ConfigError(
            f"{fmt}: section must be 'findings', 'impression' or None, got {section!r}"
        )
    if rrg24 is not None:
        return _read_rrg24(root, pathlib.Path(rrg24), s, section, drop_empty, check_files)

    def table(name: str) -> pathlib.Path:
        return first_existing(
            [root / f"{name}.csv.gz", root / f"{name}.csv"], fmt, f"{name}.csv.gz"
        )

    split_rows = read_csv(
        table("mimic-cxr-2.0.0-split"),
        fmt,
        required=["dicom_id", "study_id", "subject_id", "split"],
    )
    meta_rows = read_csv(
        table("mimic-cxr-2.0.0-metadata"), fmt, required=["dicom_id", "study_id", "ViewPosition"]
    )
    chex_path = next(
        (
            p
            for p in (
                root / "mimic-cxr-2.0.0-chexpert.csv.gz",
                root / "mimic-cxr-2.0.0-chexpert.csv",
            )
            if p.is_file()
        ),
        None,
    )
    view = {r["dicom_id"].strip(): r["ViewPosition"].strip().upper() for r in meta_rows}
    bad = next((r for r in split_rows if not (_idn(r["study_id"]) and _idn(r["subject_id"]))), None)
    if bad is not None:
        raise DataError(
            f"{fmt}: {table('mimic-cxr-2.0.0-split')}: a row has an empty study_id / subject_id: "
            f"{bad}"
        )
    studies: dict[str, dict[str, Any]] = {}
    for r in split_rows:
        if SPLIT_ALIASES.get(r["split"].strip().lower(), r["split"].strip().lower()) != s:
            continue
        st = studies.setdefault(
            _idn(r["study_id"]), {"subject_id": _idn(r["subject_id"]), "dicoms": []}
        )
        st["dicoms"].append(r["dicom_id"].strip())
    codes: dict[str, np.ndarray] = {}
    if chex_path is not None:
        for i, r in enumerate(read_csv(chex_path, fmt, required=["study_id", *CHEXPERT]), 2):
            try:
                codes[_idn(r["study_id"])] = np.asarray(
                    [float(r[c]) if r[c].strip() else math.nan for c in CHEXPERT]
                )
            except ValueError:
                raise DataError(
                    f"{fmt}: {chex_path} row {i} (study {r['study_id']}): expected CheXpert codes "
                    f"1.0 / 0.0 / -1.0 / blank, got {[r[c] for c in CHEXPERT]}"
                ) from None
    if isinstance(views, str):  # views="PA" is one view, not the letters P and A
        views = [v for v in views.replace(";", ",").split(",") if v.strip()]
    want = None if views is None else {str(v).strip().upper() for v in views}
    # mimic-cxr-reports.zip (from MIMIC-CXR) unpacked beside the JPGs, or into its own folder
    rroot = (
        pathlib.Path(reports_root)
        if reports_root is not None
        else next(
            (d for d in (root / "mimic-cxr-reports",) if (d / "files").is_dir()),
            root,
        )
    )
    records = []
    for study_id, st in studies.items():
        subj = st["subject_id"]
        folder = pathlib.Path("files") / f"p{subj[:2]}" / f"p{subj}"
        dicoms = [d for d in st["dicoms"] if want is None or view.get(d, "") in want]
        if not dicoms:
            continue
        dicoms.sort(key=lambda d: (VIEW_ORDER.get(view.get(d, ""), len(VIEW_ORDER)), d))
        txt = rroot / folder / f"s{study_id}.txt"
        sections = (
            report_sections(txt.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n"))
            if txt.is_file()
            else {}
        )
        rep = _target(sections, section)
        if drop_empty and not rep:
            continue
        sdir = root / folder / f"s{study_id}"

        def image(d: str, sdir: pathlib.Path = sdir) -> str:
            if ext is not None:
                return str(sdir / f"{d}{ext}")
            cands = [sdir / f"{d}{e}" for e in (".jpg", ".png", ".JPG", ".PNG", ".jpeg")]
            return str(next((c for c in cands if c.exists()), cands[0]))

        rec: dict[str, Any] = {
            "id": study_id,
            "split": s,
            "images": [image(d) for d in dicoms],
            "sections": sections,
            "report": rep,
            "meta": {
                "subject_id": subj,
                "views": [view.get(d, "") for d in dicoms],
                "dicom_ids": dicoms,
                "report_path": str(txt) if txt.is_file() else None,
            },
        }
        if study_id in codes:
            c = codes[study_id]
            rec["labels"] = (c == 1.0).astype(np.int64)
            rec["label_codes"] = c
            rec["label_names"] = list(CHEXPERT)
        if check_files:
            check_record(rec, f"{fmt}: study {study_id} (split file rows of dicom {dicoms[0]})")
        records.append(rec)
    return records
