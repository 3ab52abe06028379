"""``nn.Module``s over Rust forwards whose parameters are ``nn.Parameter``s owned by Python, so
optimizers, ``state_dict``, ``.to()`` and DDP work unchanged."""

from __future__ import annotations

import torch
from torch import nn

from ._bind import check_budget, check_device, check_float_dtype
from .adapters import LoraConfig, LoraLayer
from .exceptions import ConfigError


class LoraLinear(LoraLayer):
    """A standalone linear layer with a LoRA adapter: :class:`voxlm.adapters.LoraLayer` (voxlm's
    one LoRA module) over a new ``nn.Linear``, with one adapter ``adapter_name`` added.

    ``y = x W^T + b + scaling * dropout(x) A^T B^T`` (``scaling = lora_alpha / r``, or
    ``lora_alpha / sqrt(r)`` with ``use_rslora``), PEFT's ``lora.Linear``: the same state-dict
    keys (``base_layer.weight``, ``base_layer.bias``, ``lora_A.<adapter>.weight``,
    ``lora_B.<adapter>.weight``), the same init (A Kaiming-uniform, B zero, so the layer starts
    equal to the base linear) and a frozen base. Every :mod:`voxlm.adapters` function
    (``merge_adapter``, ``disable_adapters``, ``add_lora`` for a second adapter, ...) applies.

    Backward compatibility: this class once had its own layout (``lora_A.weight``,
    ``lora_B.weight``, a float ``scaling``); ``load_state_dict`` still accepts such state dicts
    and maps them onto ``adapter_name``. ``scaling`` is now a dict per adapter, as in PEFT.

    Args:
        in_features, out_features: sizes (> 0).
        r: LoRA rank (> 0).
        lora_alpha: scaling numerator (finite).
        lora_dropout: dropout on the LoRA branch input during training, in ``[0, 1)``.
        bias: whether the base linear has a bias.
        use_rslora: scale by ``lora_alpha / sqrt(r)`` instead.
        adapter_name: the adapter's name (PEFT's default ``"default"``).

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
        adapter_name: str = "default",
    ) -> None:
        for k, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{k}: expected a positive integer, got {v!r}")
        device = check_device(device)
        dtype = check_float_dtype(dtype)
        check_budget("LoraLinear", in_features * out_features, dtype)
        config = LoraConfig(
            r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora
        )
        super().__init__(
            nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        )
        self.base_layer.requires_grad_(False)
        self.add(adapter_name, config)
        self._register_load_state_dict_pre_hook(self._former_layout)

    def _former_layout(self, state_dict, prefix, *_args) -> None:  # type: ignore[no-untyped-def]
        """Map the former ``lora_A.weight`` / ``lora_B.weight`` keys onto the active adapter."""
        for ab in ("lora_A", "lora_B"):
            old = f"{prefix}{ab}.weight"
            if old in state_dict:
                state_dict[f"{prefix}{ab}.{self.active_adapter}.weight"] = state_dict.pop(old)
