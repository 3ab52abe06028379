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
==================  ===============

The classes are defined by the Rust extension (one mapping from its error enum) and
re-exported here.
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

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DTypeError",
    "DeviceError",
    "ShapeError",
    "TorchError",
    "VolumeFormatError",
    "VoxlmError",
    "VoxlmIOError",
    "VoxlmTypeError",
]
