"""The training loop: ``Trainer(model, args, train_dataset, ...).train()``.

The model's forward takes the collated batch as keyword arguments and returns an object with
``.loss`` (voxlm's outputs, transformers' ``ModelOutput``), a mapping with ``"loss"``, a tuple
whose first item is the loss, or the loss tensor itself. One optimizer step:
``gradient_accumulation_steps`` micro-batches, each loss divided by the number of micro-batches
in the step (the last step of an epoch may have fewer, as in transformers), backward, gradient
clipping to ``max_grad_norm``, AdamW, the LR schedule.

Exact resume: the data order of epoch ``e`` is a permutation drawn from a generator seeded with
``(data_seed or seed) + e`` (``DistributedSampler``'s rule, also with one process); the
DataLoader gets its own generator so iterating never consumes the global RNG; a checkpoint
records the epoch and the micro-batch position in it, the optimizer, scheduler, scaler and every
RNG state, taken after the optimizer step. Resuming restores all of it and skips the consumed
indices in the sampler (no batch is loaded twice), so a run killed at any step and resumed ends
with bit-identical parameters on CPU (``tests/test_train_resume_kill.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..exceptions import (
    CheckpointError,
    ConfigError,
    DataError,
    TrainingError,
    VoxlmIOError,
    VoxlmTypeError,
)
from . import checkpoint as C
from . import distributed as D
from .args import TrainingArguments
from .precision import rust_modules_in_own_dtype
from .runlog import RunLog, plot_loss
from .schedules import create_optimizer, get_scheduler

RUN_MARKERS = ("training_args.yaml", "metrics.csv", "trainer_state.json", "final")


@dataclass
class TrainOutput:
    """``global_step``, the mean training loss over the run, and the last logged metrics."""

    global_step: int
    training_loss: float
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalPrediction:
    """What ``compute_metrics`` receives (transformers' names): ``predictions`` (the model
    outputs' ``logits``, concatenated over batches, padded with -100 where lengths differ) and
    ``label_ids`` (the batches' first of ``args.label_names``, default ``labels``), as numpy
    arrays (None when absent)."""

    predictions: Any
    label_ids: Any


class _StridedSampler(Sampler[int]):
    """Evaluation order without padding: rank ``r`` of ``w`` takes items ``r, r + w, ...``, so
    every item is seen exactly once over the ranks (``DistributedSampler`` would repeat items to
    give every rank the same count, and those repeats would enter ``eval_loss``)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def _in_dataset_order(per_rank: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Batches gathered from the ranks of a :class:`_StridedSampler` -> one-row chunks in dataset
    order (item ``i`` is row ``i // w`` of rank ``i % w``)."""
    rows = [[c[j : j + 1] for c in chunks for j in range(c.shape[0])] for chunks in per_rank]
    w = len(rows)
    n = sum(len(r) for r in rows)
    return [rows[i % w][i // w] for i in range(n)]


class _ResumableSampler(Sampler[int]):
    """``DistributedSampler`` order (also for one process) from position ``start`` on."""

    def __init__(self, base: DistributedSampler) -> None:
        self.base = base
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_device(v, device) for v in obj)
    return obj


def _describe(batch: Mapping[str, Any]) -> str:
    parts = []
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            parts.append(f"{k}: {str(v.dtype).replace('torch.', '')}{list(v.shape)}")
        else:
            parts.append(f"{k}: {type(v).__name__}")
    return "{" + ", ".join(parts) + "}"


def _loss_of(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return out.get("loss")
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return getattr(out, "loss", None) if hasattr(out, "loss") else _NO_LOSS


_NO_LOSS = object()


def _tokens(batch: Mapping[str, Any]) -> Any:
    """Tokens in a batch (``attention_mask`` sum, else ``input_ids`` size; 0 without either);
    a device tensor when counted from the mask, so no host sync per micro-batch."""
    m = batch.get("attention_mask")
    if isinstance(m, torch.Tensor):
        return m.sum()
    ids = batch.get("input_ids")
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0


def _concat_padded(chunks: list[np.ndarray]) -> np.ndarray:
    """Concatenate along dim 0, padding dim 1 (sequence) with -100 where lengths differ."""
    if all(c.shape[1:] == chunks[0].shape[1:] for c in chunks):
        return np.concatenate(chunks, 0)
    t = max(c.shape[1] for c in chunks)
    out = []
    for c in chunks:
        pad = [(0, 0)] * c.ndim
        pad[1] = (0, t - c.shape[1])
        out.append(np.pad(c, pad, constant_values=-100))
    return np.concatenate(out, 0)


class Trainer:
    """Train ``model`` on ``train_dataset`` with ``args`` (see :class:`TrainingArguments`).

    Args:
        model: an ``nn.Module`` whose ``forward(**batch)`` returns the loss (see module doc).
        args: the run's arguments; ``args.output_dir`` is the run folder.
        train_dataset, eval_dataset: map-style torch Datasets (``len`` and ``[i]``).
        data_collator: list of items -> batch dict (default: ``torch.utils.data.default_collate``).
        compute_metrics: ``EvalPrediction -> dict`` of extra eval metrics (keys get ``eval_``).
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        data_collator: Callable[[list[Any]], Any] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict[str, Any]] | None = None,
        stage_name: str | None = None,
    ) -> None:
        if args is None:
            args = TrainingArguments()
        if not isinstance(args, TrainingArguments):
            raise ConfigError(
                f"args: expected a voxlm.train.TrainingArguments, got {type(args).__name__}"
            )
        if not isinstance(model, nn.Module):
            raise VoxlmTypeError(f"model: expected a torch nn.Module, got {type(model).__name__}")
        for name, ds in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if ds is not None and not (hasattr(ds, "__getitem__") or hasattr(ds, "__iter__")):
                raise VoxlmTypeError(
                    f"{name}: expected a dataset (len + indexing, or iterable), got "
                    f"{type(ds).__name__}"
                )
        for name, fn in (("data_collator", data_collator), ("compute_metrics", compute_metrics)):
            if fn is not None and not callable(fn):
                raise VoxlmTypeError(f"{name}: expected a callable, got {type(fn).__name__}")
        self.model = model
        self.args = args
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.data_collator = data_collator
        self.compute_metrics = compute_metrics
        self.stage_name = stage_name
        self.dist = D.setup(args.use_cpu, args.ddp_backend)
        self.device = self.dist.device
        if args.fp16 and self.device.type != "cuda":
            raise ConfigError("fp16: float16 mixed precision needs a CUDA device (use bf16 on CPU)")
        if args.bf16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("bf16: this GPU does not support bfloat16 (use fp16)")
        self.global_step = 0
        self.epoch = 0.0
        self.log: RunLog | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        self.scaler: Any = None
        self._wrapped: nn.Module | None = None
        self._last_finite: tuple[int, float] | None = None
        self._skipped = 0

    # -- helpers --------------------------------------------------------------------------

    @property
    def output_dir(self) -> pathlib.Path:
        return pathlib.Path(self.args.output_dir)

    @property
    def is_world_process_zero(self) -> bool:
        return self.dist.is_main

    def _autocast(self) -> Any:
        if self.args.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.args.fp16:
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool
    ) -> tuple[DataLoader, _ResumableSampler]:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError as e:
            raise DataError(
                f"dataset: expected a map-style Dataset with len(), got {type(dataset).__name__}"
            ) from e
        if n == 0:
            raise DataError(
                f"dataset: {type(dataset).__name__} is empty (0 items); expected at least one item"
            )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        base = DistributedSampler(
            dataset,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        sampler = _ResumableSampler(base)
        g = torch.Generator()
        g.manual_seed(seed)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            drop_last=drop_last,
            generator=g,
            pin_memory=self.device.type == "cuda",
        )
        return loader, sampler

    def _forward_loss(self, model: nn.Module, batch: Any, step: int, check: bool) -> torch.Tensor:
        """``model(**batch)`` -> loss; on the first batch (``check``), any failure becomes a
        ``TrainingError`` naming what the batch holds and what was expected."""
        if not isinstance(batch, Mapping):
            raise DataError(
                f"data_collator: returned a {type(batch).__name__}; "
                "expected a dict of keyword arguments "
                "for model.forward"
            )
        if not check:
            with self._autocast():
                return _loss_of(model(**batch))
        try:
            with self._autocast():
                out = model(**batch)
        except Exception as e:  # noqa: BLE001 - named and re-raised with the cause
            raise TrainingError(
                f"step {step}: the model rejected the first batch {_describe(batch)}: "
                f"{type(e).__name__}: {e}"
            ) from e
        loss = _loss_of(out)
        if loss is _NO_LOSS:
            raise TrainingError(
                f"step {step}: model(**batch) returned a {type(out).__name__}; expected an object "
                "with .loss, a dict with 'loss' or a loss tensor"
            )
        if loss is None:
            raise TrainingError(
                f"step {step}: the model returned loss None for the batch {_describe(batch)}; "
                "expected a loss (does the batch carry labels?)"
            )
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
            what = (
                f"a tensor of shape {list(loss.shape)}"
                if isinstance(loss, torch.Tensor)
                else type(loss).__name__
            )
            if isinstance(loss, torch.Tensor) and loss.dim() == 0:
                what = "a scalar that does not require grad (no trainable parameter reaches it)"
            raise TrainingError(
                f"step {step}: the model's loss is {what}; "
                "expected a scalar tensor that requires grad"
            )
        return loss

    # -- run folder -----------------------------------------------------------------------

    def _prepare_output_dir(self, resuming: bool) -> None:
        out = self.output_dir
        if self.dist.is_main:
            if out.exists() and not out.is_dir():
                raise ConfigError(f"output_dir: {out} exists and is not a folder")
            holds_run = out.is_dir() and (
                any((out / m).exists() for m in RUN_MARKERS) or bool(C.list_checkpoints(out))
            )
            if holds_run and not resuming:
                if not self.args.overwrite_output_dir:
                    raise ConfigError(
                        f"output_dir: {out} holds another run (training_args.yaml / checkpoints); "
                        "pass resume_from_checkpoint=True (--resume) to continue it, "
                        "overwrite_output_dir=True to replace it, or choose another folder"
                    )
                for _, p in C.list_checkpoints(out):
                    shutil.rmtree(p)
                for name in ("final", "metrics.csv", "trainer_state.json", "loss.png"):
                    p = out / name
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
                for p in out.glob("events.out.tfevents.*"):
                    p.unlink()
            try:
                out.mkdir(parents=True, exist_ok=True)
                probe = out / f".voxlm-write-test-{os.getpid()}"
                probe.write_text("ok")
                probe.unlink()
            except OSError as e:
                raise VoxlmIOError(
                    f"output_dir: {out} is not writable ({e.strerror or e}); "
                    "expected a folder this process can create files in"
                ) from e
            C.remove_stale_tmp(out)
        D.barrier(self.dist)

    def _resolve_resume(
        self, resume_from_checkpoint: bool | str | os.PathLike[str] | None
    ) -> pathlib.Path | None:
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if resume_from_checkpoint is True:
            return C.latest_checkpoint(self.output_dir)  # None: nothing to resume, start fresh
        if not isinstance(resume_from_checkpoint, (str, os.PathLike)):
            raise ConfigError(
                "resume_from_checkpoint: expected None, True or a checkpoint folder, got "
                f"{resume_from_checkpoint!r}"
            )
        p = pathlib.Path(resume_from_checkpoint)
        if not (p / C.STATE_NAME).is_file():
            raise CheckpointError(
                f"resume_from_checkpoint: {p} is not a complete checkpoint (no {C.STATE_NAME})"
            )
        return p

    # -- checkpoints ----------------------------------------------------------------------

    def _state(self, data_epoch: int, data_micro: int) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "data_epoch": data_epoch,
            "data_micro_batch": data_micro,
            "max_steps": self._max_steps,
            "world_size": self.dist.world_size,
            "stage": self.stage_name,
            "skipped_steps": self._skipped,
            "last_finite_loss": self._last_finite,
            "log_history": self.log.rows if self.log is not None else [],
            "args": self.args.to_dict(),
        }

    def _write_model_files(self, tmp: pathlib.Path, main: bool) -> None:
        tensors = C.trainable_state(self.model)  # collective under FSDP
        if main:
            C.save_tensors(tensors, tmp / C.WEIGHTS_NAME)
        C.save_adapters(self.model, tmp / "adapters", write=main)

    def _save_checkpoint(self, data_epoch: int, data_micro: int) -> pathlib.Path:
        step = self.global_step
        final = self.output_dir / f"checkpoint-{step}"
        main = self.dist.is_main
        state = self._state(data_epoch, data_micro)

        def write(tmp: pathlib.Path) -> None:
            torch.save(C.rng_state(), tmp / f"rng_state_{self.dist.rank}.pth")
            assert self.optimizer is not None
            if self.args.fsdp and self.dist.enabled:
                torch.save(self.optimizer.state_dict(), tmp / f"optimizer-{self.dist.rank}.pt")
            self._write_model_files(tmp, main)
            if main:
                if not (self.args.fsdp and self.dist.enabled):
                    torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.lr_scheduler.state_dict(), tmp / "scheduler.pt")
                if self.scaler is not None:
                    torch.save(self.scaler.state_dict(), tmp / "scaler.pt")
                self.args.to_yaml(tmp / "training_args.yaml")
                C.write_json(state, tmp / C.STATE_NAME)  # last: marks the folder's content complete

        prev = C.latest_checkpoint(self.output_dir)
        try:
            C.atomic_folder(final, write, self.dist)
        except OSError as e:
            raise TrainingError(
                f"step {step}: writing checkpoint-{step} failed ({e}); "
                + (f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint")
            ) from e
        if main:
            C.rotate(self.output_dir, self.args.save_total_limit, keep=final)
        D.barrier(self.dist)
        return final

    def _save_final(self) -> pathlib.Path:
        main = self.dist.is_main
        state = self._state(-1, -1)

        def write(tmp: pathlib.Path) -> None:
            self._write_model_files(tmp, main)
            if main:
                self.args.to_yaml(tmp / "training_args.yaml")
                C.write_json(state, tmp / C.STATE_NAME)

        try:
            return C.atomic_folder(self.output_dir / "final", write, self.dist)
        except OSError as e:
            raise TrainingError(f"step {self.global_step}: writing final/ failed ({e})") from e

    def _load_checkpoint(self, path: pathlib.Path) -> dict[str, Any]:
        try:
            state = json.loads((path / C.STATE_NAME).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path / C.STATE_NAME}: unreadable ({e})") from e
        if not isinstance(state, dict) or not isinstance(state.get("args", {}), dict):
            raise CheckpointError(
                f"{path / C.STATE_NAME}: expected a JSON object with 'args' (a trainer state), "
                f"got {type(state).__name__}"
            )
        diff = self.args.optimization_diff(state.get("args", {}))
        if diff:
            raise ConfigError(
                f"resume_from_checkpoint: {path} was trained with other optimisation arguments: "
                f"{', '.join(diff)}; restore them or train into a new output_dir"
            )
        if state.get("world_size", 1) != self.dist.world_size:
            raise ConfigError(
                f"resume_from_checkpoint: {path} was written by "
                f"{state.get('world_size')} processes, "
                f"this run has {self.dist.world_size}; resume with the same WORLD_SIZE"
            )
        C.load_trainable(self.model, path)
        assert self.optimizer is not None
        opt_file = path / (
            f"optimizer-{self.dist.rank}.pt"
            if self.args.fsdp and self.dist.enabled
            else "optimizer.pt"
        )
        parts = [
            (opt_file, self.optimizer, self.device),
            (path / "scheduler.pt", self.lr_scheduler, None),
        ]
        if self.scaler is not None and (path / "scaler.pt").is_file():
            parts.append((path / "scaler.pt", self.scaler, None))
        for file, obj, where in parts:
            # a truncated / overwritten file, or one of another model: named, not a torch trace
            try:
                obj.load_state_dict(torch.load(file, map_location=where, weights_only=True))
            except Exception as e:
                msg = " ".join(str(e).split())
                raise CheckpointError(
                    f"{file}: not a loadable {file.stem} state of this run ({msg[:200]})"
                ) from e
        rng = path / f"rng_state_{self.dist.rank}.pth"
        if not rng.is_file():
            raise CheckpointError(f"{path}: no {rng.name} (RNG state of rank {self.dist.rank})")
        try:
            state["_rng"] = torch.load(rng, weights_only=True)
        except Exception as e:  # a pickle with other objects than tensors and plain containers
            raise CheckpointError(
                f"{rng}: not a voxlm RNG state readable with weights_only=True ({e})"
            ) from e
        return state

    def _load_resumable(
        self, newest: pathlib.Path, auto: bool
    ) -> tuple[dict[str, Any], pathlib.Path]:
        """Load ``newest``; with ``auto`` (``resume_from_checkpoint=True``) in a single process,
        a checkpoint whose files cannot be read is renamed ``corrupt-checkpoint-N`` (kept, never
        deleted, and no longer taken for a checkpoint) and the next older complete one is tried,
        with a warning naming what failed. An explicit path, or several processes (every rank
        must agree on the step), raise the ``CheckpointError`` instead."""
        if not auto or self.dist.enabled:
            return self._load_checkpoint(newest), newest
        older = [p for _, p in reversed(C.list_checkpoints(self.output_dir)) if p != newest]
        failures: list[str] = []
        for path in [newest, *older]:
            try:
                st = self._load_checkpoint(path)
            except CheckpointError as e:
                failures.append(str(e))
                continue
            if failures:
                import warnings

                for bad in [newest, *older]:
                    if bad == path:
                        break
                    bad.rename(bad.with_name("corrupt-" + bad.name))
                warnings.warn(
                    f"resume_from_checkpoint=True: resuming from {path.name}; the newer "
                    f"checkpoint(s) could not be loaded and were renamed corrupt-<name> (kept): "
                    + "; ".join(failures),
                    stacklevel=3,
                )
            return st, path
        raise CheckpointError(
            f"resume_from_checkpoint=True: no checkpoint in {self.output_dir} could be loaded "
            f"(nothing renamed or removed): " + "; ".join(failures)
        )

    # -- training -------------------------------------------------------------------------

    def train(
        self, resume_from_checkpoint: bool | str | os.PathLike[str] | None = None
    ) -> TrainOutput:
        """Train for ``max_steps`` (or ``num_train_epochs``); ``resume_from_checkpoint`` True
        continues from the newest complete checkpoint in ``output_dir`` (fresh start if none),
        a path from that checkpoint."""
        args = self.args
        if self.train_dataset is None:
            raise DataError("train_dataset: None; expected a map-style torch Dataset")
        resume = self._resolve_resume(resume_from_checkpoint)
        self._prepare_output_dir(resuming=resume is not None or resume_from_checkpoint is True)
        loader, sampler = self._loader(
            self.train_dataset,
            args.per_device_train_batch_size,
            args.shuffle,
            args.dataloader_drop_last,
        )
        n_micro = len(loader)
        if n_micro == 0:
            raise DataError(
                f"train_dataset: {len(self.train_dataset)} items give no batch of "  # type: ignore[arg-type]
                f"{args.per_device_train_batch_size} with dataloader_drop_last=True"
            )
        ga = args.gradient_accumulation_steps
        per_epoch = max(1, math.ceil(n_micro / ga))
        max_steps = (
            args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
        )
        num_epochs = math.ceil(max_steps / per_epoch)
        self._max_steps = max_steps

        model = self.model
        if self.device.type != "cpu" or any(p.device.type != "cpu" for p in model.parameters()):
            model.to(self.device)
        if args.gradient_checkpointing:
            for m in model.modules():
                enable = getattr(m, "gradient_checkpointing_enable", None)
                if callable(enable):
                    enable()
        if not any(p.requires_grad for p in model.parameters()):
            raise TrainingError(
                "step 0: the model has no trainable parameters (every requires_grad is False); "
                "expected at least one (a stage's set_trainable must unfreeze something)"
            )
        wrapped = D.wrap_model(
            model, self.dist, fsdp=args.fsdp, find_unused_parameters=args.ddp_find_unused_parameters
        )
        self._wrapped = wrapped
        self.optimizer = create_optimizer(model, args)
        warmup = args.get_warmup_steps(max_steps)
        self.lr_scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer, warmup, max_steps)
        self.scaler = torch.amp.GradScaler("cuda") if args.fp16 else None

        start_epoch, start_micro, history = 0, 0, None
        if resume is not None:
            st, resume = self._load_resumable(resume, auto=resume_from_checkpoint is True)
            self.global_step, self.epoch = int(st["global_step"]), float(st["epoch"])
            start_epoch, start_micro = int(st["data_epoch"]), int(st["data_micro_batch"])
            history = st.get("log_history", [])
            self._skipped = int(st.get("skipped_steps", 0))
            lf = st.get("last_finite_loss")
            self._last_finite = tuple(lf) if lf else None  # type: ignore[assignment]
        else:
            C.set_seed(args.seed)
            self.global_step, self.epoch = 0, 0.0
        if self.dist.is_main:
            args.to_yaml(self.output_dir / "training_args.yaml")
        self.log = RunLog(
            self.output_dir,
            args.report_to,
            enabled=self.dist.is_main,
            history=history,
            resume_step=self.global_step if resume is not None else None,
        )
        if resume is not None:
            C.set_rng_state(st["_rng"])  # last: nothing above may consume the restored generators

        from tqdm.auto import tqdm

        bar = tqdm(
            total=max_steps,
            initial=self.global_step,
            desc=self.stage_name or "train",
            leave=True,
            disable=args.disable_tqdm or not self.dist.is_main,
            dynamic_ncols=True,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        run_losses: list[float] = []
        window: list[float] = []
        tokens, t_window = 0, time.perf_counter()
        checked = False
        is_ddp = type(wrapped).__name__ == "DistributedDataParallel"
        wrapped.train()
        mixed = rust_modules_in_own_dtype(model, self.device.type, enabled=args.bf16 or args.fp16)
        try:
            mixed.__enter__()
            for epoch in range(start_epoch, num_epochs):
                if self.global_step >= max_steps:
                    break
                micro = start_micro if epoch == start_epoch else 0
                sampler.set_epoch(epoch, micro * args.per_device_train_batch_size)
                group_loss: torch.Tensor | None = None
                for batch in loader:
                    last_group = micro // ga == per_epoch - 1
                    gsize = n_micro - (per_epoch - 1) * ga if last_group else ga
                    closes = (micro % ga == gsize - 1) or micro == n_micro - 1
                    batch = _to_device(batch, self.device)
                    sync = contextlib.nullcontext() if (closes or not is_ddp) else wrapped.no_sync()  # type: ignore[operator]
                    with sync:
                        loss = self._forward_loss(
                            wrapped, batch, self.global_step + 1, check=not checked
                        )
                        checked = True
                        scaled = loss / gsize
                        (
                            self.scaler.scale(scaled) if self.scaler is not None else scaled
                        ).backward()
                    group_loss = loss.detach() if group_loss is None else group_loss + loss.detach()
                    tokens += _tokens(batch)
                    micro += 1
                    if not closes:
                        continue
                    assert group_loss is not None
                    lr_used = self.lr_scheduler.get_last_lr()[0]  # logged as transformers 5 does
                    gn, bad, gl = self._update(params, group_loss / gsize)
                    self.global_step += 1
                    self.epoch = epoch + micro / n_micro
                    group_loss = None
                    if bad:
                        self._skipped += 1
                        if not args.skip_nonfinite_steps:
                            raise self._nonfinite_error()
                    else:
                        self._last_finite = (self.global_step, gl)
                        window.append(gl)
                        run_losses.append(gl)
                    bar.update(1)
                    if self.global_step % args.logging_steps == 0 or (
                        args.logging_first_step and self.global_step == 1
                    ):
                        dt = time.perf_counter() - t_window
                        row = {
                            "step": self.global_step,
                            "epoch": round(self.epoch, 4),
                            "loss": float(np.mean(window)) if window else float("nan"),
                            "learning_rate": lr_used,
                            "grad_norm": gn,
                        }
                        self.log.log(row)
                        post = {"loss": f"{row['loss']:.4g}", "lr": f"{row['learning_rate']:.3g}"}
                        n_tok = float(tokens)
                        if n_tok:
                            post["tok/s"] = f"{n_tok * self.dist.world_size / max(dt, 1e-9):.0f}"
                        bar.set_postfix(post, refresh=False)
                        window, tokens, t_window = [], 0, time.perf_counter()
                    if (
                        args.eval_strategy == "steps"
                        and self.eval_dataset is not None
                        and self.global_step % args.effective_eval_steps == 0
                    ):
                        self.evaluate()
                    done = self.global_step >= max_steps
                    pos = (epoch + 1, 0) if micro == n_micro else (epoch, micro)
                    if args.save_strategy == "steps" and (
                        self.global_step % args.save_steps == 0 or done
                    ):
                        self._save_checkpoint(*pos)
                    if done:
                        break
                else:
                    if args.eval_strategy == "epoch" and self.eval_dataset is not None:
                        self.evaluate()
                    if args.save_strategy == "epoch":
                        self._save_checkpoint(epoch + 1, 0)
                    continue
                if (
                    args.eval_strategy == "epoch"
                    and self.eval_dataset is not None
                    and micro == n_micro
                ):
                    self.evaluate()
                if args.save_strategy == "epoch" and micro == n_micro:
                    self._save_checkpoint(epoch + 1, 0)
        finally:
            mixed.__exit__(None, None, None)
            bar.close()
        self._save_final()
        metrics = {
            "train_loss": float(np.mean(run_losses)) if run_losses else float("nan"),
            "global_step": self.global_step,
            "skipped_steps": self._skipped,
        }
        if self.dist.is_main:
            C.write_json(
                {**self._state(-1, -1), "metrics": metrics}, self.output_dir / C.STATE_NAME
            )
            if args.plot:
                plot_loss(self.log.rows, self.output_dir / "loss.png", title=self.stage_name or "")
        self.log.close()
        return TrainOutput(self.global_step, metrics["train_loss"], metrics)

    def _update(
        self, params: list[nn.Parameter], group_loss: torch.Tensor
    ) -> tuple[float, bool, float]:
        """Clip, step, schedule, zero the gradients. Returns ``(grad_norm, bad, loss)``: the total
        gradient norm before clipping (as transformers logs it), whether the step's loss or
        gradient was not finite (then the optimizer step is skipped, on every rank), and the
        step's loss (mean over ranks). One host sync per step."""
        assert self.optimizer is not None
        opt, scaler = self.optimizer, self.scaler

        def values(*ts: torch.Tensor) -> tuple[list[float], bool]:
            """One host sync: the values, and whether any is not finite (on any rank)."""
            vals = torch.stack([t.detach().float() for t in ts]).tolist()
            bad = not all(math.isfinite(v) for v in vals)
            if self.dist.enabled:
                red = D.all_reduce_sum(
                    [float(bad), vals[0] if math.isfinite(vals[0]) else 0.0], self.dist, self.device
                )
                bad, vals[0] = red[0] > 0, red[1] / self.dist.world_size
            return vals, bad

        if scaler is not None:
            # fp16: an inf *gradient* is the GradScaler's business (it skips and lowers the scale);
            # a non-finite loss is checked before unscaling so that a skipped step leaves it clean
            (gl,), bad = values(group_loss)
            if bad:
                opt.zero_grad(set_to_none=True)
                self.lr_scheduler.step()
                return float("nan"), True, gl
            scaler.unscale_(opt)
            norm = self._clip(params)
            scaler.step(opt)
            scaler.update()
            self.lr_scheduler.step()
            opt.zero_grad(set_to_none=True)
            return float(norm), False, gl
        norm = self._clip(params)
        (gl, gn), bad = values(group_loss, norm.to(group_loss.device))
        if not bad:
            opt.step()
        self.lr_scheduler.step()
        opt.zero_grad(set_to_none=True)
        return gn, bad, gl

    def _clip(self, params: list[nn.Parameter]) -> torch.Tensor:
        grads = [p for p in params if p.grad is not None]
        if self.args.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(grads, self.args.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
        full = getattr(norm, "full_tensor", None)
        return full() if callable(full) else norm

    def _nonfinite_error(self) -> TrainingError:
        last = self._last_finite
        ck = C.latest_checkpoint(self.output_dir)
        return TrainingError(
            f"step {self.global_step}: the loss or gradient is not finite (NaN/inf); "
            "last finite loss "
            + (f"{last[1]:.6g} at step {last[0]}" if last else "none (the first step)")
            + f"; last complete checkpoint: {ck if ck else 'none'} (untouched). "
            "Lower learning_rate, check the data, or set skip_nonfinite_steps=True "
            "to skip such steps"
        )

    # -- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(
        self, eval_dataset: Dataset | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, Any]:
        """Mean loss over ``eval_dataset`` (default: the trainer's) as ``eval_loss``, plus
        ``compute_metrics(EvalPrediction)`` with ``eval_`` prefixes; logged as an eval row."""
        ds = eval_dataset if eval_dataset is not None else self.eval_dataset
        if ds is None:
            raise ConfigError("eval_dataset: None; pass one to Trainer(...) or evaluate(...)")
        try:
            n = len(ds)  # type: ignore[arg-type]
        except TypeError as e:
            raise DataError(
                f"eval_dataset: expected a map-style Dataset with len(), got {type(ds).__name__}"
            ) from e
        if n == 0:
            raise DataError(
                f"eval_dataset: {type(ds).__name__} is empty (0 items); expected at least one item"
            )
        loader = DataLoader(
            ds,
            batch_size=self.args.per_device_eval_batch_size,
            sampler=_StridedSampler(n, self.dist.rank, self.dist.world_size),
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.device.type == "cuda",
        )
        model = self.model
        was_training = model.training
        model.eval()
        mixed = rust_modules_in_own_dtype(
            model, self.device.type, enabled=self.args.bf16 or self.args.fp16
        )
        full = (
            D.fsdp_unsharded(self._wrapped)
            if self._wrapped is not None
            else contextlib.nullcontext()
        )
        try:
            mixed.__enter__()
            full.__enter__()
            loss_sum, count = 0.0, 0
            preds: list[np.ndarray] = []
            labels: list[np.ndarray] = []
            for i, batch in enumerate(loader):
                batch = _to_device(batch, self.device)
                if not isinstance(batch, Mapping):
                    raise DataError(
                        f"data_collator: returned a {type(batch).__name__}; expected a dict"
                    )
                with self._autocast():
                    out = model(**batch)
                loss = _loss_of(out)
                bs = next(
                    (
                        v.shape[0]
                        for v in batch.values()
                        if isinstance(v, torch.Tensor) and v.dim() > 0
                    ),
                    1,
                )
                if isinstance(loss, torch.Tensor):
                    loss_sum += float(loss.float()) * bs
                    count += bs
                elif i == 0 and self.compute_metrics is None:
                    raise TrainingError(
                        "evaluate: the model returned no loss for the eval batch "
                        f"{_describe(batch)} and there is no compute_metrics"
                    )
                if self.compute_metrics is not None:
                    logits = (
                        getattr(out, "logits", None)
                        if not isinstance(out, Mapping)
                        else out.get("logits")
                    )
                    if isinstance(logits, torch.Tensor):
                        preds.append(logits.float().cpu().numpy())
                    lab = [
                        batch[k]
                        for k in (self.args.label_names or ["labels"])
                        if isinstance(batch.get(k), torch.Tensor)
                    ]
                    if lab:
                        labels.append(lab[0].cpu().numpy())
        finally:
            full.__exit__(None, None, None)
            mixed.__exit__(None, None, None)
            if was_training:
                model.train()
        loss_sum, count = D.all_reduce_sum([loss_sum, float(count)], self.dist, self.device)
        metrics: dict[str, Any] = {}
        if count:
            metrics[f"{metric_key_prefix}_loss"] = loss_sum / count
        if self.compute_metrics is not None:
            if self.dist.enabled:
                import torch.distributed as dist

                gathered: list[Any] = [None] * self.dist.world_size
                dist.all_gather_object(gathered, (preds, labels))
                preds = _in_dataset_order([g[0] for g in gathered])
                labels = _in_dataset_order([g[1] for g in gathered])
            ep = EvalPrediction(
                _concat_padded(preds) if preds else None, _concat_padded(labels) if labels else None
            )
            got = self.compute_metrics(ep)
            if not isinstance(got, Mapping):
                raise VoxlmTypeError(
                    f"compute_metrics: expected a dict of metric name -> value, got "
                    f"{type(got).__name__}"
                )
            for k, v in dict(got).items():
                metrics[
                    k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}"
                ] = v
        if self.log is not None:
            self.log.log({"step": self.global_step, "epoch": round(self.epoch, 4), **metrics})
        return metrics
