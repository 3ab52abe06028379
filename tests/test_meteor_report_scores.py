"""``report_scores`` with METEOR: one Rust call computes BLEU-1..4, ROUGE-L, CIDEr-D and METEOR.

Checked against the separate computations (``report_scores(meteor=False)`` and
``meteor_score``, each tested against pycocoevalcap / its jar elsewhere) with ``==`` (the same
Rust code runs, so the values must be identical), and BLEU/ROUGE/CIDEr against pycocoevalcap's
``Bleu``/``Rouge``/``Cider`` (tolerance 1e-9 as in ``test_metrics_vs_pycocoevalcap.py``) on
texts whose white space makes ``split(" ")`` (ROUGE-L) differ from ``split()`` (BLEU, CIDEr-D):
the Rust side reuses the whitespace tokens only where both splits agree.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from voxlm.exceptions import ConfigError, ShapeError
from voxlm.metrics import meteor_jar_path, meteor_score, report_scores

try:
    HAVE_JAR = os.path.isfile(meteor_jar_path())
except ConfigError:
    HAVE_JAR = False

needs_jar = pytest.mark.skipif(not HAVE_JAR, reason="needs pycocoevalcap's meteor-1.5.jar")

_WORDS = "the lung lungs is clear no effusion nodule nodules of right left upper lobe . ,".split()
_SEPS = [" ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u001f", " \n "]


def corpus(seed: int, n: int) -> tuple[list[list[str]], list[str]]:
    rng = random.Random(seed)

    def sentence() -> str:
        ws = [rng.choice(_WORDS) for _ in range(rng.choice([0, 1, 3, 8, 20]))]
        s = "".join(w + rng.choice(_SEPS) for w in ws[:-1]) + (ws[-1] if ws else "")
        r = rng.random()
        return " " + s if r < 0.1 else s + " " if r < 0.2 else s

    refs = [[sentence() for _ in range(rng.choice([1, 1, 2]))] for _ in range(n)]
    return refs, [sentence() for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_split_shortcut_equals_pycocoevalcap(seed):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, hyps = corpus(seed, 120)
    got = report_scores(refs, hyps, meteor=False, per_sample=True)
    gts = {i: list(r) for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_per = Rouge().compute_score(gts, res)
    cider, cider_per = Cider().compute_score(gts, res)
    want = {f"BLEU-{k + 1}": (bleu[k], bleu_per[k]) for k in range(4)}
    want |= {"ROUGE-L": (rouge, rouge_per), "CIDEr": (cider, cider_per)}
    for k, (v, per) in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9, rel=0), k
        np.testing.assert_allclose(got["per_sample"][k], per, rtol=0, atol=1e-9, err_msg=k)


@needs_jar
@pytest.mark.parametrize("seed", [0, 3])
def test_one_call_equals_separate_calls(seed):
    refs, hyps = corpus(seed, 150)
    both = report_scores(refs, hyps, meteor=True, per_sample=True)
    alone = report_scores(refs, hyps, meteor=False, per_sample=True)
    score, per = meteor_score(refs, hyps)
    assert list(both) == [*list(alone)[:-1], "METEOR", "per_sample"]
    assert both["METEOR"] == score
    np.testing.assert_array_equal(both["per_sample"]["METEOR"], per)
    for k, v in alone.items():
        if k != "per_sample":
            assert both[k] == v, k
            np.testing.assert_array_equal(both["per_sample"][k], alone["per_sample"][k])


@needs_jar
def test_one_call_bad_inputs():
    with pytest.raises(ShapeError, match="one reference list per hypothesis"):
        report_scores([["a"], ["b"]], ["a"], meteor=True)
    with pytest.raises(ShapeError, match="at least one sample"):
        report_scores([], [], meteor=True)
    with pytest.raises(ShapeError, match="at least one reference"):
        report_scores([[]], ["a"], meteor=True)
