"""2D images (chest X-rays, MIMIC-CXR JPEGs): decoding and CLIP preprocessing in Rust.

* :func:`load_image_2d`: PNG (8/16-bit grey, grey+alpha, RGB, RGBA, palette expanded to RGB(A))
  and JPEG, laid out as ``np.asarray(PIL.Image.open(path))``: ``[H, W]`` or ``[H, W, C]``,
  uint8 (uint16 for 16-bit grey PNG). PNG is bit-exact with Pillow; JPEG differs from Pillow's
  libjpeg-turbo by the decoders' IDCT/upsampling rounding (a few grey levels at most).
* :func:`clip_preprocess`: transformers' ``CLIPImageProcessor`` (convert RGB, shortest side to
  ``size`` with Pillow's BICUBIC — a port of Pillow 12's fixed-point ``Resample.c``; Pillow 13
  resamples slightly differently, so against the installed Pillow the resized pixels are exact
  on the tested upscales and within 2 levels otherwise, and the processor's output is within 2
  uint8 levels with > 95 % of values equal (tests/test_image2d_vs_pillow.py) — center crop,
  ``x / 255``, CLIP mean/std) -> ``[N, 3, H, W]``.
* :func:`expand2square`: LLaVA's ``expand2square`` (pad to a square on the mean colour
  (122, 116, 104)), applied before the processor with ``image_aspect_ratio="pad"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import _core
from .exceptions import ShapeError, VoxlmTypeError

PathLike = str | os.PathLike[str]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: LLaVA's pad colour: ``tuple(int(x * 255) for x in CLIP_MEAN)``
LLAVA_BACKGROUND: tuple[int, int, int] = (122, 116, 104)


def load_image_2d(path: PathLike) -> np.ndarray:
    """Decode a PNG or JPEG file (by content) to ``[H, W]`` / ``[H, W, C]`` uint8 (uint16 for
    16-bit grey PNG). Raises :class:`~voxlm.VolumeFormatError` naming the file when corrupt."""
    return _core.load_image_2d(os.fspath(path))


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Pillow's ``convert("RGB")`` on an array: grey replicated, alpha dropped, 16-bit grey
    clipped to 255 (Pillow's ``I;16 -> L``). Returns ``[H, W, 3]`` uint8."""
    a = np.asarray(img)
    if a.dtype == np.uint16:
        a = np.minimum(a, 255).astype(np.uint8)
    if a.dtype != np.uint8:
        raise VoxlmTypeError(f"img: expected a uint8 or uint16 image, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ShapeError(f"img: expected [H, W] or [H, W, 1-4], got shape {a.shape}")
    if a.shape[2] in (1, 2):
        return np.ascontiguousarray(np.repeat(a[:, :, :1], 3, axis=2))
    return np.ascontiguousarray(a[:, :, :3])


def _as_rgb(image: Any) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return to_rgb(load_image_2d(image))
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    return to_rgb(np.asarray(image))


def resize_bicubic(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's ``Image.resize((width, height), BICUBIC)`` on uint8 ``[H, W(, C)]`` (a port of
    Pillow 12's ``Resample.c``; within 2 levels of Pillow 13, see the module docstring).
    Returns ``[height, width, C]``."""
    return _core.resize_bicubic(np.ascontiguousarray(img, dtype=np.uint8), int(height), int(width))


def expand2square(img: Any, background: Sequence[int] = LLAVA_BACKGROUND) -> np.ndarray:
    """LLaVA's ``expand2square``: paste the image centred (offset ``(long - short) // 2``) on
    a square canvas of ``background``. Accepts a path, PIL image or array; returns
    ``[S, S, 3]`` uint8."""
    rgb = _as_rgb(img)
    return _core.expand2square(rgb, [int(v) for v in background])


def clip_preprocess(
    images: Any,
    size: int | None = 336,
    crop_size: int | tuple[int, int] | None = 336,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    rescale_factor: float = 1 / 255,
    pad_to_square: bool = False,
    background: Sequence[int] = LLAVA_BACKGROUND,
) -> torch.Tensor:
    """transformers' ``CLIPImageProcessor`` (``do_resize`` shortest edge ``size`` with
    BICUBIC, ``do_center_crop`` ``crop_size``, ``do_rescale``, ``do_normalize``) on one image
    or a list (paths, PIL images or arrays). ``pad_to_square`` first applies LLaVA's
    :func:`expand2square` with ``background``. ``size`` / ``crop_size`` None skip that step.
    Returns float32 ``[N, 3, crop_h, crop_w]``."""
    single = isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "convert")
    items = [images] if single else list(images)
    if not items:
        raise ShapeError("images: expected at least one image")
    crop = (
        None
        if crop_size is None
        else (
            (int(crop_size), int(crop_size))
            if isinstance(crop_size, int)
            else tuple(int(c) for c in crop_size)
        )
    )
    if len(mean) != 3 or len(std) != 3:
        raise ShapeError("mean, std: expected 3 values each (RGB)")
    out = []
    for it in items:
        rgb = _as_rgb(it)
        if pad_to_square:
            rgb = _core.expand2square(rgb, [int(v) for v in background])
        out.append(
            _core.clip_preprocess(
                rgb,
                None if size is None else int(size),
                crop,
                float(rescale_factor),
                [float(m) for m in mean],
                [float(s) for s in std],
            )
        )
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise ShapeError(f"images end up with different shapes {sorted(shapes)}: set crop_size")
    return torch.from_numpy(np.stack(out))
