"""voxlm: language models on 3D medical volumes, on a Rust core.

``import voxlm`` imports torch first: the extension links against the libtorch that torch loads,
so torch must be in the process before ``voxlm._core``.
"""

from __future__ import annotations

import torch  # noqa: F401  (must precede voxlm._core: it provides libtorch)

from . import _core
from ._info import check_torch_version, info
from .exceptions import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    DTypeError,
    ShapeError,
    TorchError,
    TrainingError,
    VolumeFormatError,
    VoxlmError,
    VoxlmIOError,
    VoxlmTypeError,
)

__version__: str = _core.__version__

check_torch_version()

from . import nn, ops  # noqa: E402  (after the version check)
from .volume import Volume, load_image, load_volume, save_volume  # noqa: E402

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DTypeError",
    "DeviceError",
    "ShapeError",
    "TorchError",
    "TrainingError",
    "VolumeFormatError",
    "VoxlmError",
    "VoxlmIOError",
    "VoxlmTypeError",
    "__version__",
    "info",
    "nn",
    "ops",
    "Volume",
    "load_image",
    "load_volume",
    "save_volume",
]
