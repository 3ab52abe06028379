"""bench/meteor: report_scores with METEOR (voxlm's Rust METEOR 1.5, no Java) vs pycocoevalcap.

pycocoevalcap's side is timed as a user runs it: BLEU(4), ROUGE-L, CIDEr-D and ``Meteor()``
(JVM start, paraphrase table load) with its ``compute_score``, once per size (the jar is slow).
voxlm's side: ``report_scores(refs, hyps)`` (METEOR on by default), warm (the jar's language
data is loaded once per process and cached; the cold first call is reported separately), with
all cores and, in a child process with ``VOXLM_NUM_THREADS=1``, with one thread. The METEOR
scores are asserted equal (``==``) to the jar's.

``python bench/bench_meteor.py [sizes...]`` (default 2000 10000) prints a markdown section.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from common import machine

HERE = os.path.dirname(os.path.abspath(__file__))


def _corpus(n: int) -> tuple[list[str], list[str]]:
    from voxlm.datasets import dia_llama_results

    d = dia_llama_results()
    reps = -(-n // len(d.ids))
    return (d.references * reps)[:n], (d.predictions * reps)[:n]


def _cpu(children: bool = False) -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    t = r.ru_utime + r.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        t += c.ru_utime + c.ru_stime
    return t


def voxlm_times(n: int, repeats: int) -> dict[str, object]:
    """Cold first call, then ``repeats`` warm calls of report_scores on ``n`` pairs."""
    from voxlm.metrics import report_scores

    refs, hyps = _corpus(n)
    t0 = time.perf_counter()
    got = report_scores(refs, hyps)
    cold = time.perf_counter() - t0
    warm, cpu = [], []
    for _ in range(repeats):
        c0, t0 = _cpu(), time.perf_counter()
        report_scores(refs, hyps)
        warm.append(time.perf_counter() - t0)
        cpu.append(_cpu() - c0)
    return {"cold": cold, "warm": warm, "cpu": cpu, "meteor": got["METEOR"]}


def _child(n: int, repeats: int) -> dict[str, object]:
    env = dict(os.environ, VOXLM_NUM_THREADS="1")
    code = (
        f"import json, sys; sys.path.insert(0, {HERE!r}); import bench_meteor as b; "
        f"print(json.dumps(b.voxlm_times({n}, {repeats})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(sizes: tuple[int, ...] = (2_000, 10_000), repeats: int = 3) -> str:
    from importlib.metadata import version

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    load = os.getloadavg()
    lines = [
        "## meteor: report_scores with METEOR 1.5 (Rust, no Java) vs pycocoevalcap with its jar",
        "",
        f"Machine: {machine()}; load average at start {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (1/5/15 min; the 2 cores are shared with other work, so wall times are "
        "noisy). Corpus: the 362 Dia-LLaMA report pairs repeated. pycocoevalcap "
        f"{version('pycocoevalcap')}: BLEU(4) + ROUGE-L + CIDEr-D + Meteor() (meteor-1.5.jar, "
        "Java), one run per size. voxlm: `report_scores(refs, hyps)` (the same four metrics), "
        f"median of {repeats} warm runs with both cores and, in a child process, with "
        "`VOXLM_NUM_THREADS=1`; cold = the first call of a process (loads the jar's language "
        "data, then cached). METEOR equal to the jar's (asserted `==`).",
        "",
        "| pairs | pycocoevalcap s (CPU s) | voxlm 2 threads: warm s (CPU s) "
        "| voxlm 1 thread: warm s | voxlm cold s | speed-up 2 threads | speed-up 1 thread "
        "| CPU-time ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for n in sizes:
        refs, hyps = _corpus(n)
        gts = {i: [r.replace("\n", " ")] for i, r in enumerate(refs)}
        res = {i: [h.replace("\n", " ")] for i, h in enumerate(hyps)}
        one = _child(n, repeats)
        vox = voxlm_times(n, repeats)
        c0, t0 = _cpu(children=True), time.perf_counter()
        Bleu(4).compute_score(gts, res, verbose=0)
        Rouge().compute_score(gts, res)
        Cider().compute_score(gts, res)
        m = Meteor()
        ref_meteor, _ = m.compute_score(gts, res)
        del m
        t_ref, cpu_ref = time.perf_counter() - t0, _cpu(children=True) - c0
        assert vox["meteor"] == ref_meteor and one["meteor"] == ref_meteor, (
            vox["meteor"],
            one["meteor"],
            ref_meteor,
        )
        t2, t1 = statistics.median(vox["warm"]), statistics.median(one["warm"])
        cpu2 = statistics.median(vox["cpu"])
        lines.append(
            f"| {n:,} | {t_ref:.1f} ({cpu_ref:.1f}) | {t2:.2f} ({cpu2:.2f}) | {t1:.2f} "
            f"| {one['cold']:.2f} | **{t_ref / t2:.0f}x** | {t_ref / t1:.0f}x "
            f"| {cpu_ref / cpu2:.0f}x |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "CPU s: user + system time (voxlm: all its threads; pycocoevalcap: Python plus the Java "
        "child). Speed-ups are wall-time ratios within this run. Goal: at least 50x; Java no "
        "longer needed for any default metric.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n" + run(tuple(int(a) for a in sys.argv[1:]) or (2_000, 10_000)))
