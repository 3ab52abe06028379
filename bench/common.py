"""Shared helpers for voxlm's benchmarks: medians of repeated runs, side by side in one process."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def machine() -> str:
    import os

    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def write_llava_parts(
    d: str, image_size: int, vision_width: int, llm_width: int, vocab: int
) -> None:
    """Random-weight LLaVA parts for the LLaVA benchmarks, in the formats the recipe loads:
    a transformers CLIP vision tower (4 layers) in ``d/clip``, a transformers LLaMA (4 layers) in
    ``d/llm`` and an mlp2x_gelu projector state dict in ``d/proj.pt``. Seed first."""
    import torch
    import transformers

    vc = transformers.CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
    )
    transformers.CLIPVisionModel(vc).save_pretrained(f"{d}/clip")
    lc = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=llm_width,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=1024,
    )
    transformers.LlamaForCausalLM(lc).save_pretrained(f"{d}/llm")
    proj = torch.nn.Sequential(
        torch.nn.Linear(vision_width, llm_width),
        torch.nn.GELU(),
        torch.nn.Linear(llm_width, llm_width),
    )
    torch.save(proj.state_dict(), f"{d}/proj.pt")
