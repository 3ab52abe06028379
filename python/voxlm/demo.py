"""``make demo`` / ``voxlm demo``: voxlm's main job on bundled data, end to end.

It grows with the library; today it runs:

1. CT preprocessing: a synthetic int16 CT volume (HU) through the abdominal window -160..240 HU
   onto [0, 1] (MONAI ``ScaleIntensityRange`` semantics, Rust core).
2. Adapter training: a LoRA adapter (``voxlm.nn.LoraLinear``, Rust forward, Python-owned
   parameters) trained with AdamW to absorb a low-rank shift of a frozen layer; the frozen weight
   stays bit-identical.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import _core
from .nn import LoraLinear


def _ct_window(out: pathlib.Path) -> dict[str, float]:
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:64, 0:128, 0:128]
    body = ((y - 64) ** 2 + (x - 64) ** 2) < 55**2
    vol = np.where(body, 40, -1000).astype(np.int16)  # soft tissue in air
    vol += rng.normal(0, 30, vol.shape).astype(np.int16)
    vol[(z > 20) & (z < 40) & (((y - 50) ** 2 + (x - 70) ** 2) < 12**2)] = 700  # bone
    t0 = time.perf_counter()
    win = _core.scale_intensity_range(vol, -160.0, 240.0, 0.0, 1.0, True)
    ms = (time.perf_counter() - t0) * 1e3
    np.save(out / "ct_windowed_slice.npy", win[32])
    return {
        "volume_shape": list(vol.shape),
        "window_ms": round(ms, 3),
        "air_fraction_at_0": float((win == 0).mean()),
        "bone_fraction_at_1": float((win == 1).mean()),
    }


def _train_lora(steps: int, out: pathlib.Path) -> dict[str, float]:
    torch.manual_seed(0)
    layer = LoraLinear(64, 64, r=4, lora_alpha=8)
    frozen = layer.base_layer.weight.detach().clone()
    shift = torch.randn(64, 4) @ torch.randn(4, 64) * 0.1  # the low-rank change to learn
    x = torch.randn(512, 64)
    target = x @ (layer.base_layer.weight.detach() + shift).T + layer.base_layer.bias.detach()
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in tqdm(range(steps), desc="LoRA training", leave=False):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(layer(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert torch.equal(layer.base_layer.weight, frozen), "frozen weight changed"
    _plot(losses, out / "lora_loss.png")
    return {"loss_start": losses[0], "loss_end": losses[-1], "steps": steps}


def _plot(losses: list[float], path: pathlib.Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.semilogy(losses)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_title("LoRA adapter (Rust forward, torch AdamW)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(steps: int = 60, out: str = "demo_out") -> dict[str, object]:
    """Run the demo, print a summary and write ``summary.json`` (and plots) under ``out``."""
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {"ct_window": _ct_window(out_dir), "lora": _train_lora(steps, out_dir)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"outputs in {out_dir.resolve()}")
    return summary
