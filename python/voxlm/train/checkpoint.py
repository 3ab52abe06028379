"""Run folders and atomic checkpoints.

A checkpoint ``output_dir/checkpoint-<step>/`` holds

================================  ==========================================================
``model.safetensors``             the trainable parameters (full tensors, also under FSDP)
``adapters/<module>/``            each LoRA adapter as a PEFT folder (``adapter_config.json``
                                  + ``adapter_model.safetensors``; ``<module>`` is the dotted
                                  path of the module ``add_lora`` was applied to, ``model``
                                  for the root) that ``peft.PeftModel.from_pretrained`` loads
``optimizer.pt``, ``scheduler.pt``  optimizer and LR-scheduler state (``optimizer-<rank>.pt``
                                  per rank under FSDP); ``scaler.pt`` with fp16
``rng_state_<rank>.pth``          python, numpy, torch CPU (and CUDA) generator states per rank
``trainer_state.json``            global step, epoch, data-order position, log history, the
                                  arguments; written last
================================  ==========================================================

It is written into ``.tmp-checkpoint-<step>/``, every file and the folder fsynced, then renamed:
a folder named ``checkpoint-<step>`` is complete, and a crash leaves at most a ``.tmp-`` folder,
which resume ignores (and the next run removes).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..exceptions import CheckpointError

PathLike = str | os.PathLike[str]
_CKPT = re.compile(r"^checkpoint-(\d+)$")
STATE_NAME = "trainer_state.json"
WEIGHTS_NAME = "model.safetensors"


# ---------------------------------------------------------------------------------------------
# low-level I/O


def fsync_path(path: PathLike) -> None:
    """fsync a file or a folder (folders: where the platform allows opening them)."""
    p = os.fspath(path)
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(p) else 0)
    try:
        fd = os.open(p, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: PathLike) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fsync_path(os.path.join(dirpath, f))
        fsync_path(dirpath)


def save_tensors(tensors: dict[str, torch.Tensor], path: PathLike) -> None:
    """Write safetensors through voxlm's Rust writer (contiguous CPU copies)."""
    from .. import _core

    _core.save_safetensors(
        {k: v.detach().contiguous() for k, v in tensors.items()}, os.fspath(path)
    )


def load_tensors(path: PathLike) -> dict[str, torch.Tensor]:
    from .. import _core

    return _core.load_safetensors(os.fspath(path), None, "cpu")


def write_json(obj: Any, path: PathLike) -> None:
    pathlib.Path(path).write_text(json.dumps(obj, indent=2, default=str))


# ---------------------------------------------------------------------------------------------
# trainable parameters and adapters


def _full(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of a (possibly FSDP2-sharded DTensor) parameter, on CPU."""
    full = getattr(t, "full_tensor", None)
    if callable(full):
        t = full()
    return t.detach().cpu()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: full CPU tensor}`` of the parameters with ``requires_grad``."""
    seen: set[int] = set()
    out = {}
    for n, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[n] = _full(p)
    return out


def lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(dotted path or "model", module)`` for every module ``add_lora`` was applied to that
    still has LoRA layers."""
    from ..adapters import LoraLayer

    out = []
    for name, m in model.named_modules():
        if getattr(m, "_voxlm_lora_configs", None) and any(
            isinstance(x, LoraLayer) for x in m.modules()
        ):
            out.append((name or "model", m))
    return out


def save_adapters(model: nn.Module, folder: PathLike, write: bool = True) -> list[str]:
    """Every LoRA adapter of ``model`` as a PEFT folder under ``folder/<module>/`` (full tensors,
    gathered when sharded: then every rank calls this and only the one with ``write`` writes).
    Returns the folders."""
    from ..adapters import save_adapter

    written = []
    for name, m in lora_modules(model):
        for adapter in getattr(m, "_voxlm_lora_configs", {}):
            out = pathlib.Path(folder) / name
            if any(hasattr(p, "full_tensor") for p in m.parameters()):
                _save_adapter_gathered(m, out, adapter, write)
            elif write:
                save_adapter(m, out, adapter)
            written.append(os.fspath(out if adapter == "default" else out / adapter))
    return written


def _save_adapter_gathered(
    m: nn.Module, out: pathlib.Path, adapter: str, write: bool = True
) -> None:
    """``save_adapter`` for FSDP2-sharded modules: LoRA weights gathered to full tensors first
    (PEFT's ZeRO-3 path saved empty adapters; this one never does)."""
    from ..adapters import CONFIG_NAME, LoraLayer
    from ..adapters import WEIGHTS_NAME as AW

    target = out if adapter == "default" else out / adapter
    tensors = {}
    for name, layer in m.named_modules():
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A:
            tensors[f"base_model.model.{name}.lora_A.weight"] = _full(layer.lora_A[adapter].weight)
            tensors[f"base_model.model.{name}.lora_B.weight"] = _full(layer.lora_B[adapter].weight)
    empty = [k for k, v in tensors.items() if v.numel() == 0]
    if not tensors or empty:
        raise CheckpointError(
            f"{target}: refusing to save an empty adapter ({empty[:2] or 'no LoRA layers'})"
        )
    if not write:
        return
    target.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, target / AW)
    cfg = m._voxlm_lora_configs[adapter]  # type: ignore[index]
    (target / CONFIG_NAME).write_text(json.dumps(cfg.to_peft_dict(), indent=2))


def load_trainable(model: nn.Module, folder: PathLike, strict: bool = True) -> list[str]:
    """Copy ``folder/model.safetensors`` into the model's parameters of the same names (in place,
    so Rust-bound modules keep their references). With ``strict``, every trainable parameter of
    the model must be in the file. A tensor saved as ``x.weight`` before ``add_lora`` wrapped
    ``x`` goes to ``x.base_layer.weight``. Returns the names loaded."""
    f = pathlib.Path(folder) / WEIGHTS_NAME
    if not f.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME}")
    sd = load_tensors(f)
    params = dict(model.named_parameters())
    for k in [k for k in sd if k not in params]:  # saved before add_lora wrapped the layer
        head, _, leaf = k.rpartition(".")
        wrapped = f"{head}.base_layer.{leaf}"
        if wrapped in params and wrapped not in sd:
            sd[wrapped] = sd.pop(k)
    unknown = sorted(set(sd) - set(params))
    if unknown:
        raise CheckpointError(
            f"{f}: parameters the model does not have: {unknown[:3]}"
            + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        )
    if strict:
        missing = sorted(n for n, p in params.items() if p.requires_grad and n not in sd)
        if missing:
            raise CheckpointError(
                f"{f}: trainable parameters missing from the checkpoint: {missing[:3]}"
                + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            )
    with torch.no_grad():
        for n, t in sd.items():
            p = params[n]
            if tuple(t.shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{f}: {n} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}"
                )
            if hasattr(p, "full_tensor"):  # FSDP2: copy this rank's shard
                from torch.distributed.tensor import distribute_tensor

                p.copy_(distribute_tensor(t.to(p.dtype), p.device_mesh, p.placements))
            else:
                p.copy_(t.to(p.dtype))
    return sorted(sd)


