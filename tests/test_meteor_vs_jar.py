"""METEOR 1.5 in Rust (voxlm, no Java) against pycocoevalcap's meteor-1.5.jar.

The reference is pycocoevalcap's own ``Meteor`` class (``java -jar meteor-1.5.jar - - -stdio
-l en -norm``), one process per test session: ``Meteor._stat`` gives each sample's ``SCORE``
reply (the 23 sufficient statistics), then the ``EVAL`` line that ``Meteor.compute_score``
sends gives every per-sentence score and the corpus score.

Tolerance: the statistics must be equal as strings (they are whole numbers). Scores: the jar
prints each double with ``Double.toString`` (enough digits to round-trip), so Python's
``float()`` gets the jar's double back exactly; we compare with ``rtol=1e-12``, which is a few
ulps, only to allow for ``Math.pow`` (HotSpot's intrinsic) and glibc's ``pow`` differing in the
last bit of the fragmentation penalty. In practice the values are bit-identical.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from voxlm.datasets import dia_llama_results
from voxlm.exceptions import ConfigError
from voxlm.metrics import java_available, meteor_jar_path, meteor_score, report_scores

try:
    JAR = meteor_jar_path()
    HAVE_JAR = os.path.isfile(JAR)
except ConfigError:
    JAR, HAVE_JAR = "", False

needs_jar = pytest.mark.skipif(not HAVE_JAR, reason="needs pycocoevalcap's meteor-1.5.jar")
needs_java = pytest.mark.skipif(
    not (HAVE_JAR and java_available()), reason="the reference needs Java and pycocoevalcap"
)


def _clean(s: str) -> str:
    return s.replace("\n", " ").replace("\r", " ")


def jar_scores(m, refs: list[list[str]], hyps: list[str]) -> tuple[list[str], float, list[float]]:
    """SCORE replies, then the EVAL line exactly as ``Meteor.compute_score`` sends it."""
    stats = [m._stat(_clean(h), [_clean(r) for r in rs]) for rs, h in zip(refs, hyps)]
    with m.lock:
        m.meteor_p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        m.meteor_p.stdin.flush()
        per = [float(m.meteor_p.stdout.readline().strip()) for _ in stats]
        corpus = float(m.meteor_p.stdout.readline().strip())
    return stats, corpus, per


@pytest.fixture(scope="module")
def jar():
    from pycocoevalcap.meteor.meteor import Meteor

    m = Meteor()
    yield m
    del m


@pytest.fixture(scope="module")
def dia(jar):
    d = dia_llama_results()
    refs, hyps = [[r] for r in d.references], list(d.predictions)
    return refs, hyps, jar_scores(jar, refs, hyps)


def check_equal(refs, hyps, ref_out):
    from voxlm import _core

    stats, corpus, per = ref_out
    got_stats = _core.meteor_stats(refs, hyps, JAR)
    bad = [i for i, (a, b) in enumerate(zip(got_stats, stats)) if a != b]
    assert not bad, (
        f"{len(bad)} samples differ, first {bad[0]}: {got_stats[bad[0]]} vs {stats[bad[0]]}"
    )
    score, per_got = meteor_score(refs, hyps)
    assert per_got.dtype == np.float64 and per_got.shape == (len(hyps),)
    np.testing.assert_allclose(per_got, per, rtol=1e-12, atol=0)
    assert score == pytest.approx(corpus, rel=1e-12, abs=0)
    # report_scores computes METEOR in the same Rust call as BLEU/ROUGE/CIDEr: the same values
    s = report_scores(refs, hyps, per_sample=True)
    assert s["METEOR"] == score
    np.testing.assert_array_equal(s["per_sample"]["METEOR"], per_got)


@needs_java
def test_dia_llama_362_pairs_equal_to_jar(dia):
    refs, hyps, ref_out = dia
    assert len(hyps) == 362
    check_equal(refs, hyps, ref_out)


_WORDS = (
    "The THE the a an of is big large huge lung lungs Lung nodule nodules noduled opacity "
    "opacities effusion effusions pleural enlarged enlargement heart cardiac size normal abnormal "
    "U.S. Dr. No. No 5 3.5 1,000 2,5 ... .. . , ; : ( ) [ ] - -- – — don't it's 's 1990's "
    "“q” '' `` mm. cm 10mm x e.g. i.e. | || DOTMULTI running ran runs happy glad car automobile "
    "small little ΣΑΣ Ärzte naïve 😀 a'b 'a b' ab-cd 3-4 x.-y in addition to as well well-defined "
    "ill-defined however right left upper lower lobe lobes segment bilateral seen noted "
    'no evidence of consolidation pneumothorax atelectasis calcified calcification ? ! " / & % $ #'
).split()


def _sentence(rng: random.Random) -> str:
    k = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 40])
    ws = [rng.choice(_WORDS) for _ in range(k)]
    if ws and rng.random() < 0.3:  # repeated words and phrases
        ws += ws[: rng.randint(1, len(ws))]
    s = rng.choice([" ", " ", " ", "  ", "\n", "\t", "\u00a0"]).join(ws)
    r = rng.random()
    if r < 0.05:
        return ""
    if r < 0.1:
        return "   "
    if r < 0.15:
        return " " + s + " "
    if r < 0.2:
        return s + " ||| " + s  # pycocoevalcap's separator inside a text
    return s


def random_corpus(seed: int, n: int) -> tuple[list[list[str]], list[str]]:
    rng = random.Random(seed)
    refs, hyps = [], []
    for _ in range(n):
        rs = [_sentence(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        h = _sentence(rng)
        u = rng.random()
        if u < 0.1 and rs[0].strip():
            h = rs[0]  # identical
        elif u < 0.15:
            h = rs[0].upper()  # case only
        elif u < 0.2:
            h = " ".join(reversed(rs[0].split()))  # same words, other order
        refs.append(rs)
        hyps.append(h)
    return refs, hyps


@needs_java
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_corpora_equal_to_jar(jar, seed):
    refs, hyps = random_corpus(seed, 80)
    check_equal(refs, hyps, jar_scores(jar, refs, hyps))


@needs_java
def test_java_backend_is_pycocoevalcap(jar, dia, monkeypatch):
    import pycocoevalcap.meteor.meteor as pm

    # backend="java" runs pycocoevalcap's Meteor.compute_score; reuse the session's jar process
    monkeypatch.setattr(pm, "Meteor", lambda: jar)
    refs, hyps, _ = dia
    s, p = meteor_score(refs[:40], hyps[:40], backend="java")
    r, q = meteor_score(refs[:40], hyps[:40])
    assert s == r and np.array_equal(p, q)
    assert report_scores(refs[:40], hyps[:40], meteor_backend="java")["METEOR"] == r


@needs_jar
def test_report_scores_meteor_without_java(monkeypatch):
    import voxlm.metrics as vm

    d = dia_llama_results()
    refs, hyps = [[r] for r in d.references[:30]], d.predictions[:30]
    want, want_per = meteor_score(refs, hyps)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(vm, "java_available", lambda: False)
    s = report_scores(refs, hyps, per_sample=True)  # METEOR is a default metric, no Java
    assert s["METEOR"] == want
    np.testing.assert_array_equal(s["per_sample"]["METEOR"], want_per)
    assert 0.0 < want < 1.0
    # dict input (pycocoevalcap's gts / res) gives the same
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    assert meteor_score(gts, res)[0] == want


@needs_jar
def test_identical_and_empty():
    s, per = meteor_score(
        [["the lungs are clear ."], ["x y"], ["a b c"]], ["the lungs are clear .", "", "c b a"]
    )
    assert per[0] == 1.0  # identical: precision = recall = 1, one chunk, no penalty
    assert per[1] == 0.0
    assert 0.0 < per[2] < 1.0


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="backend"):
        meteor_score([["a"]], ["a"], backend="perl")
    missing = tmp_path / "nope" / "meteor-1.5.jar"
    with pytest.raises(ConfigError, match="nope"):
        meteor_score([["a"]], ["a"], jar=missing)
    not_zip = tmp_path / "fake.jar"
    not_zip.write_bytes(b"not a zip at all" * 10)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "paraphrase-en.gz").write_bytes(b"\x1f\x8b" + b"\0" * 30)
    with pytest.raises(ConfigError, match="fake.jar"):
        meteor_score([["a"]], ["a"], jar=not_zip)
    from voxlm.exceptions import ShapeError

    if HAVE_JAR:
        with pytest.raises(ShapeError):
            meteor_score([["a"], ["b"]], ["a"])
        with pytest.raises(ShapeError):
            meteor_score([[]], ["a"])
