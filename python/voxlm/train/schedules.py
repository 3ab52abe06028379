"""Learning-rate schedules and AdamW parameter groups, as transformers builds them.

The multipliers below are transcriptions of ``transformers/optimization.py``
(``_get_constant_schedule_with_warmup_lr_lambda``, ``_get_linear_schedule_with_warmup_lr_lambda``,
``_get_cosine_schedule_with_warmup_lr_lambda``); ``tests/test_train_args_schedules.py`` compares
them step by step with ``transformers.get_scheduler``. :func:`decay_parameter_names` follows
``Trainer.get_decay_parameter_names`` (no weight decay on biases, ``nn.LayerNorm`` weights and
parameters whose name says norm: ``layernorm``, ``rmsnorm``, ``.norm.``, ``_norm``).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..exceptions import ConfigError

_FORBIDDEN_NAME_PATTERNS = [
    r"bias",
    r"layernorm",
    r"rmsnorm",
    r"(?:^|\.)norm(?:$|\.)",
    r"_norm(?:$|\.)",
]


def _constant(step: int) -> float:
    return 1.0


def _constant_with_warmup(step: int, *, num_warmup_steps: int) -> float:
    if step < num_warmup_steps:
        return float(step) / float(max(1.0, num_warmup_steps))
    return 1.0


def _linear(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    return max(
        0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps))
    )


def _cosine(
    step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: float = 0.5
) -> float:
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def lr_lambda(name: str, num_warmup_steps: int, num_training_steps: int) -> Any:
    """The multiplier of the base learning rate after ``step`` optimizer steps."""
    if name == "constant":
        return _constant
    if name == "constant_with_warmup":
        return functools.partial(_constant_with_warmup, num_warmup_steps=num_warmup_steps)
    if name == "linear":
        return functools.partial(
            _linear, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps
        )
    if name == "cosine":
        return functools.partial(
            _cosine, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps
        )
    raise ConfigError(
        "lr_scheduler_type: expected constant, constant_with_warmup, linear or cosine, "
        f"got {name!r}"
    )


def get_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    num_warmup_steps: int = 0,
    num_training_steps: int = 0,
) -> LambdaLR:
    """A ``LambdaLR`` equal to ``transformers.get_scheduler(name, ...)``."""
    from ..exceptions import ConfigError, VoxlmTypeError

    if not isinstance(optimizer, torch.optim.Optimizer):
        raise VoxlmTypeError(
            f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    for k, v in (
        ("num_warmup_steps", num_warmup_steps),
        ("num_training_steps", num_training_steps),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{k}: expected an integer >= 0, got {v!r}")
    return LambdaLR(optimizer, lr_lambda(name, num_warmup_steps, num_training_steps))


def _parameter_names(model: nn.Module, patterns: list[re.Pattern[str]]) -> list[str]:
    out = []
    for name, child in model.named_children():
        sub = _parameter_names(child, patterns)
        out += [
            f"{name}.{n}"
            for n in sub
            if not isinstance(child, nn.LayerNorm)
            and not any(p.search(f"{name}.{n}".lower()) for p in patterns)
        ]
    out += [k for k in model._parameters if not any(p.search(k.lower()) for p in patterns)]
    return out


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that get weight decay (``Trainer.get_decay_parameter_names``)."""
    if not isinstance(model, nn.Module):
        from ..exceptions import VoxlmTypeError

        raise VoxlmTypeError(f"model: expected a torch nn.Module, got {type(model).__name__}")
    return _parameter_names(model, [re.compile(p) for p in _FORBIDDEN_NAME_PATTERNS])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: ``[{decay}, {no decay}]`` (empty ones left out).
    Only parameters with ``requires_grad`` enter, so frozen ones get no optimizer state; a tied
    parameter enters once."""
    decay = set(decay_parameter_names(model))
    seen: set[int] = set()
    groups: dict[bool, list[nn.Parameter]] = {True: [], False: []}
    names: dict[bool, list[str]] = {True: [], False: []}
    for n, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        groups[n in decay].append(p)
        names[n in decay].append(n)
    out = []
    if groups[True]:
        out.append({"params": groups[True], "weight_decay": weight_decay, "names": names[True]})
    if groups[False]:
        out.append({"params": groups[False], "weight_decay": 0.0, "names": names[False]})
    return out


def create_optimizer(model: nn.Module, args: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`param_groups` with the arguments' lr, betas, eps."""
    groups = param_groups(model, args.weight_decay)
    if not groups:
        from ..exceptions import TrainingError

        raise TrainingError(
            "step 0: the model has no trainable parameters (every requires_grad is False); "
            "a stage's set_trainable must unfreeze something"
        )
    for g in groups:
        g.pop("names")
    return torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
    )
