"""Type stubs of the Rust extension ``voxlm._core``."""

from collections.abc import Callable
from os import PathLike
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
    "focal_loss",
    "kl_distill",
    "lm_loss",
    "prototype_similarities",
    "prototype_loss",
    "report_scores",
    "classification_scores",
    "multilabel_scores",
    "meteor_score",
    "meteor_stats",
    "parse_llama_config",
    "llama_rope_inv_freq",
    "checkpoint_files",
    "load_safetensors",
    "save_safetensors",
    "LlamaCore",
    "TokenizerCore",
    "inflate_patch_embedding",
    "interpolate_pos_embedding",
    "spatial_pool",
    "mlp_project",
    "disease_pool",
    "Vit3dCore",
    "PerceiverCore",
    "ClipVisionCore",
    "QueryBlocksCore",
    "load_nifti",
    "save_nifti",
    "resize",
    "load_batch",
    "affine_resample",
    "io_orientation",
    "orientation_transform",
    "spacing_grid",
    "match_grid",
    "load_image_2d",
    "clip_preprocess",
    "sniff_format",
    "load_image",
    "resize_bicubic",
    "expand2square",
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
def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: torch.Tensor | None = None,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor: ...
def kl_distill(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor: ...
def lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = ...
) -> torch.Tensor: ...
def prototype_similarities(
    features: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
    pos: torch.Tensor,
    neg: torch.Tensor,
    temp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]: ...
def prototype_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
    pos: torch.Tensor,
    neg: torch.Tensor,
    temp: torch.Tensor,
) -> torch.Tensor: ...
def report_scores(
    references: list[list[str]],
    hypotheses: list[str],
    jar: str | PathLike[str] | None = None,
    paraphrase: str | PathLike[str] | None = None,
) -> tuple[dict[str, float], dict[str, npt.NDArray[np.float64]]]: ...
def classification_scores(
    y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64], labels: list[int]
) -> dict[str, Any]: ...
def multilabel_scores(
    y_true: npt.NDArray[np.int64],
    y_pred: npt.NDArray[np.int64],
    pos_label: int = 1,
    convention: str = "dia_llama",
) -> dict[str, Any]: ...
def meteor_score(
    references: list[list[str]],
    hypotheses: list[str],
    jar: str | PathLike[str],
    paraphrase: str | PathLike[str] | None = None,
) -> tuple[float, npt.NDArray[np.float64]]: ...
def meteor_stats(
    references: list[list[str]],
    hypotheses: list[str],
    jar: str | PathLike[str],
    paraphrase: str | PathLike[str] | None = None,
) -> list[str]: ...
def parse_llama_config(text: str) -> str: ...
def llama_rope_inv_freq(config_json: str) -> torch.Tensor: ...
def checkpoint_files(path: str | PathLike[str]) -> list[str]: ...
def load_safetensors(
    path: str | PathLike[str], dtype: str | None = None, device: str = "cpu"
) -> dict[str, torch.Tensor]: ...
def save_safetensors(tensors: dict[str, torch.Tensor], path: str | PathLike[str]) -> None: ...

