"""bench/lora: LoRA training-step throughput and peak memory, voxlm against transformers + peft on
the same model, CPU. Each side runs in its own child process (so peak RSS is its own), both in
this one run.

Model: LLaMA 4 layers, width 256, 8 heads / 2 KV heads, vocab 4096; LoRA r16 / alpha 32 on every
linear (the ViT3D-LLaMA3 recipe); AdamW; batch 4 x 128 tokens; fp32. Median of 10 steps after 2
warm-up steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

CFG = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
           num_attention_heads=8, num_key_value_heads=2)
B, T, STEPS, WARMUP = 4, 128, 10, 2

CHILD = r"""
import json, statistics, sys, time, torch

def hwm_kb():
    # the address space's own high-water mark (ru_maxrss would include the parent's, kept across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0

side, path = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
ids = torch.randint(0, 4096, (%(B)d, %(T)d))
if side == "peft":
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    model = get_peft_model(LlamaForCausalLM.from_pretrained(path), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    step_loss = lambda: model(input_ids=ids, labels=ids).loss
else:
    import voxlm
    from voxlm.adapters import LoraConfig, add_lora
    from voxlm.llm import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(path)
    add_lora(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    step_loss = lambda: model(ids, labels=ids).loss
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
base = hwm_kb()
times = []
for i in range(%(WARMUP)d + %(STEPS)d):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = step_loss()
    loss.backward()
    opt.step()
    if i >= %(WARMUP)d:
        times.append(time.perf_counter() - t0)
peak = hwm_kb()
print(json.dumps({"step_s": statistics.median(times), "peak_rss_mb": peak / 1024, "growth_mb": (peak - base) / 1024, "loss": loss.item()}))
""" % dict(B=B, T=T, STEPS=STEPS, WARMUP=WARMUP)  # noqa: UP031


def run() -> str:
    import torch
    from common import machine
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    res = {}
    with tempfile.TemporaryDirectory() as d:
        LlamaForCausalLM(LlamaConfig(**CFG)).save_pretrained(d)
        for side in ("peft", "voxlm"):
            out = subprocess.run([sys.executable, "-c", CHILD, side, d], capture_output=True, text=True, check=True)
            res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    tok = B * T
    p, v = res["peft"], res["voxlm"]
    lines = [
        "## lora: LoRA training step (forward + backward + AdamW), voxlm vs transformers + peft",
        "",
        f"Machine: {machine()}. LLaMA 4 layers, width 256, 8/2 heads, vocab 4096; LoRA r16/a32, "
        f"dropout 0.05, all linears; batch {B} x {T} tokens; fp32 CPU; median of {STEPS} steps; "
        "each side in its own process (peak RSS = the process's VmHWM).",
        "",
        "| tool | step s | tokens/s | peak RSS MB | RSS growth during training MB |",
        "|---|---|---|---|---|",
        f"| transformers + peft | {p['step_s']:.3f} | {tok / p['step_s']:,.0f} | {p['peak_rss_mb']:.0f} | {p['growth_mb']:.0f} |",
        f"| voxlm | {v['step_s']:.3f} | {tok / v['step_s']:,.0f} | {v['peak_rss_mb']:.0f} | {v['growth_mb']:.0f} |",
        "",
        f"**Speed ratio voxlm / peft: {p['step_s'] / v['step_s']:.2f}x**; peak RSS ratio "
        f"{v['peak_rss_mb'] / p['peak_rss_mb']:.2f} (goal: at least peft's speed with no more memory).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    print(run())
