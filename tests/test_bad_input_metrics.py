"""Bad input to the report and VQA metrics: a VoxlmTypeError naming the argument and the type
given (a None reference was a TypeError from list(None); a str corpus was scored per character;
parse_choice(5) an AttributeError)."""

from __future__ import annotations

import pytest

from voxlm import metrics
from voxlm.exceptions import VoxlmTypeError


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: metrics.report_scores([None], ["b"]), ("references[0]", "NoneType")),
        (lambda: metrics.report_scores(["a"], [None]), ("hypotheses[0]", "NoneType")),
        (lambda: metrics.report_scores("abc", "abd"), ("references", "got str")),
        (lambda: metrics.report_scores(["a"], "abd"), ("hypotheses", "got str")),
        (lambda: metrics.report_scores(5, ["a"]), ("references", "got int")),
        (lambda: metrics.meteor_score([None], ["a"]), ("references[0]", "NoneType")),
        (lambda: metrics.vqa_accuracy([None], ["A"]), ("predictions[0]", "NoneType")),
        (lambda: metrics.vqa_accuracy(["A"], [3]), ("answers[0]", "int")),
        (lambda: metrics.vqa_accuracy(5, ["A"]), ("predictions", "int")),
        (lambda: metrics.parse_choice(5), ("parse_choice text", "int")),
        (lambda: metrics.parse_choice("A", options=3), ("parse_choice options", "int")),
    ],
)
def test_metric_arguments(call, words):
    with pytest.raises(VoxlmTypeError) as e:
        call()
    assert all(w in str(e.value) for w in words), str(e.value)


def test_valid_calls_unchanged():
    s = metrics.report_scores(["the heart is normal"], ["the heart is normal"], meteor=False)
    assert s["BLEU-1"] > 0.99 and s["ROUGE-L"] > 0.99
    assert metrics.vqa_accuracy(["B. liver", "answer is C"], ["B", "D"]) == 0.5
    assert metrics.parse_choice("(c) spleen") == "C"
