"""Sentence templates of the synthetic reports, and the keyword labeler that inverts them.

The chest-CT templates follow the wording of CTRG-Chest's radiologists' reports (as released
with Dia-LLaMA: "Thorax is symmetrical, lung window shows clear lung markings, natural walking,
good lung field transparency ... Bilateral pulmonary hili are not large. The shape of heart
shadow and heart big vessels is normal ... No pleural effusion or pleural thickening."), with
several variants per sentence, per finding, location and size.

Rules the templates obey, so that :func:`label_report` can invert them exactly:

* a positive statement of a finding is a clause (text between ``. , ; :``) holding one of the
  finding's keywords and none of the negation cues (``no``, ``not``, ``without``, ``cannot``,
  ``excluded``, ``nor``);
* negative and uncertain statements put a negation cue in the clause that names the finding;
* "no finding" is positive exactly when none of the other 13 labels is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..metrics import CHEXBERT_CONDITIONS

CONDITIONS = CHEXBERT_CONDITIONS
IDX = {c: i for i, c in enumerate(CONDITIONS)}

# ------------------------------------------------------------------------------------------
# labeler

_NEG = re.compile(r"\b(no|not|without|cannot|excluded|nor|absent)\b")
_CLAUSE = re.compile(r"[.;,:\n]")
KEYWORDS: dict[str, re.Pattern[str]] = {
    "enlarged cardiomediastinum": re.compile(
        r"hil(?:i|a|um|us) (?:are|is) enlarged|enlarged (?:mediastinal )?lymph nodes?|"
        r"lymph nodes? (?:are|is) enlarged|mediastinum is widened|widened mediastinum|"
        r"lymphadenopathy"
    ),
    "cardiomegaly": re.compile(
        r"(?:heart|cardiac) shadow is enlarged|heart is enlarged|enlarged heart|cardiomegaly"
    ),
    "lung opacity": re.compile(r"ground[- ]glass (?:opacit|density)"),
    "lung lesion": re.compile(r"nodul|\bmass\b|masses"),
    "edema": re.compile(r"edema|oedema"),
    "consolidation": re.compile(r"consolidat"),
    "pneumonia": re.compile(r"pneumonia|inflammat"),
    "atelectasis": re.compile(r"atelecta"),
    "pneumothorax": re.compile(r"pneumothora"),
    "pleural effusion": re.compile(r"effusion"),
    "pleural other": re.compile(
        r"pleura(?:l)? (?:is |are )?(?:locally |slightly |focally )?thicken|"
        r"pleural thickening|pleural hypertrophy"
    ),
    "fracture": re.compile(r"fractur"),
    "support devices": re.compile(r"catheter|pacemaker|drainage tube|\bdevice|\bport\b|\blead\b"),
}


def label_report(text: str) -> np.ndarray:
    """The 14 CheXbert labels a report states as positive: ``[14]`` int64 0/1 (the inverse of
    the templates here; see the module docstring for the rules)."""
    out = np.zeros(len(CONDITIONS), dtype=np.int64)
    for clause in _CLAUSE.split(text.lower()):
        if _NEG.search(clause):
            continue
        for name, pat in KEYWORDS.items():
            if pat.search(clause):
                out[IDX[name]] = 1
    if not out[: IDX["no finding"]].any():
        out[IDX["no finding"]] = 1
    return out


def label_reports(texts: Sequence[str]) -> np.ndarray:
    """:func:`label_report` of each text: ``[N, 14]`` int64."""
    if not len(texts):
        return np.zeros((0, len(CONDITIONS)), dtype=np.int64)
    return np.stack([label_report(t) for t in texts])


# ------------------------------------------------------------------------------------------
# chest CT templates

LOBE_NAMES = {
    ("right", "upper"): ("the upper lobe of the right lung", "the right upper lobe"),
    ("right", "middle"): ("the middle lobe of the right lung", "the right middle lobe"),
    ("right", "lower"): ("the lower lobe of the right lung", "the right lower lobe"),
    ("left", "upper"): ("the upper lobe of the left lung", "the left upper lobe"),
    ("left", "lower"): ("the lower lobe of the left lung", "the left lower lobe"),
}
SEGMENTS = {
    ("right", "upper"): ("apical", "posterior", "anterior"),
    ("right", "middle"): ("lateral", "medial"),
    ("right", "lower"): ("dorsal", "posterior basal", "outer basal"),
    ("left", "upper"): ("apicoposterior", "anterior", "lingular"),
    ("left", "lower"): ("dorsal", "posterior basal", "outer basal"),
}


def lobe_phrase(rng: np.random.Generator, side: str, lobe: str, segment: str | None = None) -> str:
    """``"the upper lobe of the right lung"``, ``"the right upper lobe"`` or, with a segment,
    ``"the posterior segment of the right upper lobe"``."""
    base = LOBE_NAMES[(side, lobe)][int(rng.integers(2))]
    if segment:
        return f"the {segment} segment of the {base[4:]}"
    return base


def size_phrase(rng: np.random.Generator, a_mm: float, b_mm: float) -> str:
    a, b = max(int(round(a_mm)), 1), max(int(round(b_mm)), 1)
    k = int(rng.integers(4))
    if k == 0:
        return f"about {a}mm x {b}mm"
    if k == 1:
        return f"about {a} * {b}mm"
    if k == 2:
        return f"about {a / 10:.1f}cm x {b / 10:.1f}cm"
    return f"about {a}mm in diameter"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _side_word(side: str) -> str:
    return {"right": "right", "left": "left", "both": "bilateral"}[side]


def finding_sentence(rng: np.random.Generator, f: dict[str, Any]) -> str:
    """One positive sentence (lower case, no final period) for a planted finding ``f``
    (a ground-truth record of :mod:`voxlm.synth.chest_ct`)."""
    label = f["label"]
    side, lobe = f.get("side", "right"), f.get("lobe", "upper")
    if label == "lung lesion":
        loc = lobe_phrase(rng, side, lobe, f.get("segment"))
        size = size_phrase(rng, *f["size_mm"][:2])
        kind = f.get("kind", "solid")
        if kind == "mass":
            return _pick(
                rng,
                [
                    f"a soft tissue mass is seen in {loc}, {size} in size, with lobulated margins",
                    f"a mass shadow can be seen in {loc}, the size is {size}",
                ],
            )
        if f.get("count", 1) > 1:
            return _pick(
                rng,
                [
                    f"multiple {kind} nodules are seen in both lungs, "
                    f"the larger one is located in {loc}, {size}",
                    f"both lungs show multiple {kind} nodule shadows, "
                    f"the largest one is in {loc}, {size} in size",
                ],
            )
        return _pick(
            rng,
            [
                f"a {kind} nodule shadow is seen in {loc}, the size is {size}",
                f"single {kind} nodule can be seen in {loc}, {size} in size",
                f"there is a {kind} nodule in {loc}, {size}",
            ],
        )
    if label == "lung opacity":
        loc = lobe_phrase(rng, side, lobe)
        return _pick(
            rng,
            [
                f"patchy ground glass opacity is seen in {loc}",
                f"ground-glass density shadow can be seen in {loc}, with a blurred edge",
                f"{loc} shows a patchy ground glass opacity",
            ],
        )
    if label == "consolidation":
        loc = lobe_phrase(rng, side, lobe)
        return _pick(
            rng,
            [
                f"patchy consolidation shadow is seen in {loc}",
                f"consolidation with air bronchogram can be seen in {loc}",
                f"{loc} shows a large consolidation shadow",
            ],
        )
    if label == "pneumonia":
        loc = lobe_phrase(rng, side, lobe)
        return _pick(
            rng,
            [
                f"patchy inflammatory exudation is seen in {loc}, suggesting pneumonia",
                f"{loc} shows flocculent shadows, consistent with pneumonia",
            ],
        )
    if label == "atelectasis":
        loc = lobe_phrase(rng, side, lobe)
        return _pick(
            rng,
            [
                f"strip-like atelectasis is seen in {loc}",
                f"{loc} shows a band of atelectasis",
                f"partial atelectasis of {loc}",
            ],
        )
    if label == "pneumothorax":
        return _pick(
            rng,
            [
                f"{_side_word(side)} pneumothorax is seen, "
                f"the lung tissue is compressed by about {f['compression_pct']}%",
                f"a {_side_word(side)} pneumothorax is present, "
                f"about {f['compression_pct']}% of the lung is compressed",
            ],
        )
    if label == "edema":
        return _pick(
            rng,
            [
                "both lungs show diffuse increased density with thickened interlobular septa, "
                "suggesting pulmonary edema",
                "interstitial pulmonary edema is seen in both lungs",
            ],
        )
    if label == "pleural effusion":
        amount = f["amount"]
        if side == "both":
            return _pick(
                rng,
                [
                    f"a {amount} amount of pleural effusion is seen on both sides",
                    f"bilateral pleural effusion, {amount} in amount",
                ],
            )
        return _pick(
            rng,
            [
                f"there is a {amount} amount of pleural effusion on the {side} side",
                f"a {amount} amount of {side} pleural effusion is seen",
                f"fluid density shadow is seen in the {side} pleural cavity, "
                "suggesting pleural effusion",
            ],
        )
    if label == "pleural other":
        if side == "both":
            return _pick(
                rng,
                [
                    "bilateral focal pleural thickening",
                    "the pleura is locally thickened on both sides",
                ],
            )
        return _pick(
            rng,
            [
                f"the {side} pleura is locally thickened",
                f"focal pleural thickening on the {side}",
                f"{side} pleural thickening",
            ],
        )
    if label == "fracture":
        n = f["rib"]
        nth = {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")
        return _pick(
            rng,
            [
                f"fracture of the {side} {nth} rib with slight displacement",
                f"a fracture line is seen in the {side} {nth} rib",
            ],
        )
    if label == "support devices":
        if f.get("kind") == "pacemaker":
            return _pick(
                rng,
                [
                    "a pacemaker is seen in the left anterior chest wall, "
                    "its lead reaching the right ventricle",
                    "pacemaker shadow in the left chest wall with the lead in the heart",
                ],
            )
        return _pick(
            rng,
            [
                "a catheter shadow is seen in the superior vena cava",
                "a central venous catheter is seen, its tip located in the superior vena cava",
            ],
        )
    if label == "enlarged cardiomediastinum":
        size = f"{int(round(f['size_mm'][0]))}mm"
        if f.get("where") == "hilum":
            return _pick(
                rng,
                [
                    f"bilateral pulmonary hili are enlarged, "
                    f"with enlarged lymph nodes of about {size}",
                    f"the {side} pulmonary hilum is enlarged, "
                    f"an enlarged lymph node of about {size} is seen",
                ],
            )
        return _pick(
            rng,
            [
                f"multiple enlarged lymph nodes are seen in the mediastinum, "
                f"the larger one is about {size} in short diameter",
                f"the mediastinum is widened with enlarged lymph nodes, "
                f"the larger one about {size}",
            ],
        )
    if label == "cardiomegaly":
        return _pick(
            rng,
            [
                "the heart shadow is enlarged",
                "the heart is enlarged, the large vessels are normal in shape",
                "cardiac shadow is enlarged",
            ],
        )
    raise ValueError(f"no template for {label!r}")


UNCERTAIN = {
    "lung lesion": "a tiny nodule cannot be excluded",
    "pleural effusion": "a trace of pleural effusion cannot be excluded",
    "pleural other": "slight pleural thickening cannot be excluded",
    "consolidation": "early consolidation cannot be excluded",
    "enlarged cardiomediastinum": "slightly enlarged mediastinal lymph nodes cannot be excluded",
}
NEGATIVE = {
    "lung lesion": [
        "no obvious nodule or mass is seen in both lungs",
        "no definite nodule is seen in either lung",
    ],
    "consolidation": ["no obvious consolidation shadow is seen", "no obvious consolidation shadow"],
    "fracture": [
        "no abnormality is found in rib and chest wall soft tissue",
        "no obvious signs of dislocated fracture are found on the ribs at both sides",
    ],
    "cardiomegaly": ["the heart shadow is not enlarged"],
    "lung opacity": ["no ground glass opacity is seen"],
    "edema": ["no interstitial edema is seen"],
}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join(rng: np.random.Generator, clauses: list[str]) -> str:
    """Join clauses into sentences: ', ' or '. ' between them (the real reports mix both)."""
    out = ""
    for i, c in enumerate(clauses):
        if i == 0:
            out = _cap(c)
        elif rng.random() < 0.55:
            out += ", " + c
        else:
            out += ". " + _cap(c)
    return out + "."


def chest_ct_report(
    rng: np.random.Generator,
    codes: Sequence[int],
    findings: Sequence[dict[str, Any]],
    wording: str = "varied",
) -> str:
    """The findings text of a chest CT with CheXbert ``codes`` ([14]: 0 blank, 1 positive,
    2 negative, 3 uncertain) and the planted ``findings`` (ground-truth records).

    ``wording="plain"`` always takes the first variant of each sentence (less variety, for
    quick experiments); ``"varied"`` draws among the variants with ``rng``."""
    if wording == "plain":
        rng = np.random.default_rng(0)  # same draws every report: the same variants
    code = {c: int(codes[i]) for i, c in enumerate(CONDITIONS)}
    by_label: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        by_label.setdefault(f["label"], []).append(f)

    opening = _pick(
        rng,
        [
            "thorax is symmetrical",
            "the chest is symmetrical",
            "thorax is symmetrical, trachea is in the middle",
        ],
    )
    clauses = [opening]
    if code["fracture"] == 2:
        clauses.append(_pick(rng, NEGATIVE["fracture"]))
    if "edema" in by_label:
        clauses.append("bilateral lung markings are increased and blurred")
    else:
        clauses.append(
            _pick(
                rng,
                [
                    "lung window shows clear lung markings, natural walking, "
                    "good lung field transparency",
                    "the lung window shows that the bilateral lung markings are clear and natural, "
                    "the lung field has good "
                    "transparency",
                    "bilateral lung markings are clear and natural, "
                    "the lung field transparency is good",
                ],
            )
        )
    lung_order = [
        "lung lesion",
        "lung opacity",
        "consolidation",
        "pneumonia",
        "atelectasis",
        "edema",
        "pneumothorax",
    ]
    order = [lbl for lbl in lung_order if lbl in by_label]
    rng.shuffle(order)
    for lbl in order:
        for f in by_label[lbl][:1]:
            clauses.append(finding_sentence(rng, f))
    for lbl in ("lung lesion", "consolidation", "lung opacity", "edema"):
        if code[lbl] == 2 and lbl not in by_label:
            clauses.append(_pick(rng, NEGATIVE[lbl]))
        elif code[lbl] == 3 and lbl in UNCERTAIN:
            clauses.append(UNCERTAIN[lbl])
    ecm = by_label.get("enlarged cardiomediastinum", [])
    hilar = [f for f in ecm if f.get("where") == "hilum"]
    medi = [f for f in ecm if f.get("where") != "hilum"]
    if hilar:
        clauses.append(finding_sentence(rng, hilar[0]))
    else:
        clauses.append(
            _pick(
                rng,
                [
                    "bilateral pulmonary hili are not large",
                    "bilateral pulmonary hilus is not large",
                    "both pulmonary hili are not large",
                ],
            )
        )
    if "cardiomegaly" in by_label:
        clauses.append(finding_sentence(rng, by_label["cardiomegaly"][0]))
    elif code["cardiomegaly"] == 2 and rng.random() < 0.3:
        clauses.append(NEGATIVE["cardiomegaly"][0])
    else:
        clauses.append(
            _pick(
                rng,
                [
                    "the shape of heart shadow and heart big vessels is normal",
                    "the shape of heart shadow and large vessels is normal",
                    "the shape of the cardiac shadow is normal",
                ],
            )
        )
    if medi:
        clauses.append(finding_sentence(rng, medi[0]))
    elif code["enlarged cardiomediastinum"] == 3:
        clauses.append(UNCERTAIN["enlarged cardiomediastinum"])
    else:
        clauses.append(
            _pick(
                rng,
                [
                    "no obvious mass or enlarged lymph node is found in mediastinum",
                    "no mass or enlarged lymph node is found in the mediastinum",
                ],
            )
        )
    # pleura
    pleural_pos = [
        finding_sentence(rng, f)
        for lbl in ("pleural effusion", "pleural other")
        for f in by_label.get(lbl, [])[:1]
    ]
    neg = [
        w
        for lbl, w in (
            ("pleural effusion", "pleural effusion"),
            ("pleural other", "pleural thickening"),
        )
        if lbl not in by_label and code[lbl] in (0, 2)
    ]
    if len(neg) == 2:
        clauses.append(
            _pick(
                rng,
                [
                    "no pleural effusion or pleural thickening",
                    "no pleural effusion or pleural thickening is seen on either side",
                ],
            )
        )
    elif neg:
        clauses.append(f"no {neg[0]}")
    for lbl in ("pleural effusion", "pleural other"):
        if code[lbl] == 3 and lbl not in by_label:
            clauses.append(UNCERTAIN[lbl])
    clauses += pleural_pos
    for lbl in ("fracture", "support devices"):
        for f in by_label.get(lbl, [])[:1]:
            clauses.append(finding_sentence(rng, f))
    return _join(rng, clauses)


def ct_rate_impression(findings: Sequence[dict[str, Any]]) -> str:
    """A short CT-RATE-style impression: the planted findings, or "No acute findings."."""
    names = {
        "lung lesion": "Pulmonary nodule",
        "lung opacity": "Ground glass opacity",
        "consolidation": "Consolidation",
        "pneumonia": "Pneumonia",
        "atelectasis": "Atelectasis",
        "edema": "Pulmonary edema",
        "pneumothorax": "Pneumothorax",
        "pleural effusion": "Pleural effusion",
        "pleural other": "Pleural thickening",
        "fracture": "Rib fracture",
        "support devices": "Medical device in place",
        "enlarged cardiomediastinum": "Lymphadenopathy",
        "cardiomegaly": "Cardiomegaly",
    }
    seen: list[str] = []
    for f in findings:
        n = names[f["label"]]
        if n not in seen:
            seen.append(n)
    return ". ".join(seen) + "." if seen else "Not given."