# ---------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict[str, Any]:
    """Generator states as plain containers of tensors / ints / floats / str, so that the file
    loads with ``torch.load(..., weights_only=True)`` (no pickled numpy objects)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(mt, dtype=torch.int64),
            "gauss": None if gauss is None else float(gauss),
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (after a ``weights_only=True`` load)."""
    py, npst = st["python"], st["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(st["cpu"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices), as ``transformers.set_seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# folders


def list_checkpoints(output_dir: PathLike) -> list[tuple[int, pathlib.Path]]:
    """Complete checkpoints ``(step, path)`` in ``output_dir``, oldest first."""
    if not isinstance(output_dir, (str, os.PathLike)):
        from ..exceptions import VoxlmTypeError

        raise VoxlmTypeError(f"output_dir: expected a folder path, got {type(output_dir).__name__}")
    d = pathlib.Path(output_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / STATE_NAME).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: PathLike) -> pathlib.Path | None:
    cks = list_checkpoints(output_dir)
    return cks[-1][1] if cks else None


def remove_stale_tmp(output_dir: PathLike) -> None:
    d = pathlib.Path(output_dir)
    if d.is_dir():
        for p in d.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def rotate(
    output_dir: PathLike, limit: int | None, keep: PathLike | None = None
) -> list[pathlib.Path]:
    """Delete the oldest complete checkpoints beyond ``limit`` (never ``keep``)."""
    if limit is None:
        return []
    cks = [p for _, p in list_checkpoints(output_dir)]
    doomed = [
        p
        for p in cks[: max(0, len(cks) - limit)]
        if keep is None or p.resolve() != pathlib.Path(keep).resolve()
    ]
    for p in doomed:
        tmp = p.with_name(".tmp-del-" + p.name)
        p.rename(tmp)  # a half-deleted folder never looks like a checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
    return doomed


def atomic_folder(
    final: PathLike, write: Callable[[pathlib.Path], None], info: Any = None
) -> pathlib.Path:
    """Run ``write(tmp)`` into ``.tmp-<name>`` next to ``final``, fsync it, rename it to
    ``final`` (replacing an existing folder of that name only after the new one is complete).

    With a ``DistInfo`` of several processes every rank calls this; ``write`` runs on every rank
    (each writes its own per-rank files), rank 0 creates, fsyncs and renames."""
    from . import distributed as D

    final = pathlib.Path(final)
    tmp = final.with_name(".tmp-" + final.name)
    main = info is None or info.is_main
    error: BaseException | None = None
    if main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if info is not None:
        D.barrier(info)
    try:
        write(tmp)
    except BaseException as e:  # noqa: BLE001 - re-raised after cleanup
        error = e
    if info is not None and info.enabled:
        flags = D.all_reduce_sum(
            [1.0 if error else 0.0],
            info,
            torch.device("cpu") if info.device.type == "cpu" else info.device,
        )
        failed = flags[0] > 0
    else:
        failed = error is not None
    if failed:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            error = CheckpointError(f"{final}: another rank failed to write its part")
        raise error
    if main:
        fsync_tree(tmp)
        if final.exists():
            old = final.with_name(".tmp-old-" + final.name)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        fsync_path(final.parent)
    if info is not None:
        D.barrier(info)
    return final
