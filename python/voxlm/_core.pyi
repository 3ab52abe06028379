"""Type stubs of the Rust extension ``voxlm._core``."""

from typing import Any, final

import numpy as np
import numpy.typing as npt
import torch

__version__: str
__all__ = [
    "CheckpointError",
    "ConfigError",
    "DTypeError",
    "DeviceError",
    "LoraLinearCore",
    "ShapeError",
    "TorchError",
    "VolumeFormatError",
    "VoxlmError",
    "VoxlmIOError",
    "VoxlmTypeError",
    "__version__",
    "build_info",
    "lora_linear",
    "scale_intensity_range",
]

class VoxlmError(Exception): ...
class ShapeError(VoxlmError, ValueError): ...
class DTypeError(VoxlmError, ValueError): ...
class DeviceError(VoxlmError, ValueError): ...
class ConfigError(VoxlmError, ValueError): ...
class CheckpointError(VoxlmError, OSError): ...
class VolumeFormatError(VoxlmError, OSError): ...
class VoxlmTypeError(VoxlmError, TypeError): ...
class VoxlmIOError(VoxlmError, OSError): ...
class TorchError(VoxlmError, RuntimeError): ...

def build_info() -> dict[str, Any]: ...
def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lora_a: torch.Tensor | None = None,
    lora_b: torch.Tensor | None = None,
    scaling: float = 1.0,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor: ...

@final
class LoraLinearCore:
    def __new__(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        lora_a: torch.Tensor | None = None,
        lora_b: torch.Tensor | None = None,
        scaling: float = 1.0,
        dropout: float = 0.0,
    ) -> LoraLinearCore: ...
    def bind(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        lora_a: torch.Tensor | None = None,
        lora_b: torch.Tensor | None = None,
        scaling: float = 1.0,
        dropout: float = 0.0,
    ) -> None: ...
    def forward(self, x: torch.Tensor, training: bool = False) -> torch.Tensor: ...

def scale_intensity_range(
    img: npt.NDArray[Any],
    a_min: float,
    a_max: float,
    b_min: float = 0.0,
    b_max: float = 1.0,
    clip: bool = False,
) -> npt.NDArray[np.float32]: ...
