"""bench/metrics: report metrics on 10k report pairs, voxlm against pycocoevalcap, in one run.

The 362 Dia-LLaMA report pairs are repeated to 10,000. Both sides compute BLEU-1..4, ROUGE-L and
CIDEr-D on the same text; METEOR is excluded from the ratio because voxlm runs pycocoevalcap's own
jar for it (identical cost on both sides).
"""

from __future__ import annotations

import sys

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
        f"| pycocoevalcap {coco_v} | {t_ref:.3f} | {', '.join(f'{t:.2f}' for t in all_ref)} | {N_PAIRS / t_ref:,.0f} |",
        f"| voxlm | {t_vox:.3f} | {', '.join(f'{t:.3f}' for t in all_vox)} | {N_PAIRS / t_vox:,.0f} |",
        "",
        f"**voxlm / pycocoevalcap speed-up: {t_ref / t_vox:.1f}x** (goal: at least 20x).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(*(int(a) for a in sys.argv[1:])))
