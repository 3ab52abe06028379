"""``nn.Module`` wrappers over Rust forwards. Parameters are ``nn.Parameter``s owned by Python;
the Rust side holds references to them, so optimizers, ``state_dict``, ``.to()`` and DDP work
unchanged."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _core
from ._bind import RustBound
from .exceptions import ConfigError


class LoraLinear(RustBound):
    """A linear layer with a LoRA branch, computed in Rust.

    ``y = x W^T + b + (lora_alpha / r) * dropout(x) A^T B^T``, PEFT's ``lora.Linear`` with PEFT's
    parameter names (``base_layer.weight``, ``lora_A.weight``, ``lora_B.weight``) and init
    (A Kaiming-uniform, B zero, so the layer starts equal to the base linear).

    Args:
        in_features, out_features: sizes.
        r: LoRA rank (> 0).
        lora_alpha: scaling numerator.
        lora_dropout: dropout on the LoRA branch input during training.
        bias: whether the base linear has a bias.
        use_rslora: scale by ``lora_alpha / sqrt(r)`` instead.

    Shapes: ``x [..., in_features] -> [..., out_features]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        bias: bool = True,
        use_rslora: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for k, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{k}: expected a positive integer, got {v!r}")
        if not isinstance(r, int) or r <= 0:
            raise ConfigError(f"r: expected a positive integer rank, got {r!r}")
        if not (isinstance(lora_alpha, (int, float)) and math.isfinite(lora_alpha)):
            raise ConfigError(f"lora_alpha: expected a finite number, got {lora_alpha!r}")
        if not 0.0 <= lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout: expected a value in [0, 1), got {lora_dropout!r}")
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.lora_alpha, self.lora_dropout = lora_alpha, lora_dropout
        self.scaling = lora_alpha / (math.sqrt(r) if use_rslora else r)
        kw = {"device": device, "dtype": dtype}
        self.base_layer = nn.Linear(in_features, out_features, bias=bias, **kw)
        self.lora_A = nn.Linear(in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, out_features, bias=False, **kw)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        self.rebind()

    def _make_core(self) -> _core.LoraLinearCore:
        return _core.LoraLinearCore(
            self.base_layer.weight,
            self.base_layer.bias,
            self.lora_A.weight,
            self.lora_B.weight,
            self.scaling,
            self.lora_dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features] -> [..., out_features]``."""
        return self._bound().forward(x, self.training)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"lora_alpha={self.lora_alpha}, lora_dropout={self.lora_dropout}"
        )
