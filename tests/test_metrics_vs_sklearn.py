"""Scoring and clinical-efficacy metrics against scikit-learn (1e-12) and against Dia-LLaMA's
own metrics_clinical.py formula (transcribed below)."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

import voxlm
from voxlm.datasets import ctrg_finding_labels, dia_llama_results
from voxlm.metrics import (
    CHEXBERT_CONDITIONS,
    classification_scores,
    diagnostic_prompt,
    multilabel_scores,
    parse_choice,
    parse_diagnostic_prompt,
    vqa_accuracy,
)

TOL = 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_classification_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = [1, 2, 3, 4, 5]
    n = int(rng.integers(5, 300))
    y = rng.integers(1, 6, n)
    p = np.clip(y + rng.integers(-2, 3, n), 1, 5) if seed % 2 else rng.integers(1, 6, n)
    if seed == 4:
        p[p == 3] = 4  # a class never predicted: precision undefined -> 0
    s = classification_scores(y, p, labels)
    P, R, F, S = precision_recall_fscore_support(y, p, labels=labels, average=None, zero_division=0)
    np.testing.assert_allclose(s["precision"], P, atol=TOL)
    np.testing.assert_allclose(s["recall"], R, atol=TOL)
    np.testing.assert_allclose(s["f1"], F, atol=TOL)
    np.testing.assert_array_equal(s["support"], S)
    Pm, Rm, Fm, _ = precision_recall_fscore_support(
        y, p, labels=labels, average="macro", zero_division=0
    )
    assert s["precision_macro"] == pytest.approx(Pm, abs=TOL)
    assert s["recall_macro"] == pytest.approx(Rm, abs=TOL)
    assert s["f1_macro"] == pytest.approx(Fm, abs=TOL)
    assert s["accuracy"] == pytest.approx(accuracy_score(y, p), abs=TOL)
    assert s["mse"] == pytest.approx(mean_squared_error(y, p), abs=TOL)
    assert s["mae"] == pytest.approx(mean_absolute_error(y, p), abs=TOL)
    np.testing.assert_array_equal(s["confusion_matrix"], confusion_matrix(y, p, labels=labels))
    assert s["quadratic_kappa"] == pytest.approx(
        cohen_kappa_score(y, p, labels=labels, weights="quadratic"), abs=TOL
    )


def test_labels_outside_the_list_count_like_sklearn():
    y = np.array([1, 2, 3, 6, 2])
    p = np.array([1, 6, 3, 2, 2])
    s = classification_scores(y, p, [1, 2, 3])
    P, R, F, _ = precision_recall_fscore_support(
        y, p, labels=[1, 2, 3], average=None, zero_division=0
    )
    np.testing.assert_allclose(s["precision"], P, atol=TOL)
    np.testing.assert_allclose(s["recall"], R, atol=TOL)
    np.testing.assert_allclose(s["f1"], F, atol=TOL)


def dia_llama_ce(gts, res):
    """Dia-LLaMA utils/metrics_clinical.py / cls_label_ce.py, transcribed."""
    res_c, gts_c = res == 1, gts == 1
    tp = (res_c * gts_c).astype(float)
    fp = (res_c * ~gts_c).astype(float)
    fn = (~res_c * gts_c).astype(float)
    tp_cls, fp_cls, fn_cls = tp.sum(0), fp.sum(0), fn.sum(0)
    tp_eg, fp_eg, fn_eg = tp.sum(1), fp.sum(1), fn.sum(1)
    return {
        "precision": np.nan_to_num(tp_cls / (tp_cls + fp_cls + 1e-6)),
        "f1": np.nan_to_num(tp_cls / (tp_cls + 0.5 * (fp_cls + fn_cls) + 1e-6)),
        "precision_macro": np.nan_to_num(tp_cls / (tp_cls + fp_cls + 1e-6)).mean(),
        "recall_macro": np.nan_to_num(tp_cls / (tp_cls + fn_cls + 1e-6)).mean(),
        "f1_macro": np.nan_to_num(tp_cls / (tp_cls + 0.5 * (fp_cls + fn_cls) + 1e-6)).mean(),
        "precision_micro": tp_cls.sum() / (tp_cls.sum() + fp_cls.sum() + 1e-6),
        "recall_micro": tp_cls.sum() / (tp_cls.sum() + fn_cls.sum() + 1e-6),
        "f1_micro": tp_cls.sum() / (tp_cls.sum() + 0.5 * (fp_cls.sum() + fn_cls.sum()) + 1e-6),
        "precision_example": np.nan_to_num(tp_eg / (tp_eg + fp_eg + 1e-6)).mean(),
        "recall_example": np.nan_to_num(tp_eg / (tp_eg + fn_eg + 1e-6)).mean(),
        "f1_example": np.nan_to_num(tp_eg / (tp_eg + 0.5 * (fp_eg + fn_eg) + 1e-6)).mean(),
    }


def test_dia_llama_prompts_vs_labels_reproduce_its_ce_code():
    d = dia_llama_results()
    pred = np.stack([parse_diagnostic_prompt(q) for q in d.prompts])
    assert (pred >= 0).all()  # every prompt states all 14 findings
    got = multilabel_scores(d.labels, pred, convention="dia_llama")
    ref = dia_llama_ce(d.labels, pred)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, rtol=0, atol=TOL, err_msg=k)


@pytest.mark.parametrize("seed", range(3))
def test_multilabel_sklearn_convention(seed):
    _, codes, _ = ctrg_finding_labels()
    rng = np.random.default_rng(seed)
    pred = codes.copy()
    flip = rng.random(codes.shape) < 0.2
    pred[flip] = rng.integers(0, 4, flip.sum())
    got = multilabel_scores(codes, pred, convention="sklearn")
    yt, yp = (codes == 1).astype(int), (pred == 1).astype(int)
    P, R, F, S = precision_recall_fscore_support(yt, yp, average=None, zero_division=0)
    np.testing.assert_allclose(got["precision"], P, atol=TOL)
    np.testing.assert_allclose(got["recall"], R, atol=TOL)
    np.testing.assert_allclose(got["f1"], F, atol=TOL)
    np.testing.assert_array_equal(got["support"], S)
    for avg, suffix in [("macro", "macro"), ("micro", "micro"), ("samples", "example")]:
        p, r, f, _ = precision_recall_fscore_support(yt, yp, average=avg, zero_division=0)
        assert got[f"precision_{suffix}"] == pytest.approx(p, abs=TOL)
        assert got[f"recall_{suffix}"] == pytest.approx(r, abs=TOL)
        assert got[f"f1_{suffix}"] == pytest.approx(f, abs=TOL)
    ref = dia_llama_ce(codes, pred)
    got_d = multilabel_scores(codes, pred)
    for k, v in ref.items():
        np.testing.assert_allclose(got_d[k], v, atol=TOL, err_msg=k)


def test_diagnostic_prompt_round_trip_matches_released_prompts():
    d = dia_llama_results()
    q = d.prompts[0]
    labels = parse_diagnostic_prompt(q)
    prompt = diagnostic_prompt(labels.tolist())
    assert prompt in q  # byte-identical to what Dia-LLaMA fed its model
    assert prompt.startswith('The "enlarged cardiomediastinum" is ')
    assert len(CHEXBERT_CONDITIONS) == 14
    with pytest.raises(voxlm.ShapeError):
        diagnostic_prompt([1, 0])
    with pytest.raises(voxlm.ConfigError):
        diagnostic_prompt([2] * 14)
    assert (parse_diagnostic_prompt("nothing here") == -1).all()


def test_vqa_choice_parsing():
    assert parse_choice("B") == "B"
    assert parse_choice("(C) pleural effusion") == "C"
    assert parse_choice("D. Liver") == "D"
    assert parse_choice("The answer is A.") == "A"
    assert parse_choice("Answer: b") == "B"
    assert parse_choice("Abdomen") is None  # a word starting with a letter is not a choice
    assert parse_choice("the liver", {"A": "spleen", "B": "liver"}) == "B"
    assert parse_choice("E", "ABCD") is None
    preds = ["A", "The answer is B", "C. kidney", "unsure"]
    assert vqa_accuracy(preds, ["A", "B", "D", "A"]) == 0.5
    with pytest.raises(voxlm.ShapeError):
        vqa_accuracy(["A"], ["A", "B"])


def test_bad_metric_inputs():
    with pytest.raises(voxlm.ShapeError, match="expected 3 predictions"):
        classification_scores([1, 2, 3], [1, 2], [1, 2, 3])
    with pytest.raises(voxlm.ShapeError, match="at least one sample"):
        classification_scores([], [], [1, 2])
    with pytest.raises(voxlm.ConfigError, match="appears twice"):
        classification_scores([1], [1], [1, 1])
    with pytest.raises(voxlm.ConfigError, match="NaN"):
        classification_scores([1.0, np.nan], [1, 2], [1, 2])
    with pytest.raises(voxlm.ShapeError, match="2-d"):
        multilabel_scores([1, 0], [1, 0])
    with pytest.raises(voxlm.ShapeError, match="as y_true"):
        multilabel_scores(np.zeros((2, 14), int), np.zeros((3, 14), int))
    with pytest.raises(voxlm.ConfigError, match="convention"):
        multilabel_scores(np.zeros((2, 14), int), np.zeros((2, 14), int), convention="x")
    with pytest.raises(voxlm.ShapeError, match="ragged"):
        classification_scores([[1], [1, 2]], [1, 2], [1, 2])