@final
class LlamaCore:
    def __new__(
        cls,
        config_json: str,
        params: dict[str, torch.Tensor],
        lora: dict[str, tuple[float, float]] | None = None,
    ) -> LlamaCore: ...
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        last_only: bool = False,
        training: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]: ...
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...
    def prepare(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...
    def layer(
        self,
        index: int,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        training: bool = False,
    ) -> torch.Tensor: ...
    def head(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        eos_token_ids: list[int] = ...,
        pad_token_id: int = 0,
        callback: Callable[[torch.Tensor], Any] | None = None,
        cpu_kernels: bool = True,
    ) -> torch.Tensor: ...

@final
class TokenizerCore:
    def __new__(cls, path: str | PathLike[str]) -> TokenizerCore: ...
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...
    def encode_batch(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> list[list[int]]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...
    def token_to_id(self, token: str) -> int | None: ...
    def id_to_token(self, id: int) -> str | None: ...
    @property
    def vocab_size(self) -> int: ...

def inflate_patch_embedding(weight2d: torch.Tensor, depth: int, mode: str) -> torch.Tensor: ...
def interpolate_pos_embedding(
    pos: torch.Tensor, grid2d: tuple[int, int], grid3d: tuple[int, int, int], has_cls: bool
) -> torch.Tensor: ...
def spatial_pool(x: torch.Tensor, grid: list[int], pooling_size: int) -> torch.Tensor: ...
def mlp_project(
    x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None]
) -> torch.Tensor: ...
def disease_pool(x: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor: ...

@final
class Vit3dCore:
    def __new__(
        cls,
        in_channels: int,
        img_size: list[int],
        patch_size: list[int],
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        perceptron: bool,
        params: dict[str, torch.Tensor],
        lora: dict[str, tuple[float, float]] | None = None,
    ) -> Vit3dCore: ...
    def forward(
        self, x: torch.Tensor, training: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]: ...
    def tokens(self, x: torch.Tensor) -> torch.Tensor: ...
    def block(self, index: int, h: torch.Tensor, training: bool = False) -> torch.Tensor: ...
    def final_norm(self, h: torch.Tensor) -> torch.Tensor: ...

@final
class PerceiverCore:
    def __new__(
        cls, params: dict[str, torch.Tensor], depth: int, heads: int, dim_head: int
    ) -> PerceiverCore: ...
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

@final
class ClipVisionCore:
    def __new__(
        cls, params: dict[str, torch.Tensor], num_layers: int, num_heads: int, eps: float
    ) -> ClipVisionCore: ...
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]: ...
    def hidden_state(self, x: torch.Tensor, layer: int) -> torch.Tensor: ...

def load_nifti(
    path: str | PathLike[str], dtype: str = "float32"
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64], dict[str, Any]]: ...
def save_nifti(
    path: str | PathLike[str],
    data: npt.NDArray[Any],
    affine: list[list[float]],
    zooms: list[float],
    compress_level: int = 1,
) -> None: ...
def resize(img: npt.NDArray[np.float32], size: list[int], mode: str) -> npt.NDArray[np.float32]: ...
def load_batch(
    paths: list[str | list[str]],
    ras: bool = True,
    window: tuple[float, float, float, float, bool] | None = None,
    size: list[int] | None = None,
    mode: str = "trilinear",
    num_threads: int = 0,
    spacing: list[float] | None = None,
    axcodes: str | None = None,
    spacing_mode: str = "trilinear",
    steps: list[tuple[str, list[float]]] | None = None,
    series_uid: str | None = None,
) -> npt.NDArray[np.float32]: ...
def sniff_format(path: str | PathLike[str]) -> str: ...
def load_image(
    path: str | PathLike[str], dtype: str = "float32", series_uid: str | None = None
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64], dict[str, Any], str]: ...
def load_image_2d(path: str | PathLike[str]) -> npt.NDArray[Any]: ...
def resize_bicubic(
    img: npt.NDArray[np.uint8], height: int, width: int
) -> npt.NDArray[np.uint8]: ...
def expand2square(img: npt.NDArray[np.uint8], background: list[int]) -> npt.NDArray[np.uint8]: ...
def clip_preprocess(
    img: npt.NDArray[np.uint8],
    size: int | None,
    crop: tuple[int, int] | None,
    rescale: float,
    mean: list[float],
    std: list[float],
) -> npt.NDArray[np.float32]: ...

@final
class QueryBlocksCore:
    def __new__(
        cls, params: dict[str, torch.Tensor], depth: int, heads: int, eps: float = 1e-05
    ) -> QueryBlocksCore: ...
    def forward(self, feats: torch.Tensor, training: bool = False) -> torch.Tensor: ...

def affine_resample(
    img: npt.NDArray[np.float32], xform: list[list[float]], size: list[int], mode: str
) -> npt.NDArray[np.float32]: ...
def io_orientation(
    affine: list[list[float]], tol: float | None = None
) -> list[tuple[float, float]]: ...
def orientation_transform(
    affine: list[list[float]], shape: list[int], axcodes: str
) -> tuple[list[int], list[int], npt.NDArray[np.float64]]: ...
def spacing_grid(
    shape: list[int], affine: list[list[float]], pixdim: list[float]
) -> tuple[npt.NDArray[np.float64], list[int], npt.NDArray[np.float64], bool]: ...
def match_grid(
    src_shape: list[int],
    src_affine: list[list[float]],
    dst_shape: list[int],
    dst_affine: list[list[float]],
) -> tuple[npt.NDArray[np.float64], bool]: ...
