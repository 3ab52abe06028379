"""bench/metrics: report metrics on 10k report pairs, voxlm against pycocoevalcap, in one run.

The 362 Dia-LLaMA report pairs are repeated to 10,000. Both sides compute BLEU-1..4, ROUGE-L and
CIDEr-D on the same text (METEOR excluded). ``python bench_metrics.py meteor 2000 10000`` runs
:func:`run_meteor`: report_scores with METEOR (voxlm's Rust METEOR 1.5, no Java) against
pycocoevalcap's four scorers with its jar.
"""

from __future__ import annotations

import sys
import time

from common import machine, median_time

N_PAIRS = 10_000


def run(repeats_ref: int = 3, repeats_vox: int = 7) -> str:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from voxlm.datasets import dia_llama_results
    from voxlm.metrics import report_scores

    d = dia_llama_results()
    reps = -(-N_PAIRS // len(d.ids))
    refs = (d.references * reps)[:N_PAIRS]
    hyps = (d.predictions * reps)[:N_PAIRS]
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}

    def coco():
        b, _ = Bleu(4).compute_score(gts, res, verbose=0)
        r, _ = Rouge().compute_score(gts, res)
        c, _ = Cider().compute_score(gts, res)
        return b, r, c

    def vox():
        return report_scores(refs, hyps, meteor=False)

    ref_vals, got = coco(), vox()
    assert abs(got["BLEU-4"] - ref_vals[0][3]) < 1e-9 and abs(got["CIDEr"] - ref_vals[2]) < 1e-9
    t_ref, all_ref = median_time(coco, repeats_ref, warmup=0)
    t_vox, all_vox = median_time(vox, repeats_vox)
    from importlib.metadata import version

    coco_v = version("pycocoevalcap")
    lines = [
        "## metrics: BLEU-1..4 + ROUGE-L + CIDEr-D on 10,000 report pairs",
        "",
        f"Machine: {machine()}. Corpus: the 362 Dia-LLaMA chest-CT report pairs repeated to "
        f"{N_PAIRS:,} (~115 words each). Medians of {repeats_ref} (pycocoevalcap) and "
        f"{repeats_vox} (voxlm) runs in one process; scores equal to 1e-9.",
        "",
        "| tool | median s | runs (s) | pairs/s |",
        "|---|---|---|---|",
        f"| pycocoevalcap {coco_v} | {t_ref:.3f} | {', '.join(f'{t:.2f}' for t in all_ref)} "
        f"| {N_PAIRS / t_ref:,.0f} |",
        f"| voxlm | {t_vox:.3f} | {', '.join(f'{t:.3f}' for t in all_vox)} "
        f"| {N_PAIRS / t_vox:,.0f} |",
        "",
        f"**voxlm / pycocoevalcap speed-up: {t_ref / t_vox:.1f}x** (goal: at least 20x).",
        "",
    ]
    return "\n".join(lines)


def _cpu(children: bool = False) -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    t = r.ru_utime + r.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        t += c.ru_utime + c.ru_stime
    return t


def run_meteor(
    sizes: tuple[int, ...] = (2_000, 10_000), repeats_vox: int = 3, repeats_ref: int = 1
) -> str:
    """report_scores with METEOR (Rust, no Java) vs pycocoevalcap's BLEU+ROUGE+CIDEr+METEOR (jar).

    pycocoevalcap's side is timed as a user runs it: ``Meteor()`` (JVM start, paraphrase table
    load) and the four ``compute_score`` calls. voxlm's first call in the process includes
    loading the jar's language data (cached afterwards): reported separately as "cold".
    """
    from importlib.metadata import version

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    from voxlm.datasets import dia_llama_results
    from voxlm.metrics import report_scores

    d = dia_llama_results()
    lines = [
        "## metrics: BLEU-1..4 + ROUGE-L + CIDEr-D + METEOR 1.5",
        "",
        f"Machine: {machine()}. Corpus: the 362 Dia-LLaMA report pairs repeated. pycocoevalcap "
        f"{version('pycocoevalcap')} with its meteor-1.5.jar (Java): {repeats_ref} run(s) per size "
        f"(the jar is slow); voxlm: cold first call (loads the jar's data) and the median of "
        f"{repeats_vox} warm runs. METEOR equal to the jar (asserted).",
        "",
        "| pairs | pycocoevalcap s (CPU s) | voxlm cold s | voxlm warm s (runs) | voxlm warm CPU s "
        "| speed-up cold | speed-up warm | CPU-time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    first = True
    for n in sizes:
        reps = -(-n // len(d.ids))
        refs = (d.references * reps)[:n]
        hyps = (d.predictions * reps)[:n]
        gts = {i: [r.replace("\n", " ")] for i, r in enumerate(refs)}
        res = {i: [h.replace("\n", " ")] for i, h in enumerate(hyps)}
        out: dict = {}

        def coco(gts=gts, res=res, out=out):
            b, _ = Bleu(4).compute_score(gts, res, verbose=0)
            r, _ = Rouge().compute_score(gts, res)
            c, _ = Cider().compute_score(gts, res)
            m = Meteor()
            out["METEOR"], _ = m.compute_score(gts, res)
            del m
            return b, r, c

        def vox(refs=refs, hyps=hyps):
            return report_scores(refs, hyps)

        t0 = time.perf_counter()
        got = vox()
        t_cold = time.perf_counter() - t0 if first else float("nan")
        first = False
        c0 = _cpu()
        t_vox, all_vox = median_time(vox, repeats_vox, warmup=0)
        cpu_vox = (_cpu() - c0) / repeats_vox
        c0 = _cpu(children=True)
        t_ref, _ = median_time(coco, repeats_ref, warmup=0)
        cpu_ref = (_cpu(children=True) - c0) / repeats_ref
        assert got["METEOR"] == out["METEOR"], (got["METEOR"], out["METEOR"])
        cold = f"{t_cold:.2f}" if t_cold == t_cold else "(cached)"
        up_cold = f"{t_ref / t_cold:.0f}x" if t_cold == t_cold else "-"
        lines.append(
            f"| {n:,} | {t_ref:.1f} ({cpu_ref:.1f}) | {cold} | {t_vox:.2f} "
            f"({', '.join(f'{t:.2f}' for t in all_vox)}) | {cpu_vox:.2f} "
            f"| {up_cold} | **{t_ref / t_vox:.0f}x** | {cpu_ref / cpu_vox:.0f}x |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "CPU s: user+system time of the process (voxlm: all its threads; pycocoevalcap: Python "
        "plus the Java child), independent of other load on a shared machine. Goal: at least 50x; "
        "Java no longer needed for any default metric.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["meteor"]:
        print("\n" + run_meteor(tuple(int(a) for a in sys.argv[2:]) or (2_000, 10_000)))
    else:
        print(run(*(int(a) for a in sys.argv[1:])))
