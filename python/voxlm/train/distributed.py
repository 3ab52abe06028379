"""Multi-process training under ``torchrun``: environment, process group, model wrapping.

``torchrun --nproc_per_node N script.py`` (or ``voxlm train`` under torchrun) sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`setup` reads them, initialises
``torch.distributed`` (gloo on CPU, NCCL on CUDA, or ``ddp_backend``) and picks the device
``cuda:LOCAL_RANK``. :func:`wrap_model` wraps in ``DistributedDataParallel`` — it keeps the
module's ``Parameter`` objects (broadcasts into them in place), so voxlm's Rust-bound modules,
which hold references to them, keep working — or, with ``fsdp``, shards with FSDP2
(``torch.distributed.fsdp.fully_shard``) and re-binds Rust-bound modules to the unsharded
parameters before each forward (see :func:`fsdp_wrap`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..exceptions import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError as e:
        raise ConfigError(f"{name}: expected an integer (set by torchrun), got {v!r}") from e


def setup(use_cpu: bool = False, backend: str | None = None) -> DistInfo:
    """Read ``WORLD_SIZE/RANK/LOCAL_RANK`` and initialise the process group when the world has
    more than one process (and none is initialised yet)."""
    if dist.is_available() and dist.is_initialized():
        ws, rank = dist.get_world_size(), dist.get_rank()
        local = _env_int("LOCAL_RANK", rank)
        initialized_here = False
    else:
        ws, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
        initialized_here = False
        if ws > 1:
            if not dist.is_available():
                raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
            cuda = torch.cuda.is_available() and not use_cpu
            be = backend or ("nccl" if cuda else "gloo")
            if cuda:
                torch.cuda.set_device(local)
            kw: dict[str, Any] = {"timeout": datetime.timedelta(minutes=30)}
            if cuda and be == "nccl":
                kw["device_id"] = torch.device("cuda", local)
            dist.init_process_group(be, rank=rank, world_size=ws, **kw)
            initialized_here = True
    if torch.cuda.is_available() and not use_cpu:
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistInfo(rank, ws, local, device, initialized_here)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def rust_bound_modules(model: nn.Module) -> list[nn.Module]:
    from .._bind import RustBound

    return [m for m in model.modules() if isinstance(m, RustBound)]


def fsdp_wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """Shard ``model`` with FSDP2 (``fully_shard``) as one unit over all ranks.

    Between steps every parameter, its gradient and its AdamW state are sharded across the
    ranks (1/world_size each). FSDP2 swaps each ``Parameter`` for a sharded ``DTensor`` and, in
    its forward pre-hook, registers unsharded full parameters; voxlm's Rust-bound modules hold
    references to parameter objects, so a forward pre-hook registered *after* FSDP's re-binds
    every Rust-bound submodule to the parameters registered at that moment (the unsharded ones).
    ``reshard_after_forward=False`` keeps them alive through backward, so the gradients land where
    FSDP reduce-scatters them. The whole model is one unit because a Rust core runs all of its
    layers in one call (no per-layer unshard point) and recipes call submodules such as the LLM's
    input embedding outside its forward: the unsharded model exists during forward/backward only.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    wrapper = LossModule(model)
    fully_shard(wrapper, mesh=mesh, reshard_after_forward=False)
    bound = rust_bound_modules(model)

    def _rebind(_mod: nn.Module, _args: Any, _kwargs: Any) -> None:
        for m in bound:
            m.rebind()  # type: ignore[operator]

    wrapper.register_forward_pre_hook(_rebind, with_kwargs=True)
    wrapper._voxlm_rust_bound = bound  # type: ignore[assignment]
    return wrapper


class LossModule(nn.Module):
    """``forward(**batch)`` -> the inner model's loss tensor. FSDP2 hooks the backward pass
    through the tensors it finds in a module's output (pytree); voxlm's output dataclasses are no
    pytree nodes, so the sharded root returns the loss tensor itself."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **batch: Any) -> Any:
        from .trainer import _loss_of

        return _loss_of(self.inner(**batch))


@contextlib.contextmanager
def fsdp_unsharded(wrapped: nn.Module) -> Iterator[None]:
    """Full parameters on every rank for the duration (evaluation outside the sharded root's
    forward), Rust-bound modules re-bound to them; resharded afterwards."""
    unshard = getattr(wrapped, "unshard", None)
    if not callable(unshard):
        yield
        return
    unshard()
    for m in getattr(wrapped, "_voxlm_rust_bound", []):
        m.rebind()
    try:
        yield
    finally:
        wrapped.reshard()  # type: ignore[operator]


def wrap_model(
    model: nn.Module, info: DistInfo, fsdp: bool = False, find_unused_parameters: bool | None = None
) -> nn.Module:
    """DDP (or FSDP2 with ``fsdp``) when the world has more than one process; else ``model``."""
    if not info.enabled:
        return model
    if fsdp:
        return fsdp_wrap(model, info)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=bool(find_unused_parameters))


def unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, LossModule):
        return model.inner
    return (
        getattr(model, "module", model)
        if type(model).__name__ == "DistributedDataParallel"
        else model
    )
