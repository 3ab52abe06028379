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
from ._bind import check_budget, check_int, check_number
from .exceptions import ConfigError, ShapeError, VoxlmTypeError

PathLike = str | os.PathLike[str]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: LLaVA's pad colour: ``tuple(int(x * 255) for x in CLIP_MEAN)``
LLAVA_BACKGROUND: tuple[int, int, int] = (122, 116, 104)


def load_image_2d(path: PathLike) -> np.ndarray:
    """Decode a PNG or JPEG file (by content) to ``[H, W]`` / ``[H, W, C]`` uint8 (uint16 for
    16-bit grey PNG). Raises :class:`~voxlm.VolumeFormatError` naming the file when corrupt."""
    return _core.load_image_2d(os.fspath(_path(path)))


def _path(path: Any) -> PathLike:
    if not isinstance(path, (str, os.PathLike)):
        raise VoxlmTypeError(f"path: expected an image file path, got {type(path).__name__}")
    return path


def _out_size(height: Any, width: Any, channels: int, what: str) -> tuple[int, int]:
    """Checked output sizes: positive integers whose image (and the resampler's float rows)
    fits in memory — the Rust resampler aborts the process when an allocation fails."""
    h = check_int(height, f"{what} height")
    w = check_int(width, f"{what} width")
    check_budget(f"{what} to {h} x {w}", h * w * max(channels, 1) * 2)
    return h, w


def _background(background: Any) -> list[int]:
    if isinstance(background, (str, bytes)) or not isinstance(background, Sequence):
        raise ConfigError(f"background: expected 3 values in [0, 255] (RGB), got {background!r}")
    vals = [check_int(v, "background", 0) for v in background]
    if len(vals) != 3 or max(vals) > 255:
        raise ConfigError(f"background: expected 3 values in [0, 255] (RGB), got {background!r}")
    return vals


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Pillow's ``convert("RGB")`` on an array: grey replicated, alpha dropped, 16-bit grey
    clipped to 255 (Pillow's ``I;16 -> L``). Returns ``[H, W, 3]`` uint8."""
    if img is None or isinstance(img, (str, bytes)):
        raise VoxlmTypeError(f"img: expected an image array, got {type(img).__name__}")
    a = np.asarray(img)
    if a.dtype == np.uint16:
        a = np.minimum(a, 255).astype(np.uint8)
    if a.dtype != np.uint8:
        raise VoxlmTypeError(f"img: expected a uint8 or uint16 image, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or 0 in a.shape:
        raise ShapeError(f"img: expected a non-empty [H, W] or [H, W, 1-4], got shape {a.shape}")
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
    if not isinstance(img, np.ndarray):
        raise VoxlmTypeError(f"img: expected a uint8 numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise VoxlmTypeError(f"img: expected a uint8 image, got dtype {img.dtype}")
    if img.ndim not in (2, 3) or 0 in img.shape:
        raise ShapeError(f"img: expected a non-empty [H, W] or [H, W, C], got shape {img.shape}")
    c = img.shape[2] if img.ndim == 3 else 1
    h, w = _out_size(height, width, c, "resize_bicubic")
    check_budget(
        f"resize_bicubic to {h} x {w}", max(h, img.shape[0]) * max(w, img.shape[1]) * c * 4
    )
    return _core.resize_bicubic(np.ascontiguousarray(img), h, w)


def expand2square(img: Any, background: Sequence[int] = LLAVA_BACKGROUND) -> np.ndarray:
    """LLaVA's ``expand2square``: paste the image centred (offset ``(long - short) // 2``) on
    a square canvas of ``background``. Accepts a path, PIL image or array; returns
    ``[S, S, 3]`` uint8."""
    bg = _background(background)
    rgb = _as_rgb(img)
    return _core.expand2square(rgb, bg)


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
    if not single and (
        images is None
        or isinstance(images, (bytes, torch.Tensor))
        or not hasattr(images, "__iter__")
    ):
        raise VoxlmTypeError(
            "images: expected an image (path, PIL image or uint8 array) or a list of them, got "
            f"{type(images).__name__}"
        )
    items = [images] if single else list(images)
    if not items:
        raise ShapeError("images: expected at least one image")
    if size is not None:
        size = check_int(size, "size")
    if crop_size is None:
        crop = None
    elif isinstance(crop_size, (list, tuple)) and len(crop_size) == 2:
        crop = tuple(check_int(c, "crop_size") for c in crop_size)
    else:
        c = check_int(crop_size, "crop_size")
        crop = (c, c)
    for name, v in (("mean", mean), ("std", std)):
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != 3:
            raise ShapeError(f"{name}: expected 3 values (RGB), got {v!r}")
    mean = [check_number(m, "mean") for m in mean]
    std = [check_number(s, "std", 0.0, low_open=True) for s in std]
    rescale_factor = check_number(rescale_factor, "rescale_factor")
    bg = _background(background)
    out = []
    for it in items:
        rgb = _as_rgb(it)
        if pad_to_square:
            rgb = _core.expand2square(rgb, bg)
        if size is not None:
            short, long = sorted(rgb.shape[:2])
            _out_size(size, max(size, size * long // short), 3, "clip_preprocess resize")
        out.append(
            _core.clip_preprocess(
                rgb,
                size,
                crop,
                rescale_factor,
                mean,
                std,
            )
        )
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise ShapeError(f"images end up with different shapes {sorted(shapes)}: set crop_size")
    return torch.from_numpy(np.stack(out))
