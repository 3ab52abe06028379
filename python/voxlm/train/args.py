"""``TrainingArguments``: Hugging Face's names and meanings, loaded and saved as YAML or JSON.

Only the fields voxlm's trainer implements are accepted (an unknown key is a ``ConfigError``
naming it, so a typo never silently falls back to a default). Every field keeps the meaning it has
in ``transformers.TrainingArguments``; voxlm adds ``shuffle`` (False keeps a fixed data order,
for exact comparisons), ``skip_nonfinite_steps`` and ``plot``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import ConfigError

PathLike = str | os.PathLike[str]

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
STRATEGIES = ("no", "steps", "epoch")

#: Fields that change the optimisation trajectory: resuming a run with any of them changed is
#: refused (``ConfigError`` naming them).
OPTIMIZATION_FIELDS = (
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "seed",
    "data_seed",
    "shuffle",
    "bf16",
    "fp16",
    "dataloader_drop_last",
    "skip_nonfinite_steps",
)


@dataclass
class TrainingArguments:
    """Arguments of a training run (``transformers.TrainingArguments`` names and meanings).

    Length: ``max_steps`` (> 0) optimizer steps, or else ``num_train_epochs`` epochs (a fraction
    rounds the step count up, as HF). One optimizer step consumes ``gradient_accumulation_steps``
    micro-batches of ``per_device_train_batch_size`` per process. Warmup: ``warmup_steps`` >= 1 is
    a step count, a value in (0, 1) a ratio of the total steps (transformers 5); otherwise
    ``warmup_ratio`` (transformers 4): ``ceil(total * warmup_ratio)``.
    """

    output_dir: str = "voxlm_run"
    overwrite_output_dir: bool = False
    # length and batch
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    # optimizer (AdamW) and schedule
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0
    warmup_ratio: float = 0.0
    # logging, evaluation, checkpoints
    logging_steps: int = 10
    logging_first_step: bool = False
    eval_strategy: str = "no"
    eval_steps: int | None = None
    save_strategy: str = "steps"
    save_steps: int = 500
    save_total_limit: int | None = None
    report_to: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    disable_tqdm: bool = False
    label_names: list[str] | None = None
    # reproducibility and data
    seed: int = 42
    data_seed: int | None = None
    shuffle: bool = True
    dataloader_num_workers: int = 0
    dataloader_drop_last: bool = False
    # precision and memory
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    use_cpu: bool = False
    # distributed
    ddp_backend: str | None = None
    ddp_find_unused_parameters: bool | None = None
    fsdp: bool = False
    # voxlm
    skip_nonfinite_steps: bool = False
    plot: bool = True

    def __post_init__(self) -> None:
        self._coerce()
        self._validate()

    # -- validation -----------------------------------------------------------------------

    def _coerce(self) -> None:
        """Accept what YAML gives for numbers (``5e-5`` is read as a string by YAML 1.1)."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            if v is None:
                continue
            try:
                if t.startswith("float") and isinstance(v, (str, int)) and not isinstance(v, bool):
                    setattr(self, f.name, float(v))
                elif t.startswith("int") and isinstance(v, str):
                    setattr(self, f.name, int(v))
                elif t.startswith("int") and isinstance(v, float) and v.is_integer():
                    setattr(self, f.name, int(v))
            except ValueError as e:
                raise ConfigError(f"{f.name}: expected a number, got {v!r}") from e
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [self.report_to]
        if not isinstance(self.output_dir, (str, os.PathLike)):
            raise ConfigError(f"output_dir: expected a folder path, got {self.output_dir!r}")
        self.output_dir = os.fspath(self.output_dir)

    def _validate(self) -> None:
        def need(cond: bool, name: str, expected: str) -> None:
            if not cond:
                raise ConfigError(f"{name}: expected {expected}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(
            isinstance(self.output_dir, str) and self.output_dir != "",
            "output_dir",
            "a folder path",
        )
        need(
            is_num(self.num_train_epochs) and self.num_train_epochs > 0,
            "num_train_epochs",
            "a number > 0",
        )
        need(
            is_int(self.max_steps) and (self.max_steps > 0 or self.max_steps == -1),
            "max_steps",
            "-1 (use num_train_epochs) or a positive integer",
        )
        for n in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        ):
            need(is_int(getattr(self, n)) and getattr(self, n) > 0, n, "a positive integer")
        need(
            is_num(self.learning_rate) and self.learning_rate >= 0, "learning_rate", "a number >= 0"
        )
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        for n in ("adam_beta1", "adam_beta2"):
            need(is_num(getattr(self, n)) and 0 <= getattr(self, n) < 1, n, "a number in [0, 1)")
        need(is_num(self.adam_epsilon) and self.adam_epsilon >= 0, "adam_epsilon", "a number >= 0")
        need(
            is_num(self.max_grad_norm) and self.max_grad_norm >= 0,
            "max_grad_norm",
            "a number >= 0 (0 disables clipping)",
        )
        need(
            self.lr_scheduler_type in SCHEDULERS, "lr_scheduler_type", f"one of {list(SCHEDULERS)}"
        )
        need(
            is_num(self.warmup_steps)
            and self.warmup_steps >= 0
            and (self.warmup_steps < 1 or float(self.warmup_steps).is_integer()),
            "warmup_steps",
            "a step count (integer >= 0) or a ratio in [0, 1)",
        )
        need(
            is_num(self.warmup_ratio) and 0 <= self.warmup_ratio <= 1,
            "warmup_ratio",
            "a number in [0, 1]",
        )
        need(
            is_int(self.logging_steps) and self.logging_steps > 0,
            "logging_steps",
            "a positive integer",
        )
        need(self.eval_strategy in STRATEGIES, "eval_strategy", f"one of {list(STRATEGIES)}")
        need(
            self.eval_steps is None or (is_int(self.eval_steps) and self.eval_steps > 0),
            "eval_steps",
            "None (= logging_steps) or a positive integer",
        )
        need(self.save_strategy in STRATEGIES, "save_strategy", f"one of {list(STRATEGIES)}")
        need(is_int(self.save_steps) and self.save_steps > 0, "save_steps", "a positive integer")
        need(
            self.save_total_limit is None
            or (is_int(self.save_total_limit) and self.save_total_limit > 0),
            "save_total_limit",
            "None (keep all) or a positive integer",
        )
        need(
            isinstance(self.report_to, list)
            and all(r in ("csv", "tensorboard") for r in self.report_to),
            "report_to",
            "a list of 'csv' and 'tensorboard' (or 'none')",
        )
        need(
            self.label_names is None
            or (
                isinstance(self.label_names, list)
                and all(isinstance(n, str) for n in self.label_names)
            ),
            "label_names",
            "None (= ['labels']) or a list of batch keys",
        )
        seeds = "an integer in [-2**63, 2**63)"
        need(is_int(self.seed) and -(2**63) <= self.seed < 2**63, "seed", seeds)
        need(
            self.data_seed is None
            or (is_int(self.data_seed) and -(2**63) <= self.data_seed < 2**63),
            "data_seed",
            f"None or {seeds}",
        )
        need(
            is_int(self.dataloader_num_workers) and 0 <= self.dataloader_num_workers <= 1024,
            "dataloader_num_workers",
            "an integer in [0, 1024] (worker processes)",
        )
        for n in (
            "overwrite_output_dir",
            "logging_first_step",
            "disable_tqdm",
            "shuffle",
            "dataloader_drop_last",
            "bf16",
            "fp16",
            "gradient_checkpointing",
            "use_cpu",
            "fsdp",
            "skip_nonfinite_steps",
            "plot",
        ):
            need(isinstance(getattr(self, n), bool), n, "true or false")
        if self.bf16 and self.fp16:
            raise ConfigError("bf16, fp16: expected at most one of them true, got both")
        need(
            self.ddp_backend in (None, "gloo", "nccl"),
            "ddp_backend",
            "None (auto), 'gloo' or 'nccl'",
        )
        need(
            self.ddp_find_unused_parameters in (None, True, False),
            "ddp_find_unused_parameters",
            "None, true or false",
        )

    # -- derived values -------------------------------------------------------------------

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup step count for a run of ``num_training_steps`` optimizer steps (HF's rule)."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        if self.warmup_steps > 0:
            return math.ceil(num_training_steps * self.warmup_steps)
        return math.ceil(num_training_steps * self.warmup_ratio)

    @property
    def effective_eval_steps(self) -> int:
        return self.eval_steps if self.eval_steps is not None else self.logging_steps

    # -- I/O ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> TrainingArguments:
        """From a mapping (the CLI config's ``train`` section); unknown keys are refused."""
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ConfigError(
                f"train: expected a mapping of TrainingArguments fields, got {type(d).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"train: unknown TrainingArguments fields {unknown} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**dict(d))

    def to_yaml(self, path: PathLike | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            pathlib.Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: PathLike) -> TrainingArguments:
        """From a YAML file (or YAML text): either the fields at top level or under ``train:``."""
        import yaml

        s = os.fspath(path_or_text)
        if "\n" not in s and pathlib.Path(s).is_file():
            text = pathlib.Path(s).read_text()
        elif "\n" in s or ":" in s:
            text = s
        else:
            raise ConfigError(f"{s}: no such YAML file")
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path_or_text}: not valid YAML ({e})") from e
        if isinstance(d, Mapping) and "train" in d and isinstance(d["train"], Mapping):
            d = d["train"]
        return cls.from_dict(d)

    def to_json(self, path: PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            pathlib.Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path_or_text: PathLike) -> TrainingArguments:
        s = os.fspath(path_or_text)
        text = s if s.lstrip().startswith("{") else pathlib.Path(s).read_text()
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path_or_text}: not valid JSON ({e})") from e

    def replace(self, **changes: Any) -> TrainingArguments:
        """A copy with ``changes`` (``dataclasses.replace``; validated again)."""
        return dataclasses.replace(self, **changes)

    def optimization_diff(self, other: TrainingArguments | Mapping[str, Any]) -> list[str]:
        """Names of the :data:`OPTIMIZATION_FIELDS` whose values differ from ``other``."""
        o = other.to_dict() if isinstance(other, TrainingArguments) else dict(other)
        mine = self.to_dict()
        return [
            f"{k} ({o.get(k)!r} -> {mine[k]!r})"
            for k in OPTIMIZATION_FIELDS
            if k in o and o[k] != mine[k]
        ]
