"""Parameter-efficient adaptation, interchangeable with PEFT.

* LoRA: :class:`LoraConfig` (PEFT's field names and semantics), :func:`add_lora`,
  :func:`set_adapter`, :func:`disable_adapters` / :func:`enable_adapters`, :func:`merge_adapter`
  / :func:`unmerge_adapter`, :func:`save_adapter` (``adapter_config.json`` +
  ``adapter_model.safetensors`` that PEFT loads) and :func:`load_adapter` (reads what PEFT's
  ``save_pretrained`` wrote). The LoRA branch is computed in Rust: inside the LLaMA core for
  :class:`voxlm.llm.LlamaForCausalLM`, and by ``voxlm.ops.lora_linear`` for any other module.
* Bias tuning (PICG): :func:`add_bias_tuning`.
* :func:`mark_trainable`, :func:`trainable_parameters`.
* :class:`PrefixEncoder` and :func:`prepend_prefix` (RAD3D-Prefix).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from . import _core
from ._bind import check_budget, check_number, check_tensor
from ._bind import check_int as _check_int
from .exceptions import CheckpointError, ConfigError, ShapeError, VoxlmTypeError

PathLike = str | os.PathLike[str]
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


@dataclass
class LoraConfig:
    """LoRA settings with PEFT's names: ``scaling = lora_alpha / r`` (``/ sqrt(r)`` with
    ``use_rslora``); ``target_modules`` a list of module-name suffixes, a regex (full match), or
    ``"all-linear"`` (every ``nn.Linear`` but the output layer); ``init_lora_weights`` True
    (A Kaiming-uniform, B zero) or ``"gaussian"`` (A normal(0, 1/r))."""

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    bias: str = "none"
    task_type: str | None = "CAUSAL_LM"
    base_model_name_or_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"r: expected a positive integer rank, got {self.r!r}")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)):
            raise ConfigError(
                f"lora_dropout: expected a number in [0, 1), got {self.lora_dropout!r}"
            )
        if not isinstance(self.use_rslora, bool):
            raise ConfigError(f"use_rslora: expected true or false, got {self.use_rslora!r}")
        tm = self.target_modules
        if tm is not None and not (
            isinstance(tm, str)
            or (isinstance(tm, (list, tuple, set)) and all(isinstance(t, str) for t in tm))
        ):
            raise ConfigError(
                "target_modules: expected module-name suffixes (a list of strings), a regex or "
                f"'all-linear', got {tm!r}"
            )
        if isinstance(self.lora_alpha, bool) or not (
            isinstance(self.lora_alpha, (int, float)) and math.isfinite(self.lora_alpha)
        ):
            raise ConfigError(f"lora_alpha: expected a finite number, got {self.lora_alpha!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ConfigError(
                f"lora_dropout: expected a value in [0, 1), got {self.lora_dropout!r}"
            )
        if self.bias != "none":
            raise ConfigError(
                f"bias: only 'none' is supported (use add_bias_tuning), got {self.bias!r}"
            )
        if self.init_lora_weights not in (True, False, "gaussian"):
            raise ConfigError(
                "init_lora_weights: expected True, False or 'gaussian', "
                f"got {self.init_lora_weights!r}"
            )
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = sorted(self.target_modules)
        for k in ("use_dora", "fan_in_fan_out"):
            if self.extra.get(k):
                raise ConfigError(f"{k}: not supported by voxlm's LoRA")
        for k in ("rank_pattern", "alpha_pattern"):
            if self.extra.get(k):
                raise ConfigError(f"{k}: per-module ranks are not supported by voxlm's LoRA")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_peft_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d.update(
            peft_type="LORA",
            inference_mode=True,
            fan_in_fan_out=False,
            use_dora=False,
            modules_to_save=None,
            layers_to_transform=None,
            layers_pattern=None,
            rank_pattern={},
            alpha_pattern={},
        )
        return d

    @classmethod
    def from_peft_dict(cls, d: dict[str, Any]) -> LoraConfig:
        if d.get("peft_type", "LORA") != "LORA":
            raise ConfigError(f"adapter_config.json: peft_type {d.get('peft_type')!r} is not LORA")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kw = {k: v for k, v in d.items() if k in known}
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})


class LoraLayer(nn.Module):
    """voxlm's one LoRA module, in PEFT's ``lora.Linear`` layout: ``base_layer``,
    ``lora_A[name]``, ``lora_B[name]``, ``lora_dropout[name]`` (state-dict keys
    ``base_layer.weight``, ``lora_A.<name>.weight``, ``lora_B.<name>.weight``, as PEFT's), any
    number of named adapters with one active; forward
    ``base(x) + scaling * B(A(dropout(x)))`` computed by ``_core.lora_linear`` with the current
    parameter tensors on every call (so optimizer steps, ``load_state_dict``, ``.to()``, swapped
    or replaced parameters and a bias added by :func:`add_bias_tuning` are all seen).

    :func:`add_lora` wraps a model's ``nn.Linear``s in it; :class:`voxlm.nn.LoraLinear` builds a
    standalone one (a new ``nn.Linear`` and one adapter). Inside :class:`voxlm.llm.LlamaForCausalLM`
    and the vision towers the same parameters are read by the Rust core instead
    (:func:`lora_settings`).

    Shapes: ``x [..., in_features] -> [..., out_features]``.
    """

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise VoxlmTypeError(
                f"base_layer: expected an nn.Linear, got {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.dropout_p: dict[str, float] = {}
        self.active_adapter = "default"
        self.disabled = False
        self.merged: list[str] = []

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def add(self, name: str, config: LoraConfig) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ConfigError(f"adapter_name: expected a non-empty name without '.', got {name!r}")
        if not isinstance(config, LoraConfig):
            raise VoxlmTypeError(f"config: expected a LoraConfig, got {type(config).__name__}")
        check_budget(
            f"LoRA adapter {name!r} (r={config.r})",
            config.r * (self.in_features + self.out_features),
        )
        w = self.base_layer.weight
        kw = {"device": w.device, "dtype": w.dtype}
        a = nn.Linear(self.in_features, config.r, bias=False, **kw)
        b = nn.Linear(config.r, self.out_features, bias=False, **kw)
        with torch.no_grad():
            if config.init_lora_weights == "gaussian":
                nn.init.normal_(a.weight, std=1 / config.r)
            else:
                nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            if config.init_lora_weights is False:
                nn.init.kaiming_uniform_(b.weight, a=math.sqrt(5))
            else:
                nn.init.zeros_(b.weight)
        self.lora_A[name], self.lora_B[name] = a, b
        self.lora_dropout[name] = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        )
        self.scaling[name] = config.scaling
        self.dropout_p[name] = float(config.lora_dropout)
        self.active_adapter = name

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]

    def active(self) -> str | None:
        """The adapter the forward applies, or None (disabled, merged or absent)."""
        n = self.active_adapter
        if self.disabled or n not in self.lora_A or n in self.merged:
            return None
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features] -> [..., out_features]``; the active adapter's branch unless
        disabled, merged or absent (then the base linear)."""
        # what active() decides, with direct _modules look-ups (nn.Module.__getattr__ and
        # ModuleDict.__getitem__ are a measurable part of a small layer's call)
        n = self.active_adapter
        mods = self._modules
        base = mods["base_layer"]
        a = None if self.disabled or n in self.merged else mods["lora_A"]._modules.get(n)
        if a is None:
            return _core.lora_linear(x, base.weight, base.bias)
        return _core.lora_linear(
            x,
            base.weight,
            base.bias,
            a.weight,
            mods["lora_B"]._modules[n].weight,
            self.scaling[n],
            self.dropout_p[n],
            self.training,
        )


def _lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    return [(n, m) for n, m in _module(model).named_modules() if isinstance(m, LoraLayer)]


def _module(model: Any, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise VoxlmTypeError(f"{name}: expected a torch nn.Module, got {type(model).__name__}")
    return model


def _regexes(patterns: Any, name: str) -> list[re.Pattern[str]]:
    """Compiled regexes from a list of strings (a bare string is one pattern, not its
    characters); a ConfigError names an invalid one."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if patterns is None or isinstance(patterns, bytes) or not isinstance(patterns, Iterable):
        raise ConfigError(f"{name}: expected a list of regexes, got {patterns!r}")
    out = []
    for p in patterns:
        if not isinstance(p, str):
            raise ConfigError(f"{name}: expected regexes (str), got {p!r}")
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ConfigError(f"{name}: {p!r} is not a valid regex ({e})") from e
    return out


def _rebind(model: nn.Module) -> None:
    rebind = getattr(model, "rebind", None)
    if callable(rebind):
        rebind()


def _matches(
    name: str, target: list[str] | str | None, model: nn.Module, module: nn.Module
) -> bool:
    if not isinstance(module, nn.Linear):
        return False
    if target == "all-linear":
        out = getattr(model, "lm_head", None)
        return module is not out and not name.endswith("lm_head")
    if isinstance(target, str):
        try:
            return re.fullmatch(target, name) is not None
        except re.error as e:
            raise ConfigError(f"target_modules: {target!r} is not a valid regex ({e})") from e
    assert target is not None
    return name in target or any(name.endswith(f".{t}") for t in target)


def add_lora(model: nn.Module, config: LoraConfig, adapter_name: str = "default") -> list[str]:
    """Wrap every target ``nn.Linear`` of ``model`` in a :class:`LoraLayer` with a new adapter
    and freeze everything else (PEFT's ``get_peft_model``). Returns the adapted module names.

    Adding a second name to an already adapted model adds a second adapter to the same layers
    and makes it active (``set_adapter`` switches back)."""
    _module(model)
    if not isinstance(config, LoraConfig):
        raise VoxlmTypeError(
            f"config: expected a voxlm.adapters.LoraConfig, got {type(config).__name__}"
        )
    if config.target_modules is None:
        raise ConfigError(
            "target_modules: expected module names, a regex or 'all-linear', got None"
        )
    existing = dict(_lora_layers(model))
    names: list[str] = []
    if existing:
        for n, layer in existing.items():
            if adapter_name in layer.lora_A:
                raise ConfigError(f"adapter_name: an adapter named {adapter_name!r} already exists")
            layer.add(adapter_name, config)
            names.append(n)
    else:
        for name, module in list(model.named_modules()):
            if _matches(name, config.target_modules, model, module):
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                layer = LoraLayer(module)  # type: ignore[arg-type]
                layer.add(adapter_name, config)
                setattr(parent, child, layer)
                names.append(name)
    if not names:
        raise ConfigError(
            f"target_modules: {config.target_modules!r} matches no nn.Linear of the model"
        )
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_A." in n or ".lora_B." in n)
    model._voxlm_lora_configs = {**getattr(model, "_voxlm_lora_configs", {}), adapter_name: config}  # type: ignore[assignment]
    set_adapter(model, adapter_name)
    return names


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the active adapter of every LoRA layer."""
    layers = _lora_layers(model)
    if not layers or adapter_name not in layers[0][1].lora_A:
        have = sorted(layers[0][1].lora_A) if layers else []
        raise ConfigError(f"adapter_name: no adapter {adapter_name!r} (have {have})")
    for _, layer in layers:
        layer.active_adapter = adapter_name
    _rebind(model)


def disable_adapters(model: nn.Module) -> None:
    """Run the base model only (PEFT's ``disable_adapter`` context, as a switch)."""
    for _, layer in _lora_layers(model):
        layer.disabled = True
    _rebind(model)


def enable_adapters(model: nn.Module) -> None:
    for _, layer in _lora_layers(model):
        layer.disabled = False
    _rebind(model)


@torch.no_grad()
def merge_adapter(model: nn.Module) -> None:
    """Add ``scaling * B @ A`` of the active adapter into the base weights (in place)."""
    for _, layer in _lora_layers(model):
        n = layer.active_adapter
        if n not in layer.merged:
            layer.base_layer.weight += layer.delta_weight(n).to(layer.base_layer.weight.dtype)
            layer.merged.append(n)
    _rebind(model)


@torch.no_grad()
def unmerge_adapter(model: nn.Module) -> None:
    """Subtract merged adapters from the base weights again."""
    for _, layer in _lora_layers(model):
        while layer.merged:
            n = layer.merged.pop()
            layer.base_layer.weight -= layer.delta_weight(n).to(layer.base_layer.weight.dtype)
    _rebind(model)


def lora_settings(model: nn.Module) -> dict[str, Any]:
    """For the LLaMA core: ``(tensors, {prefix: (scaling, dropout)})`` with the LoRA layers
    flattened to ``{prefix}.weight``/``.bias`` and ``{prefix}.lora_A.weight``/``lora_B.weight``."""
    tensors: dict[str, torch.Tensor] = {}
    settings: dict[str, tuple[float, float]] = {}
    for name, layer in _lora_layers(model):
        tensors[f"{name}.weight"] = layer.base_layer.weight
        if layer.base_layer.bias is not None:
            tensors[f"{name}.bias"] = layer.base_layer.bias
        n = layer.active()
        if n is not None:
            tensors[f"{name}.lora_A.weight"] = layer.lora_A[n].weight
            tensors[f"{name}.lora_B.weight"] = layer.lora_B[n].weight
            settings[name] = (layer.scaling[n], layer.dropout_p[n])
    return {"tensors": tensors, "settings": settings}


def save_adapter(model: nn.Module, path: PathLike, adapter_name: str = "default") -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT does
    (keys ``base_model.model.{module}.lora_A.weight``); a non-default adapter goes to
    ``path/adapter_name`` like PEFT's ``save_pretrained``."""
    if not isinstance(path, (str, os.PathLike)):
        raise VoxlmTypeError(f"path: expected an output folder, got {type(path).__name__}")
    configs = getattr(model, "_voxlm_lora_configs", {})
    if adapter_name not in configs:
        raise ConfigError(f"adapter_name: no adapter {adapter_name!r} (have {sorted(configs)})")
    out = pathlib.Path(path) if adapter_name == "default" else pathlib.Path(path) / adapter_name
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in _lora_layers(model):
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[
            adapter_name
        ].weight.detach()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[
            adapter_name
        ].weight.detach()
    _core.save_safetensors(tensors, os.fspath(out / WEIGHTS_NAME))
    (out / CONFIG_NAME).write_text(json.dumps(configs[adapter_name].to_peft_dict(), indent=2))


def load_adapter(model: nn.Module, path: PathLike, adapter_name: str = "default") -> list[str]:
    """Read a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) into
    ``model`` as ``adapter_name`` and make it active."""
    _module(model)
    if not isinstance(path, (str, os.PathLike)):
        raise VoxlmTypeError(f"path: expected an adapter folder, got {type(path).__name__}")
    p = pathlib.Path(path)
    if not (p / CONFIG_NAME).is_file():
        raise CheckpointError(f"{p}: no {CONFIG_NAME}")
    if not (p / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{p}: no {WEIGHTS_NAME} (only safetensors adapters are read)")
    try:
        raw = json.loads((p / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p / CONFIG_NAME}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{p / CONFIG_NAME}: expected a JSON object, got {type(raw).__name__}"
        )
    try:
        config = LoraConfig.from_peft_dict(raw)
    except TypeError as e:  # a field of the wrong type reaching the dataclass
        raise ConfigError(f"{p / CONFIG_NAME}: {e}") from e
    ref = next(iter(model.parameters()))
    dev = str(ref.device) if ref.device.type == "cpu" else f"cuda:{ref.device.index or 0}"
    sd = _core.load_safetensors(os.fspath(p / WEIGHTS_NAME), str(ref.dtype), dev)
    # check names and shapes against the base model before anything is allocated or changed
    if config.target_modules is None:
        raise ConfigError(f"{p / CONFIG_NAME}: target_modules is missing")
    existing = dict(_lora_layers(model))
    if existing:
        targets = {n: layer.base_layer for n, layer in existing.items()}
    else:
        targets = {
            n: m for n, m in model.named_modules() if _matches(n, config.target_modules, model, m)
        }
    if not targets:
        raise ConfigError(
            f"{p}: target_modules {config.target_modules!r} match no nn.Linear of the model"
        )
    expected_shapes: dict[str, tuple[int, int]] = {}
    for n, lin in targets.items():
        expected_shapes[f"base_model.model.{n}.lora_A.weight"] = (config.r, lin.in_features)
        expected_shapes[f"base_model.model.{n}.lora_B.weight"] = (lin.out_features, config.r)
    missing = sorted(set(expected_shapes) - set(sd))
    unexpected = sorted(k for k in set(sd) - set(expected_shapes) if ".lora_" in k)
    if missing or unexpected:
        msg = []
        if missing:
            msg.append(
                f"missing {missing[0]}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            )
        if unexpected:
            msg.append(f"unexpected {unexpected[0]} (a module this model does not have)")
        raise CheckpointError(f"{p}: adapter does not fit the model: " + "; ".join(msg))
    for k, shape in expected_shapes.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(
                f"{p}: {k} has shape {tuple(sd[k].shape)}, the model (r={config.r}) expects {shape}"
            )
    names = add_lora(model, config, adapter_name)
    layers = dict(_lora_layers(model))
    expected = {}
    for n in names:
        for ab in ("lora_A", "lora_B"):
            expected[f"base_model.model.{n}.{ab}.weight"] = getattr(layers[n], ab)[
                adapter_name
            ].weight
    with torch.no_grad():
        for k, param in expected.items():
            param.copy_(sd[k])
    _rebind(model)
    return names


# ---------------------------------------------------------------------------------------------
# bias tuning and trainability

#: PICG's bias-tuned projections (LLaMA wq, wo, w1, w2, w3 in transformers' names).
PICG_BIAS_MODULES = ("q_proj", "o_proj", "gate_proj", "down_proj", "up_proj")


def add_bias_tuning(
    model: nn.Module, modules: Sequence[str] = PICG_BIAS_MODULES, norms: bool = True
) -> int:
    """PICG's bias tuning: give every ``nn.Linear`` whose name ends with one of ``modules`` a
    zero-initialised trainable bias (an existing bias becomes trainable), make RMSNorm weights
    trainable when ``norms``, freeze everything else. Returns the number of trainable parameters."""
    _module(model)
    if isinstance(modules, str):
        modules = [modules]
    if isinstance(modules, bytes) or not isinstance(modules, Iterable):
        raise ConfigError(f"modules: expected a list of module-name suffixes, got {modules!r}")
    modules = list(modules)
    count = 0
    for p in model.parameters():
        p.requires_grad_(False)
    for name, m in model.named_modules():
        base = m.base_layer if isinstance(m, LoraLayer) else m
        if isinstance(base, nn.Linear) and any(
            name == t or name.endswith(f".{t}") for t in modules
        ):
            if base.bias is None:
                base.bias = nn.Parameter(
                    torch.zeros(
                        base.out_features, device=base.weight.device, dtype=base.weight.dtype
                    )
                )
            base.bias.requires_grad_(True)
            count += 1
        elif norms and type(m).__name__.endswith("RMSNorm"):
            m.weight.requires_grad_(True)
    if count == 0:
        raise ConfigError(f"modules: {list(modules)} matches no nn.Linear of the model")
    _rebind(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mark_trainable(model: nn.Module, patterns: Iterable[str], freeze_others: bool = True) -> int:
    """Make parameters whose name matches any regex in ``patterns`` (``re.search``) trainable;
    freeze the rest unless ``freeze_others`` is False. Returns how many tensors matched."""
    _module(model)
    pats = _regexes(patterns, "patterns")
    n = 0
    for name, p in model.named_parameters():
        hit = any(r.search(name) for r in pats)
        if hit:
            p.requires_grad_(True)
            n += 1
        elif freeze_others:
            p.requires_grad_(False)
    if n == 0:
        raise ConfigError(f"patterns: {[p.pattern for p in pats]} match no parameter")
    return n


def trainable_parameters(model: nn.Module, verbose: bool = False) -> tuple[int, int, float]:
    """``(trainable, total, percent)`` as PEFT's ``print_trainable_parameters`` reports them."""
    _module(model)
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    pct = 100 * trainable / total if total else 0.0
    if verbose:
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"
        )
    return trainable, total, pct


# ---------------------------------------------------------------------------------------------
# adaption prompts (LLaMA-Adapter)


def add_adaption_prompt(model: nn.Module, adapter_len: int, adapter_layers: int) -> int:
    """LLaMA-Adapter gated adaption prompts in the last ``adapter_layers`` decoder layers, as
    PEFT's ``AdaptionPromptConfig``: each adapted attention gets ``adaption_prompt`` ``[1, L, H]``
    (normal init) and a zero-initialised ``adaption_gate``; queries attend to the prompt's keys and
    values with their own softmax scaled by the gate (so training starts from the base model).
    Everything else is frozen. Returns the number of trainable parameters."""
    _module(model)
    adapter_len = _check_int(adapter_len, "adapter_len")
    adapter_layers = _check_int(adapter_layers, "adapter_layers")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ConfigError("add_adaption_prompt: expected a LlamaForCausalLM (model.model.layers)")
    if not 0 < adapter_layers <= len(layers):
        raise ConfigError(f"adapter_layers: expected 1..{len(layers)}, got {adapter_layers}")
    if adapter_len <= 0:
        raise ConfigError(f"adapter_len: expected > 0, got {adapter_len}")
    for p in model.parameters():
        p.requires_grad_(False)
    hidden = model.config.hidden_size  # type: ignore[union-attr]
    ref = next(model.parameters())
    check_budget("add_adaption_prompt", adapter_len * hidden * adapter_layers, ref.dtype)
    for layer in list(layers)[-adapter_layers:]:
        attn = layer.self_attn
        attn.adaption_prompt = nn.Parameter(
            torch.empty(1, adapter_len, hidden, device=ref.device, dtype=ref.dtype).normal_()
        )
        attn.adaption_gate = nn.Parameter(torch.zeros(1, device=ref.device, dtype=ref.dtype))
    _rebind(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# prefix


class PrefixEncoder(nn.Module):
    """RAD3D-Prefix's anomaly-aware prefix: maps a conditioning vector (an image embedding
    concatenated with multi-label logits) to ``num_prefix`` embeddings for a frozen LLM.

    ``[B, in_dim] -> [B, num_prefix, hidden_size]``: a linear lift to ``num_prefix`` tokens plus
    learned position embeddings, ``depth`` small transformer encoder layers, and a projection to
    the LLM width.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_size: int,
        num_prefix: int = 10,
        width: int = 256,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for k, v in dict(
            in_dim=in_dim, hidden_size=hidden_size, num_prefix=num_prefix, width=width, heads=heads
        ).items():
            _check_int(v, f"PrefixEncoder {k}")
        _check_int(depth, "PrefixEncoder depth", 0)
        dropout = check_number(dropout, "PrefixEncoder dropout", 0.0, 1.0, high_open=True)
        check_budget(
            "PrefixEncoder",
            in_dim * num_prefix * width + depth * 12 * width * width + width * hidden_size,
        )
        if width % heads:
            raise ConfigError(f"PrefixEncoder: width {width} must be divisible by heads {heads}")
        self.in_dim, self.num_prefix, self.width = in_dim, num_prefix, width
        self.lift = nn.Linear(in_dim, num_prefix * width)
        self.pos = nn.Parameter(torch.zeros(num_prefix, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout, batch_first=True, norm_first=True
        )
        self.blocks = (
            nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            if depth
            else nn.Identity()
        )
        self.out = nn.Linear(width, hidden_size)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        check_tensor(cond, "cond", floating=True)
        if cond.dim() != 2 or cond.shape[1] != self.in_dim:
            raise ShapeError(f"cond: expected [B, {self.in_dim}], got shape {tuple(cond.shape)}")
        x = self.lift(cond).view(cond.shape[0], self.num_prefix, self.width) + self.pos
        return self.out(self.blocks(x))


def prepend_prefix(
    prefix: torch.Tensor,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``[prefix ; inputs_embeds]`` with the attention mask extended by ones and labels by
    ``-100`` (prefix positions are never predicted). Returns ``(embeds, mask, labels)``."""
    check_tensor(prefix, "prefix", floating=True)
    check_tensor(inputs_embeds, "inputs_embeds", floating=True)
    if (
        prefix.dim() != 3
        or inputs_embeds.dim() != 3
        or prefix.shape[0] != inputs_embeds.shape[0]
        or prefix.shape[2] != inputs_embeds.shape[2]
    ):
        raise ShapeError(
            f"prefix {tuple(prefix.shape)} and inputs_embeds {tuple(inputs_embeds.shape)}: "
            "expected [B, k, H] and [B, T, H]"
        )
    b, k = prefix.shape[:2]
    t = inputs_embeds.shape[1]
    dev = inputs_embeds.device
    if attention_mask is None:
        attention_mask = torch.ones(b, t, dtype=torch.long, device=dev)
    mask = torch.cat([torch.ones(b, k, dtype=attention_mask.dtype, device=dev), attention_mask], 1)
    embeds = torch.cat([prefix.to(inputs_embeds.dtype), inputs_embeds], 1)
    if labels is not None:
        labels = torch.cat([torch.full((b, k), -100, dtype=labels.dtype, device=dev), labels], 1)
    return embeds, mask, labels
