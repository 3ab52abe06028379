"""Training in stages: freeze/unfreeze between phases, each stage a sub-folder of one run."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..exceptions import CheckpointError, ConfigError
from . import checkpoint as C
from .args import TrainingArguments
from .trainer import EvalPrediction, Trainer, TrainOutput


@dataclass
class Stage:
    """One phase of a recipe: ``set_trainable(model)`` sets ``requires_grad`` (and may add
    adapters) before the stage trains with ``args``."""

    name: str
    args: TrainingArguments
    set_trainable: Callable[[nn.Module], Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"Stage.name: expected a non-empty folder name, got {self.name!r}")
        if not isinstance(self.args, TrainingArguments):
            raise ConfigError(
                f"Stage {self.name!r}: args: expected a TrainingArguments, got "
                f"{type(self.args).__name__}"
            )
        if self.set_trainable is not None and not callable(self.set_trainable):
            raise ConfigError(
                f"Stage {self.name!r}: set_trainable: expected a callable(model) or None, got "
                f"{type(self.set_trainable).__name__}"
            )


def run_stages(
    model: nn.Module,
    stages: list[Stage],
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
    data_collator: Callable[[list[Any]], Any] | None = None,
    compute_metrics: Callable[[EvalPrediction], dict[str, Any]] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> dict[str, TrainOutput]:
    """Run ``stages`` in order into ``output_dir/<stage name>/`` (default ``output_dir``: the
    first stage's ``args.output_dir``).

    Before each stage the global RNG is seeded with the stage's ``seed`` and ``set_trainable``
    runs, so a stage's start (e.g. a LoRA initialisation) does not depend on how the previous one
    ended. With ``resume``, a stage whose ``final/`` folder is complete is not trained again: its
    trainable parameters are loaded from there; the first unfinished stage continues from its
    newest complete checkpoint (or starts); later stages follow."""
    if not stages:
        raise ConfigError("stages: expected at least one Stage, got an empty list")
    not_stages = [type(s).__name__ for s in stages if not isinstance(s, Stage)]
    if not_stages:
        raise ConfigError(f"stages: expected voxlm.train.Stage objects, got {not_stages}")
    names = [s.name for s in stages]
    bad = [
        n
        for n in names
        if not n
        or "/" in n
        or "\\" in n
        or n.startswith(".")
        or n in ("final",)
        or n.startswith("checkpoint-")
    ]
    if bad or len(set(names)) != len(names):
        raise ConfigError(
            "stages: names must be unique folder names (not 'final' or 'checkpoint-*'), "
            f"got {names}"
        )
    run = pathlib.Path(output_dir if output_dir is not None else stages[0].args.output_dir)
    results: dict[str, TrainOutput] = {}
    for stage in stages:
        args = stage.args.replace(output_dir=os.fspath(run / stage.name))
        C.set_seed(args.seed)
        if stage.set_trainable is not None:
            stage.set_trainable(model)
        final = pathlib.Path(args.output_dir) / "final"
        if resume and (final / C.STATE_NAME).is_file():
            try:  # every tensor this stage trains must be in its final/; the rest stays as set
                C.load_trainable(model, final, strict=True)
            except CheckpointError as e:
                raise CheckpointError(
                    f"stage {stage.name!r}: resuming from its finished {final} failed: {e}"
                ) from e
            import json

            st = json.loads((final / C.STATE_NAME).read_text())
            results[stage.name] = TrainOutput(
                int(st["global_step"]), float("nan"), {"resumed_from": os.fspath(final)}
            )
            continue
        trainer = Trainer(
            model,
            args,
            train_dataset,
            eval_dataset,
            data_collator,
            compute_metrics,
            stage_name=stage.name,
        )
        results[stage.name] = trainer.train(resume_from_checkpoint=True if resume else None)
    return results
