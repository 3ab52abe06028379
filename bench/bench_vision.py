"""bench/vision: ViT3D forward + backward throughput and peak memory, voxlm against MONAI's ViT
with the same weights, CPU. Each side in its own child process (peak RSS is its own), one run.

Config: 1 x 32 x 128 x 128 volumes, patch 4 x 16 x 16 (512 tokens), width 384, 6 layers, 6 heads,
MLP 1536, conv patch embedding; batch 2; fp32; median of 7 steps after 2 warm-up steps.
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


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    print(run())
