"""bench/vision: ViT3D forward + backward throughput and peak memory, voxlm against MONAI's ViT
with the same weights, CPU. Each side in its own child process (peak RSS is its own), one run.

Config: 1 x 32 x 128 x 128 volumes, patch 4 x 16 x 16 (512 tokens), width 384, 6 layers, 6 heads,
MLP 1536, conv patch embedding; batch 2; fp32; median of 7 steps after 2 warm-up steps.

``run_clip``: the CLIP vision tower in ViT-L/14-336's shape (width 1024, 16 heads, MLP 4096,
577 tokens) trimmed in depth, voxlm ``CLIPVision`` against transformers ``CLIPVisionModel``
(sdpa attention) with the same weights, frozen, fp32 CPU, batch 1 and 4, under ``no_grad`` and
with grad mode on (a frozen tower inside a training step): the full forward with every hidden
state, and LLaVA's feature (hidden state -2: transformers runs the whole tower as LLaVA's
``clip_encoder.py`` does, voxlm's ``hidden_state(x, -2)`` stops after the layer it needs).
Alternating in one process, medians.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time, torch

def hwm_kb():
    # the address space's own high-water mark (ru_maxrss would include the parent's, kept across
    # exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0

from monai.networks.nets import ViT
side = sys.argv[1]
torch.manual_seed(0)
ref = ViT(in_channels=1, img_size=(32, 128, 128), patch_size=(4, 16, 16), hidden_size=384,
          mlp_dim=1536, num_layers=6, num_heads=6, proj_type="conv", classification=False)
if side == "voxlm":
    from voxlm.vision import ViT3D
    model = ViT3D.from_monai(ref, img_size=(32, 128, 128))
    del ref
else:
    model = ref
model.train()
x = torch.randn(2, 1, 32, 128, 128)
base = hwm_kb()
times = []
for i in range(9):
    t0 = time.perf_counter()
    model.zero_grad(set_to_none=True)
    out, hidden = model(x)
    out.float().pow(2).mean().backward()
    if i >= 2:
        times.append(time.perf_counter() - t0)
peak = hwm_kb()
print(json.dumps({
    "step_s": statistics.median(times),
    "peak_rss_mb": peak / 1024,
    "growth_mb": (peak - base) / 1024,
}))
"""


def run() -> str:
    from common import machine

    res = {}
    for side in ("monai", "voxlm"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, side], capture_output=True, text=True, check=True
        )
        res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    m, v = res["monai"], res["voxlm"]
    import monai

    lines = [
        "## vision: ViT3D forward + backward, voxlm vs MONAI ViT",
        "",
        f"Machine: {machine()}; MONAI {monai.__version__}. Volumes 1x32x128x128, patch 4x16x16 "
        "(512 tokens), width 384, 6 layers, 6 heads, MLP 1536; batch 2; fp32 CPU; median of 7 "
        "steps; each side in its own process.",
        "",
        "| tool | step s | volumes/s | peak RSS MB | RSS growth MB |",
        "|---|---|---|---|---|",
        f"| MONAI ViT | {m['step_s']:.3f} | {2 / m['step_s']:.2f} | {m['peak_rss_mb']:.0f} "
        f"| {m['growth_mb']:.0f} |",
        f"| voxlm ViT3D | {v['step_s']:.3f} | {2 / v['step_s']:.2f} | {v['peak_rss_mb']:.0f} "
        f"| {v['growth_mb']:.0f} |",
        "",
        f"**Speed ratio voxlm / MONAI: {m['step_s'] / v['step_s']:.2f}x**; peak RSS ratio "
        f"{v['peak_rss_mb'] / m['peak_rss_mb']:.2f} (goal: at least MONAI's speed with no more "
        "memory).",
        "",
    ]
    return "\n".join(lines)


def run_clip(layers: int = 4, repeats: int = 5) -> str:
    import os
    import statistics
    import time

    import torch
    import transformers
    from common import machine

    from voxlm.vision import CLIPVision

    torch.manual_seed(0)
    shape = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=layers,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    vc = transformers.CLIPVisionConfig(**shape, attn_implementation="sdpa")
    ref = transformers.CLIPVisionModel(vc).eval().requires_grad_(False)
    ours = CLIPVision(**shape)
    sd = {
        (k if k.startswith("vision_model.") else f"vision_model.{k}"): v
        for k, v in ref.state_dict().items()
        if not k.endswith("position_ids")
    }
    ours.load_state_dict(sd)
    ours.eval().requires_grad_(False)
    fns = {
        "transformers full": lambda x: ref(x, output_hidden_states=True).hidden_states[-2],
        "voxlm full": lambda x: ours(x)[2][-2],
        "voxlm hidden_state(-2)": lambda x: ours.hidden_state(x, -2),
    }
    load0 = os.getloadavg()
    rows = []
    for b in (1, 4):
        x = torch.randn(b, 3, 336, 336)
        for grad in (False, True):
            times: dict[str, list[float]] = {k: [] for k in fns}
            err = 0.0
            with torch.set_grad_enabled(grad):
                for i in range(repeats + 1):
                    outs = {}
                    for k, f in fns.items():
                        t0 = time.perf_counter()
                        outs[k] = f(x)
                        if i:  # the first round warms up
                            times[k].append(time.perf_counter() - t0)
                    want = outs["transformers full"]
                    err = max(err, *((o - want).abs().max().item() for o in outs.values()))
            med = {k: statistics.median(v) for k, v in times.items()}
            t = med["transformers full"]
            rows.append(
                f"| {b} | {'on' if grad else 'no_grad'} | {t:.3f} | {med['voxlm full']:.3f} "
                f"| {t / med['voxlm full']:.2f}x | {med['voxlm hidden_state(-2)']:.3f} "
                f"| **{t / med['voxlm hidden_state(-2)']:.2f}x** | {err:.0e} |"
            )
    load1 = os.getloadavg()
    return "\n".join(
        [
            "## clip: CLIP vision tower (ViT-L/14-336 shape), voxlm vs transformers "
            "CLIPVisionModel",
            "",
            f"Machine: {machine()}; transformers {transformers.__version__}. Width 1024, 16 heads, "
            f"MLP 4096, 336 px / patch 14 (577 tokens), {layers} layers (ViT-L has 24), frozen, "
            f"fp32 CPU; transformers with sdpa attention. Full = the forward with every hidden "
            f"state; layer -2 = LLaVA's feature (transformers: the full tower, as LLaVA's "
            f"clip_encoder.py runs it; voxlm: `hidden_state(x, -2)`, which skips the last layer: "
            f"1/{layers} of the work here, 1/24 on ViT-L). The three alternate in one process; "
            f"medians of {repeats} after a warm-up round. Load average {load0[0]:.1f} before, "
            f"{load1[0]:.1f} after.",
            "",
            "| batch | grad mode | transformers s | voxlm full s | ratio | voxlm layer -2 s "
            "| ratio | max abs diff |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    if sys.argv[1:] == ["clip"]:
        print(run_clip())
    else:
        print(run())
