"""Functional tensor ops computed by the Rust core, differentiable through torch autograd."""

from __future__ import annotations

import torch

from . import _core


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    scaling: float = 1.0,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """LoRA linear, PEFT's ``lora.Linear`` forward.

    ``y = x W^T + b + scaling * dropout(x) A^T B^T``

    Args:
        x: ``[..., in_features]``.
        weight: ``W``, ``[out_features, in_features]``.
        bias: ``b``, ``[out_features]`` or None.
        lora_a: ``A``, ``[r, in_features]`` (PEFT's ``lora_A.weight``), or None for a plain linear.
        lora_b: ``B``, ``[out_features, r]`` (PEFT's ``lora_B.weight``).
        scaling: ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` for rsLoRA).
        dropout: dropout probability on the LoRA branch input (torch's RNG; only when ``training``).
        training: apply dropout.

    Returns:
        ``[..., out_features]``, with ``grad_fn`` when any input requires grad.

    Raises:
        ShapeError, DTypeError, DeviceError, VoxlmTypeError, ConfigError: on mismatched inputs.
    """
    return _core.lora_linear(x, weight, bias, lora_a, lora_b, scaling, dropout, training)
