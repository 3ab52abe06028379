"""bench/fidelity.py's statistics and PICG diagnostics (the experiments themselves are not run
here: they take CPU minutes): the 95 % interval against scipy's Student t, the teacher
diagnostics on a constant teacher (what PICG's guideline network gave while its adapter gates
were zero) and on the ground-truth control teacher."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fid():
    spec = importlib.util.spec_from_file_location("fidelity", ROOT / "bench" / "fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ci95_is_students_t(fid):
    from scipy import stats

    for v in ([0.1, 0.3, 0.2], [1.0, 2.0, 4.0, 8.0, 9.5], list(np.linspace(0, 1, 12))):
        got = fid.ci95(v)
        half = stats.t.ppf(0.975, len(v) - 1) * stats.sem(v)
        assert got["mean"] == pytest.approx(np.mean(v), abs=1e-12)
        assert got["ci95"] == pytest.approx(half, rel=2e-4)  # the table has 3 decimals of t
    assert fid.ci95([0.5])["n"] == 1 and fid.ci95([])["n"] == 0
    assert fid._verdict(fid.ci95([0.1, 0.12, 0.11])).startswith("holds")
    assert fid._verdict(fid.ci95([-0.1, 0.12, 0.01])).startswith("not shown")


def test_teacher_diagnostics(fid, tmp_path):
    from voxlm import synth
    from voxlm.datasets import read_records

    root = synth.prostate_mri(tmp_path / "p", 30, seed=1, layout="prostate-biopsy")
    recs = [
        r
        for s in ("train", "validation", "test")
        for r in read_records("prostate-biopsy", root, split=s)
    ]
    const = {str(r["id"]): torch.full((16,), 0.3) for r in recs}
    st = fid.teacher_stats(const, recs)
    assert st["mean_pairwise_cosine"] == pytest.approx(1.0)
    assert st["between_case_std_over_mean_abs"] == 0.0
    gt = fid.gt_teacher(root, recs, 16)
    sg = fid.teacher_stats(gt, recs)
    assert sg["mean_pairwise_cosine"] < 0.5 and sg["between_case_std_over_mean_abs"] > 0.5
    # the control teacher encodes the rule features: the score is linearly readable from it
    assert sg["probe_accuracy"] > sg["majority_accuracy"] + 0.2


def test_report_cache_is_shared_by_arms_and_experiments(fid, tmp_path):
    """The data and the text-only base LLM depend on the seed and the size, never on the arm or
    the experiment: Dia-LLaMA on/off and RAD3D-Prefix on/off of a seed get the same folders;
    another seed, warm-up length, case count or prevalence gets other folders."""
    size = {**fid.REPORT_SIZES["dia_llama"][False], "prevalence": dict(fid.REPORT_PREVALENCE)}
    # the experiments share data and base LLM: their sizes differ only in the recipe's steps
    rad = fid.REPORT_SIZES["rad3d_prefix"][False]
    assert {k: v for k, v in rad.items() if k != "steps"} == {
        k: v for k, v in size.items() if k not in ("steps", "prevalence")
    }
    arms = [
        ("dia_llama", {}),
        ("dia_llama", {"use_prototypes": False, "use_diagnostic_prompts": False}),
        ("rad3d_prefix", {"anomaly_aware": True}),
        ("rad3d_prefix", {"anomaly_aware": False}),
    ]
    dirs = {fid.report_cache_dirs(r, o, 0, size, tmp_path)[:2] for r, o in arms}
    assert len(dirs) == 1
    data0, llm0 = dirs.pop()
    assert data0.parent == tmp_path and llm0.parent == tmp_path
    for seed, change in ((1, {}), (0, {"lm_steps": 301}), (0, {"n": 121})):
        d, m, key = fid.report_cache_dirs("dia_llama", {}, seed, {**size, **change}, tmp_path)
        assert m != llm0
        assert (d != data0) == (seed != 0 or "n" in change)
        assert key["llm"]["lm_steps"] == size["lm_steps"] + ("lm_steps" in change)
    other = {**size, "prevalence": {"cardiomegaly": 0.5}}
    d, m, _ = fid.report_cache_dirs("rad3d_prefix", {}, 0, other, tmp_path)
    assert d != data0 and m != llm0
