"""Evaluation as the papers compute it.

* :func:`report_scores`: pycocoevalcap's BLEU-1..4, ROUGE-L and CIDEr-D (computed in Rust, equal
  to pycocoevalcap), plus METEOR 1.5 (Rust transcription of pycocoevalcap's jar, equal to it; no
  Java needed).
* :func:`multilabel_scores`: clinical efficacy (per-label, macro, micro, example-based P/R/F1).
* :func:`classification_scores`: PI-RADS scoring metrics (accuracy, MSE, MAE, macro P/R/F1,
  confusion matrix, quadratic weighted kappa).
* :func:`diagnostic_prompt` / :func:`parse_diagnostic_prompt`: Dia-LLaMA's text prompts.
* :func:`parse_choice` / :func:`vqa_accuracy`: multiple-choice VQA.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import _core
from .exceptions import ConfigError, ShapeError, VoxlmTypeError

#: The 14 CheXbert findings in Dia-LLaMA's order and spelling (its text prompts use these).
CHEXBERT_CONDITIONS: tuple[str, ...] = (
    "enlarged cardiomediastinum",
    "cardiomegaly",
    "lung opacity",
    "lung lesion",
    "edema",
    "consolidation",
    "pneumonia",
    "atelectasis",
    "pneumothorax",
    "pleural effusion",
    "pleural other",
    "fracture",
    "support devices",
    "no finding",
)

_Corpus = Sequence[str] | Sequence[Sequence[str]] | Mapping[Any, Any]


def _as_lists(references: _Corpus, hypotheses: _Corpus) -> tuple[list[list[str]], list[str]]:
    if isinstance(references, Mapping) or isinstance(hypotheses, Mapping):
        if not (isinstance(references, Mapping) and isinstance(hypotheses, Mapping)):
            raise VoxlmTypeError(
                "references and hypotheses: pass two dicts keyed by id, or two lists"
            )
        missing = set(references) ^ set(hypotheses)
        if missing:
            some = sorted(map(str, missing))[:5]
            raise ShapeError(
                f"references and hypotheses: expected the same ids, {len(missing)} differ "
                f"(e.g. {', '.join(some)})"
            )
        keys = list(references)
        refs_in = [references[k] for k in keys]
        hyps_in = []
        for k in keys:
            h = hypotheses[k]
            if isinstance(h, (list, tuple)):
                if len(h) != 1:
                    raise ShapeError(
                        f"hypotheses[{k!r}]: expected exactly one hypothesis, got {len(h)}"
                    )
                h = h[0]
            hyps_in.append(h)
    else:
        for name, x in (("references", references), ("hypotheses", hypotheses)):
            if isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
                raise VoxlmTypeError(
                    f"{name}: expected a list of texts (one per sample) or a dict keyed by id, "
                    f"got {type(x).__name__}"
                )
        refs_in, hyps_in = list(references), list(hypotheses)
    refs = []
    for i, r in enumerate(refs_in):
        if not isinstance(r, (str, list, tuple)):
            raise VoxlmTypeError(
                f"references[{i}]: expected a str or a list of str, got {type(r).__name__}"
            )
        refs.append([r] if isinstance(r, str) else list(r))
    for i, h in enumerate(hyps_in):
        if not isinstance(h, str):
            raise VoxlmTypeError(f"hypotheses[{i}]: expected str, got {type(h).__name__}")
    for i, rs in enumerate(refs):
        for r in rs:
            if not isinstance(r, str):
                raise VoxlmTypeError(f"references[{i}]: expected str, got {type(r).__name__}")
    return refs, hyps_in


def java_available() -> bool:
    """Whether a ``java`` runtime is on PATH (pycocoevalcap's METEOR and PTB tokenizer need it)."""
    return shutil.which("java") is not None


def _ptb_tokenize(refs: list[list[str]], hyps: list[str]) -> tuple[list[list[str]], list[str]]:
    if not java_available():
        raise ConfigError(
            "tokenize='ptb': needs Java for pycocoevalcap's PTBTokenizer; none on PATH"
        )
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as e:
        raise ConfigError("tokenize='ptb': needs pycocoevalcap (pip install pycocoevalcap)") from e
    gts = {i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)}
    res = {i: [{"caption": h}] for i, h in enumerate(hyps)}
    tok = PTBTokenizer()
    g, r = tok.tokenize(gts), tok.tokenize(res)
    return [g[i] for i in range(len(refs))], [r[i][0] for i in range(len(hyps))]


