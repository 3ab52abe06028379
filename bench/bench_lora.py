"""bench/lora: LoRA training-step throughput and peak memory, voxlm against transformers + peft on
the same model, CPU. Each side runs in its own child process (so peak RSS is its own), both in
this one run.

Two models: (1) LLaMA 4 layers, width 256, 8 heads / 2 KV heads, vocab 4096; LoRA r16 / alpha 32
on every linear (the ViT3D-LLaMA3 recipe); AdamW; batch 4 x 128 tokens; fp32; median of 10 steps
after 2 warm-up steps. (2) LLaMA-3.2-1B-shaped at LLaMA-3's vocabulary (128,256; width 2048,
32/8 heads, MLP 8192, tied embeddings) trimmed to 2 layers, batch 4 x 512 tokens, where the LM
head and cross-entropy dominate memory: voxlm computes the loss in chunks without the logits
(``loss_chunk_size="auto"``); 2 steps per process (1 warm-up), ``ROUNDS`` fresh processes per
side alternating peft / voxlm, medians over the rounds.

voxlm's training forward fixes glibc's malloc thresholds (``voxlm.allocator``; opt out with
``VOXLM_MALLOC_TRIM=0``); the children run with the parent's environment minus any MALLOC_* /
VOXLM_MALLOC_TRIM, i.e. each library with its own defaults, as a user runs it.
``--allocator-rows`` adds two informational sides per round: peft with the same thresholds set
through glibc's environment variables, and voxlm with ``VOXLM_MALLOC_TRIM=0``.

Per process: ``load_mb`` is the high-water mark right after ``from_pretrained`` (the loader's own
peak), ``peak_rss_mb`` the high-water mark at the end, ``growth_mb`` their difference.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

CFG = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
)
B, T, STEPS, WARMUP = 4, 128, 10, 2
BIG = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=2,
    num_attention_heads=32,
    num_key_value_heads=8,
    tie_word_embeddings=True,
    rope_theta=500000.0,
    max_position_embeddings=2048,
)
BIG_RUN = dict(B=4, T=512, STEPS=1, WARMUP=1, chunk="auto")
ROUNDS = 3

CHILD = r"""
import json, statistics, sys, time, torch

def hwm_kb():
    # the address space's own high-water mark (ru_maxrss would include the parent's, kept across
    # exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0

side, path, run = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
side = side.split(":")[0]  # "peft:glibc-env" / "voxlm:no-malloc-settings": same code, other env
torch.manual_seed(0)
vocab = json.load(open(path + "/config.json"))["vocab_size"]
ids = torch.randint(0, vocab, (run["B"], run["T"]))
if side == "peft":
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(path),
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"),
    )
    step_loss = lambda: model(input_ids=ids, labels=ids).loss
