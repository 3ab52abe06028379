"""bench/lora_module: a single LoRA linear's training step (forward + backward + AdamW) and its
no-grad forward, CPU, fp32, all in one process with the sides alternating (medians of rounds).

Sides, on the same weights:

* ``peft``: PEFT's ``lora.Linear`` (the reference), same weights (outputs compared).
* ``voxlm.nn.LoraLinear``: voxlm's LoRA module (PEFT's layout ``lora_A.<adapter>.weight``,
  forward ``_core.lora_linear`` with the current parameters each call).
* ``bound core``: the forward the former ``nn.LoraLinear`` had (a ``_core.LoraLinearCore`` holding
  references to the parameters, ``forward(x, training)``), kept here to show what unifying the
  two LoRA modules cost or saved.

Two sizes: overhead-bound (64 -> 64, r 8, 16 tokens) and compute-bound (768 -> 768, r 16,
2 x 128 tokens, the ViT3D-LLaMA recipe's LoRA rank and alpha). One intra-op thread (on a shared
2-core machine torch's thread pool otherwise measures the other users' load, not the module).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

SIZES = [
    ("overhead-bound", dict(d=64, r=8, alpha=16, tokens=(1, 16)), 100),
    ("compute-bound", dict(d=768, r=16, alpha=32, tokens=(2, 128)), 5),
]


class BoundCoreLora(nn.Module):
    """The pre-unification ``nn.LoraLinear`` forward: a ``LoraLinearCore`` bound once to the
    parameters (by reference), called with ``(x, training)``."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scaling: float, p: float):
        super().__init__()
        from voxlm import _core

        self.base_layer = base
        self.lora_A = nn.Linear(a.shape[1], a.shape[0], bias=False)
        self.lora_B = nn.Linear(b.shape[1], b.shape[0], bias=False)
        with torch.no_grad():
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.copy_(b)
        self.core = _core.LoraLinearCore(
            base.weight, base.bias, self.lora_A.weight, self.lora_B.weight, scaling, p
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core.forward(x, self.training)


def _sides(d: int, r: int, alpha: float, dropout: float) -> dict[str, nn.Module]:
    import peft
    import peft.tuners.lora as pl

    import voxlm

    torch.manual_seed(0)
    ours = voxlm.nn.LoraLinear(d, d, r=r, lora_alpha=alpha, lora_dropout=dropout)
    with torch.no_grad():
        ours.lora_B["default"].weight.normal_(0, 0.02)
    a, b = ours.lora_A["default"].weight.detach(), ours.lora_B["default"].weight.detach()
    base = copy.deepcopy(ours.base_layer)
    pcfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout)
    ref = pl.Linear(copy.deepcopy(base), "default", pcfg, r=r, lora_alpha=alpha)
    with torch.no_grad():
        ref.lora_A["default"].weight.copy_(a)
        ref.lora_B["default"].weight.copy_(b)
    bound = BoundCoreLora(copy.deepcopy(base), a, b, alpha / r, dropout)
    for m in (ref, bound):
        m.base_layer.requires_grad_(False)
    return {"peft": ref, "voxlm.nn.LoraLinear": ours, "bound core": bound}


def _step(m: nn.Module, x: torch.Tensor, n: int) -> Callable[[], None]:
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

    def run() -> None:
        for _ in range(n):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return run


def _forward(m: nn.Module, x: torch.Tensor, n: int) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            for _ in range(n):
                m(x)

    return run


def _alternate(fns: dict[str, Callable[[], None]], n: int, rounds: int) -> dict[str, float]:
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):  # the sides alternate round by round
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in times.items()}


def run(rounds: int = 7) -> str:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from common import machine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    for label, s, n in SIZES:
        sides = _sides(s["d"], s["r"], s["alpha"], 0.0)
        x = torch.randn(*s["tokens"], s["d"])
        with torch.no_grad():
            ys = {k: m(x) for k, m in sides.items()}
        err = max(float((ys[k] - ys["peft"]).abs().max()) for k in ys)
        for what, make in (("training step", _step), ("forward (no grad)", _forward)):
            med = _alternate({k: make(m, x, n) for k, m in sides.items()}, n, rounds)
            rows.append((label, s, n, what, med, err))
    torch.set_num_threads(threads)
    out = [
        "## lora_module: one LoRA linear, voxlm.nn.LoraLinear vs PEFT lora.Linear "
        "vs the former bound-core forward\n",
        f"Machine: {machine()}. fp32, 1 thread, dropout 0; training step = forward + backward + "
        f"AdamW on A and B; median over {rounds} alternating rounds (each round: n calls, "
        "time per call); one process.\n",
        "| size | measured | calls/round | peft us | voxlm.nn.LoraLinear us | bound core us | "
        "LoraLinear speed vs peft | LoraLinear speed vs bound core | max abs diff vs peft |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s, n, what, med, err in rows:
        p, v, b = med["peft"], med["voxlm.nn.LoraLinear"], med["bound core"]
        out.append(
            f"| {label} ({s['d']}->{s['d']}, r{s['r']}, {s['tokens'][0]}x{s['tokens'][1]} "
            f"tokens) | {what} | {n} | {p * 1e6:.1f} | {v * 1e6:.1f} | {b * 1e6:.1f} | "
            f"{p / v:.2f}x | {b / v:.2f}x | {err:.1e} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(run())
