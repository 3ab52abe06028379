"""voxlm's trainer: Hugging Face's ``TrainingArguments`` names, atomic checkpoints, exact resume,
torchrun (DDP; FSDP2), stages.

.. code-block:: python

    from voxlm.train import TrainingArguments, Trainer, Stage, run_stages

    args = TrainingArguments(output_dir="runs/x", max_steps=200, learning_rate=1e-3,
                             lr_scheduler_type="cosine", warmup_ratio=0.03, save_steps=50)
    Trainer(model, args, train_ds, eval_ds, data_collator=collate).train()
    # killed? the same call with resume_from_checkpoint=True continues bit-exactly

A run folder: ``training_args.yaml``, ``metrics.csv``, ``events.out.tfevents.*``, ``loss.png``,
``checkpoint-<step>/`` (see :mod:`voxlm.train.checkpoint`), ``final/``, ``trainer_state.json``.
"""

from .args import OPTIMIZATION_FIELDS, TrainingArguments
from .checkpoint import latest_checkpoint, list_checkpoints, load_trainable, save_adapters
from .schedules import decay_parameter_names, get_scheduler, param_groups
from .stages import Stage, run_stages
from .trainer import EvalPrediction, Trainer, TrainOutput

__all__ = [
    "OPTIMIZATION_FIELDS",
    "EvalPrediction",
    "Stage",
    "Trainer",
    "TrainOutput",
    "TrainingArguments",
    "decay_parameter_names",
    "get_scheduler",
    "latest_checkpoint",
    "list_checkpoints",
    "load_trainable",
    "param_groups",
    "run_stages",
    "save_adapters",
]