else:
    import voxlm
    from voxlm.adapters import LoraConfig, add_lora
    from voxlm.llm import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(path)
    add_lora(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    model.loss_chunk_size = run.get("chunk")
    step_loss = lambda: model(ids, labels=ids).loss
load_kb = hwm_kb()
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
base = hwm_kb()
times = []
for i in range(run["WARMUP"] + run["STEPS"]):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = step_loss()
    loss.backward()
    opt.step()
    if i >= run["WARMUP"]:
        times.append(time.perf_counter() - t0)
peak = hwm_kb()
print(json.dumps({
    "step_s": statistics.median(times),
    "peak_rss_mb": peak / 1024,
    "growth_mb": (peak - base) / 1024,
    "load_mb": load_kb / 1024,
    "loss": loss.item(),
}))
"""


#: glibc's own environment spelling of the thresholds voxlm.allocator sets for training
GLIBC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(32 << 20)}

#: extra sides of ``--allocator-rows`` (informational: what the malloc settings alone do)
EXTRA_SIDES = {
    "peft:glibc-env": GLIBC_ENV,  # peft with the same thresholds, set through glibc's env
    "voxlm:no-malloc-settings": {"VOXLM_MALLOC_TRIM": "0"},  # voxlm without them
}


def _measure(
    cfg: dict, run: dict, rounds: int = 1, first: int = 0, extra: tuple[str, ...] = ()
) -> dict:
    """Each side in ``rounds`` fresh processes, alternating (peft first in even rounds, voxlm
    first in odd ones, counting from ``first``; ``extra`` sides after them); the median of each
    number. The children inherit this process's environment minus glibc's MALLOC_* and
    VOXLM_MALLOC_TRIM (so each side runs as a user would, with its own defaults)."""
    import os
    import statistics

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k != "VOXLM_MALLOC_TRIM"
    }
    per: dict[str, list[dict]] = {"peft": [], "voxlm": [], **{e: [] for e in extra}}
    with tempfile.TemporaryDirectory() as d:
        LlamaForCausalLM(LlamaConfig(**cfg)).save_pretrained(d)
        for i in range(first, first + rounds):
            for side in (("peft", "voxlm") if i % 2 == 0 else ("voxlm", "peft")) + extra:
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, side, d, json.dumps(run)],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={**base_env, **EXTRA_SIDES.get(side, {})},
                )
                per[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"# round {i} {side}: {per[side][-1]}", file=sys.stderr, flush=True)
    res = {}
    for side, rs in per.items():
        res[side] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        # ratios per round (the two sides of a round ran back to back)
    res["step_ratios"] = [p["step_s"] / v["step_s"] for p, v in zip(per["peft"], per["voxlm"])]
    res["peak_ratios"] = [
        v["peak_rss_mb"] / p["peak_rss_mb"] for p, v in zip(per["peft"], per["voxlm"])
    ]
    return res


def run(big_only: bool = False, rounds: int = ROUNDS, allocator_rows: bool = False) -> str:
    import os

    from common import machine

    load0 = os.getloadavg()[0]
    small = None if big_only else _measure(CFG, dict(B=B, T=T, STEPS=STEPS, WARMUP=WARMUP))
    big = _measure(BIG, BIG_RUN, rounds, extra=tuple(EXTRA_SIDES) if allocator_rows else ())
    load1 = os.getloadavg()[0]
    lines = [
        "## lora: LoRA training step (forward + backward + AdamW), voxlm vs transformers + peft",
        "",
        f"Machine: {machine()}. LoRA r16/a32, dropout 0.05, all linears; fp32 CPU; each side in "
        "its own process (peak RSS = the process's VmHWM; load MB = VmHWM right after "
        f"from_pretrained); the large model: {rounds} fresh processes per side alternating "
        f"peft / voxlm, medians over them. Load average {load0:.1f} at the start, {load1:.1f} at "
        "the end.",
        "",
        "| model | tool | step s | tokens/s | load MB | peak RSS MB | RSS growth in training MB |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [] if small is None else [(f"LLaMA 4x256, vocab 4096, batch {B}x{T}", small, B * T)]
    rows.append(
        (
            f"LLaMA-3.2-1B-shaped, 2 layers, vocab 128,256, batch {BIG_RUN['B']}x{BIG_RUN['T']}",
            big,
            BIG_RUN["B"] * BIG_RUN["T"],
        )
    )
    labels = (
        ("peft", "transformers + peft"),
        ("voxlm", "voxlm"),
        (
            "peft:glibc-env",
            "transformers + peft, glibc env " + " ".join(f"{k}={v}" for k, v in GLIBC_ENV.items()),
        ),
        ("voxlm:no-malloc-settings", "voxlm, VOXLM_MALLOC_TRIM=0"),
    )
    for name, res, tok in rows:
        for side, label in labels:
            if side not in res:
                continue
            r = res[side]
            lines.append(
                f"| {name} | {label} | {r['step_s']:.3f} | {tok / r['step_s']:,.0f} | "
                f"{r['load_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['growth_mb']:.0f} |"
            )
    lines.append("")
    if small is not None:
        p, v = small["peft"], small["voxlm"]
        lines.append(
            f"**Small model: speed voxlm / peft {p['step_s'] / v['step_s']:.2f}x**, peak RSS "
            f"ratio {v['peak_rss_mb'] / p['peak_rss_mb']:.2f} (goal: at least peft's speed, no "
            "more memory)."
        )
        lines.append("")
    p, v = big["peft"], big["voxlm"]
    fmt = ", ".join
    lines.append(
        f"**Vocab 128,256 (chunked LM loss, no full logits): peak RSS voxlm / peft "
        f"{v['peak_rss_mb'] / p['peak_rss_mb']:.2f}** (goal <= 0.5; per round "
        f"{fmt(f'{x:.2f}' for x in big['peak_ratios'])}), growth during training "
        f"{v['growth_mb'] / p['growth_mb']:.2f}, speed voxlm / peft "
        f"{p['step_s'] / v['step_s']:.2f}x (goal >= 1; per round "
        f"{fmt(f'{x:.2f}' for x in big['step_ratios'])}); loss {v['loss']:.4f} vs "
        f"{p['loss']:.4f}. Gradients of every LoRA parameter equal peft's "
        "(tests/test_linear_ce.py, 1e-4 relative in float32)."
    )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    big_only = "--big-only" in sys.argv
    rounds = next((int(a.split("=")[1]) for a in sys.argv if a.startswith("--rounds=")), ROUNDS)
    print(run(big_only, rounds, allocator_rows="--allocator-rows" in sys.argv))
