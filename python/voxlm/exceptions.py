"""voxlm's exception classes.

Every error voxlm raises is a :class:`VoxlmError`; each subclass also derives from the builtin
that fits, so ``except ValueError`` keeps working in existing code:

==================  ===============
class               also a
==================  ===============
ShapeError          ValueError
DTypeError          ValueError
DeviceError         ValueError
ConfigError         ValueError
CheckpointError     OSError
VolumeFormatError   OSError
VoxlmIOError        OSError
VoxlmTypeError      TypeError
TorchError          RuntimeError
DataError           ValueError      (a dataset row or layout: names the row and path)
TrainingError       RuntimeError    (a training run stopped: names the step)
==================  ===============

The first nine classes are defined by the Rust extension (one mapping from its error enum) and
re-exported here; ``DataError`` and ``TrainingError`` are raised from Python only.
"""

from ._core import (
    CheckpointError,
    ConfigError,
    DeviceError,
    DTypeError,
    ShapeError,
    TorchError,
    VolumeFormatError,
    VoxlmError,
    VoxlmIOError,
    VoxlmTypeError,
)


class DataError(VoxlmError, ValueError):
    """A dataset row, manifest or on-disk layout is wrong: the message names the row and path."""


class TrainingError(VoxlmError, RuntimeError):
    """A training run stopped (non-finite loss, a failed checkpoint write): names the step."""


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
]
