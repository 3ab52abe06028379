"""``voxlm.info()``: versions, threads, CUDA and build profile in one place."""

from __future__ import annotations

import platform
import sys
from typing import Any

import torch

from . import _core
from .exceptions import ConfigError


def check_torch_version() -> None:
    """Refuse to run against a torch other than the one the extension was compiled for.

    tch pins one libtorch version; a different one at run time can crash in C++ instead of
    failing cleanly, so this is checked at import.
    """
    built = _core.build_info()["libtorch_built_for"]
    found = torch.__version__.split("+")[0]
    if found != built:
        raise ConfigError(
            f"voxlm was built for torch {built}, but torch {found} is installed: "
            f"install torch=={built} or rebuild voxlm (make clean-build && make build)"
        )


def info(as_dict: bool = False) -> dict[str, Any] | str:
    """voxlm, torch and CUDA versions, thread counts and the build profile.

    Returns a printable report, or the underlying dict with ``as_dict=True``.
    """
    d: dict[str, Any] = dict(_core.build_info())
    d.update(
        python=sys.version.split()[0],
        platform=platform.platform(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        torch_cuda_available=torch.cuda.is_available(),
        gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    )
    if as_dict:
        return d
    width = max(len(k) for k in d)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in d.items())