def meteor_jar_path() -> str:
    """Path of pycocoevalcap's ``meteor-1.5.jar`` (ConfigError when pycocoevalcap is missing)."""
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "METEOR: needs the language data of pycocoevalcap's meteor-1.5.jar "
            "(pip install pycocoevalcap, or pass jar=<path to meteor-1.5.jar>)"
        )
    root = list(spec.submodule_search_locations)[0]
    return os.path.join(root, "meteor", "meteor-1.5.jar")


def _meteor_clean(s: str) -> str:
    # the jar reads one line per request: a newline or carriage return would end it early
    return s.replace("\n", " ").replace("\r", " ")


def meteor_score(
    references: _Corpus,
    hypotheses: _Corpus,
    backend: str = "rust",
    jar: str | os.PathLike[str] | None = None,
    paraphrase: str | os.PathLike[str] | None = None,
) -> tuple[float, np.ndarray]:
    """METEOR 1.5 as pycocoevalcap computes it: ``(corpus score, [N] float64 per sample)``.

    pycocoevalcap runs ``java -jar meteor-1.5.jar - - -stdio -l en -norm`` (exact, stem,
    synonym and paraphrase matching, English ranking-task parameters alpha 0.85, beta 0.2,
    gamma 0.6, delta 0.75, module weights 1.0/0.6/0.8/0.6, beam 40) and takes the corpus
    score from its ``EVAL`` line over the aggregated statistics.

    Args:
        references: one reference string or a list of them per sample (or pycocoevalcap's
            ``gts`` dict); hypotheses: one string per sample (or ``res``).
        backend: ``"rust"`` (default): voxlm's transcription of the jar's scorer (no Java);
            ``"java"``: pycocoevalcap's ``Meteor`` class running the jar (for checking).
        jar: ``meteor-1.5.jar`` whose language data (synonyms, function words, nonbreaking
            prefixes) the Rust backend reads; default: the one pycocoevalcap installs.
        paraphrase: the paraphrase table; default ``<jar dir>/data/paraphrase-en.gz``.

    Newlines and carriage returns become spaces (the jar reads one line per sample).
    The Rust backend loads the data once per process (a few seconds) and caches it.
    """
    refs, hyps = _as_lists(references, hypotheses)
    if not hyps:
        raise ShapeError("hypotheses: expected at least one sample, got an empty corpus")
    if backend == "rust":
        jar_path = os.fspath(jar) if jar is not None else meteor_jar_path()
        para = os.fspath(paraphrase) if paraphrase is not None else None
        score, per = _core.meteor_score(refs, hyps, jar_path, para)
        return float(score), np.asarray(per, dtype=np.float64)
    if backend != "java":
        raise ConfigError(f"backend: expected 'rust' or 'java', got {backend!r}")
    if jar is not None or paraphrase is not None:
        raise ConfigError(
            "backend='java': runs pycocoevalcap's own jar; jar/paraphrase not supported"
        )
    if not java_available():
        raise ConfigError(
            "METEOR backend='java': needs Java for pycocoevalcap's meteor-1.5.jar; none on PATH"
        )
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError as e:
        raise ConfigError(
            "METEOR backend='java': needs pycocoevalcap (pip install pycocoevalcap)"
        ) from e

    gts = {i: [_meteor_clean(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [_meteor_clean(h)] for i, h in enumerate(hyps)}
    m = Meteor()  # its __del__ ends the Java process
    score, per = m.compute_score(gts, res)
    del m
    return float(score), np.asarray(per, dtype=np.float64)


def _meteor_available(backend: str) -> bool:
    if backend == "java":
        return java_available()
    try:
        return os.path.isfile(meteor_jar_path())
    except ConfigError:
        return False


def report_scores(
    references: _Corpus,
    hypotheses: _Corpus,
    tokenize: str = "whitespace",
    meteor: bool | None = None,
    per_sample: bool = False,
    meteor_backend: str = "rust",
) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR) of generated reports, as pycocoevalcap.

    Args:
        references: one reference string or a list of them per sample; or a dict ``{id: [refs]}``
            (pycocoevalcap's ``gts``).
        hypotheses: one generated string per sample; or a dict ``{id: [hyp]}`` (``res``).
        tokenize: ``"whitespace"`` scores the text as given (as Dia-LLaMA and most report
            generation code call pycocoevalcap); ``"ptb"`` first runs pycocoevalcap's
            PTBTokenizer (Java; lower-cases and drops punctuation, as the COCO caption eval).
        meteor: True to require METEOR 1.5, False to skip it, None to include it when its
            language data (pycocoevalcap's jar) is available (and Java, for the Java backend).
        meteor_backend: ``"rust"`` (default, no Java) or ``"java"`` (pycocoevalcap's jar), see
            :func:`meteor_score`.
        per_sample: also return ``"per_sample"``: a dict of float64 arrays, one value per sample.

    Returns:
        ``{"BLEU-1", ..., "BLEU-4", "ROUGE-L", "CIDEr"[, "METEOR"][, "per_sample"]}``.
        Empty strings are scored as pycocoevalcap scores them (zero overlap).
    """
    refs, hyps = _as_lists(references, hypotheses)
    if tokenize == "ptb":
        refs, hyps = _ptb_tokenize(refs, hyps)
    elif tokenize != "whitespace":
        raise ConfigError(f"tokenize: expected 'whitespace' or 'ptb', got {tokenize!r}")
    want_meteor = meteor if meteor is not None else _meteor_available(meteor_backend)
    corpus = per = None
    if want_meteor and meteor_backend == "rust":
        # one Rust call: BLEU/ROUGE/CIDEr and METEOR computed at the same time
        try:
            jar = meteor_jar_path()
            corpus, per = _core.report_scores(refs, hyps, jar, None)
        except ConfigError:
            if meteor:
                raise
    if corpus is None or per is None:
        corpus, per = _core.report_scores(refs, hyps)
        if want_meteor and meteor_backend != "rust":
            try:
                per = dict(per)
                corpus = dict(corpus)
                corpus["METEOR"], per["METEOR"] = meteor_score(refs, hyps, backend=meteor_backend)
            except ConfigError:
                if meteor:
                    raise
    out: dict[str, Any] = dict(corpus)
    if per_sample:
        out["per_sample"] = dict(per)
    return out


def _int_array(x: Any, name: str, ndim: int) -> np.ndarray:
    try:
        a = np.asarray(x)
    except ValueError as e:  # ragged input
        raise ShapeError(
            f"{name}: expected a {ndim}-d array of integers, got a ragged sequence"
        ) from e
    if a.dtype == object:
        raise ShapeError(f"{name}: expected a {ndim}-d array of integers, got a ragged sequence")
    if a.ndim != ndim:
        raise ShapeError(f"{name}: expected a {ndim}-d array, got shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise ConfigError(f"{name}: expected integer labels, got non-integer or NaN values")
    elif a.dtype.kind == "b":
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise ShapeError(f"{name}: expected integer labels, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def multilabel_scores(
    y_true: Any, y_pred: Any, pos_label: int = 1, convention: str = "dia_llama"
) -> dict[str, Any]:
    """Clinical efficacy over multi-label findings.

    Args:
        y_true, y_pred: ``[N, L]`` label codes (CheXbert: 0 blank, 1 positive, 2 negative,
            3 uncertain; or 0/1); a label counts as positive where it equals ``pos_label``.
        convention: ``"dia_llama"`` reproduces Dia-LLaMA's ``metrics_clinical.py``
            (``tp / (tp + fp + 1e-6)``, ...); ``"sklearn"`` equals
            ``precision_recall_fscore_support(zero_division=0)``.

    Returns per-label arrays ``precision``, ``recall``, ``f1``, ``support`` and the scalars
    ``{precision,recall,f1}_{macro,micro,example}``.
    """
    t = _int_array(y_true, "y_true", 2)
    p = _int_array(y_pred, "y_pred", 2)
    return dict(_core.multilabel_scores(t, p, int(pos_label), convention))


def classification_scores(y_true: Any, y_pred: Any, labels: Sequence[int]) -> dict[str, Any]:
    """Scoring metrics over an explicit label list (PI-RADS: ``labels=[1, 2, 3, 4, 5]``).

    Precision/recall/F1 are per label in ``labels`` order and macro-averaged over all of them
    (0 where undefined, scikit-learn's ``zero_division=0``); ``confusion_matrix`` rows are true
    labels; ``quadratic_kappa`` is ``cohen_kappa_score(weights="quadratic", labels=labels)``;
    MSE and MAE are on the label values.
    """
    t = _int_array(y_true, "y_true", 1)
    p = _int_array(y_pred, "y_pred", 1)
    return dict(_core.classification_scores(t, p, [int(v) for v in labels]))


def diagnostic_prompt(
    labels: Sequence[int], conditions: Sequence[str] = CHEXBERT_CONDITIONS
) -> str:
    """Dia-LLaMA's diagnostic text prompt: ``The "{disease}" is positive/negative. `` per label.

    ``labels[i]`` is 1 (positive) or 0 (negative) for ``conditions[i]``.
    """
    if len(labels) != len(conditions):
        raise ShapeError(
            f"labels: expected {len(conditions)} values (one per condition), got {len(labels)}"
        )
    parts = []
    for disease, label in zip(conditions, labels):
        if label not in (0, 1):
            raise ConfigError(f"labels: expected 0 or 1, got {label!r} for {disease!r}")
        state = "positive" if label == 1 else "negative"
        parts.append(f'The "{disease}" is {state}. ')
    return "".join(parts)


_PROMPT_RE = re.compile(r'The "([^"]+)" is (positive|negative)\.')


def parse_diagnostic_prompt(
    text: str, conditions: Sequence[str] = CHEXBERT_CONDITIONS
) -> np.ndarray:
    """Labels stated in a diagnostic prompt: ``[L]`` int64, 1 positive, 0 negative, -1 absent."""
    out = np.full(len(conditions), -1, dtype=np.int64)
    index = {c: i for i, c in enumerate(conditions)}
    for disease, state in _PROMPT_RE.findall(text):
        if disease in index:
            out[index[disease]] = 1 if state == "positive" else 0
    return out


def parse_choice(text: str, options: Mapping[str, str] | str = "ABCD") -> str | None:
    """The option letter a generated answer picks, or None.

    Tries, in order: a leading letter (``"B"``, ``"(B)"``, ``"B. text"``, ``"B: text"``);
    ``"answer is B"`` / ``"answer: B"``; and, when ``options`` maps letters to option texts, the one
    option text the answer contains (case-insensitive).
    """
    if not isinstance(text, str):
        raise VoxlmTypeError(f"parse_choice text: expected str, got {type(text).__name__}")
    if not isinstance(options, (str, Mapping)):
        raise VoxlmTypeError(
            f"parse_choice options: expected letters such as 'ABCD' or a dict of option texts, "
            f"got {type(options).__name__}"
        )
    letters = "".join(options) if isinstance(options, Mapping) else options
    s = text.strip()
    m = re.match(r"^\(?([A-Za-z])(?:[\.\):,]|\s|$)", s)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    m = re.search(r"answer(?:\s+is|:)?\s*:?\s*\(?([A-Za-z])(?![A-Za-z])", s, re.IGNORECASE)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    if isinstance(options, Mapping):
        low = s.lower()
        hits = [k for k, v in options.items() if v and v.lower() in low]
        if len(hits) == 1:
            return hits[0]
    return None


def vqa_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    options: Sequence[Mapping[str, str] | str] | None = None,
) -> float:
    """Multiple-choice accuracy: the fraction of generated answers whose parsed letter equals
    the answer letter (unparseable answers count as wrong)."""
    for name, xs in (("predictions", predictions), ("answers", answers)):
        if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence):
            raise VoxlmTypeError(f"{name}: expected a list of str, got {type(xs).__name__}")
    if len(predictions) != len(answers):
        raise ShapeError(
            f"answers: expected {len(predictions)} (one per prediction), got {len(answers)}"
        )
    if not predictions:
        raise ShapeError("predictions: expected at least one answer, got none")
    opts = options if options is not None else ["ABCD"] * len(predictions)
    if len(opts) != len(predictions):
        raise ShapeError(f"options: expected {len(predictions)} entries, got {len(opts)}")
    for name, xs in (("predictions", predictions), ("answers", answers)):
        for i, x in enumerate(xs):
            if not isinstance(x, str):
                raise VoxlmTypeError(f"{name}[{i}]: expected str, got {type(x).__name__}")
    hits = sum(
        parse_choice(p, o) == a.strip().upper() for p, a, o in zip(predictions, answers, opts)
    )
    return hits / len(predictions)


from .green import green  # noqa: E402,F401  (GREEN, the AMOS-MM metric: voxlm.green)
