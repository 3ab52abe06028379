"""Volume transforms with MONAI's names and argument semantics.

Each transform takes a channel-first array ``[C, D, H, W]`` (numpy or torch) or a
:class:`~voxlm.volume.Volume` (its ``[x, y, z]`` data treated as one channel; the affine is kept
consistent) and returns the same kind. The compute-heavy parts run in Rust (resampling,
intensity windows); geometric crops, pads, flips and permutations are views/copies.

MONAI-equivalent: :class:`Orientation`, :class:`Resize` (== ``F.interpolate``,
``align_corners=False``), :class:`ScaleIntensityRange`, :class:`ScaleIntensityRangePercentiles`,
:class:`NormalizeIntensity`, :class:`CropForeground`, :class:`SpatialPad`,
:class:`CenterSpatialCrop`, :class:`ResizeWithPadOrCrop`, :class:`Compose`.
For the methods: :class:`CropAroundPoint`, :class:`SampleSlices`, :func:`stitch_images`,
seeded :class:`RandFlip`, :class:`RandRotate90`, :class:`RandScaleShiftIntensity`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from . import _core
from .exceptions import ConfigError, ShapeError, VoxlmTypeError
from .volume import Volume

# ---------------------------------------------------------------------------------------------
# plumbing: numpy / torch / Volume in, the same kind out


class _Item:
    def __init__(self, x: Any) -> None:
        self.kind = (
            "volume"
            if isinstance(x, Volume)
            else "torch"
            if isinstance(x, torch.Tensor)
            else "numpy"
        )
        if self.kind == "volume":
            self.array = np.asarray(x.data)[None]
            self.affine = np.asarray(x.affine, dtype=np.float64)
            self.header = x.header
        elif self.kind == "torch":
            if x.requires_grad:
                raise VoxlmTypeError("transforms work on data, not on tensors that require grad")
            self.device = x.device
            self.array = x.detach().cpu().numpy()
            self.affine = np.eye(4)
        elif isinstance(x, np.ndarray):
            self.array = x
            self.affine = np.eye(4)
        else:
            raise VoxlmTypeError(
                f"expected a numpy array, torch tensor or Volume, got {type(x).__name__}"
            )
        if self.array.ndim < 2:
            raise ShapeError(
                f"expected a channel-first array [C, *spatial], got shape {self.array.shape}"
            )

    def out(self, array: np.ndarray, affine: np.ndarray | None = None) -> Any:
        if self.kind == "volume":
            return Volume(array[0], self.affine if affine is None else affine, self.header)
        if self.kind == "torch":
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        return array


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)


def _sizes(v: Any, name: str, keep: bool = False) -> list[int]:
    """``v`` as a list of integer sizes >= 1 (``-1``: keep the dim, where ``keep``), else a
    ConfigError naming ``name``, what was expected and what was given."""
    want = "integers >= 1" + (" or -1 (keep the dim)" if keep else "")
    if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, np.ndarray, torch.Tensor)):
        raise ConfigError(f"{name}: expected a list of {want}, got {v!r}")
    out = []
    for x in list(v):
        ok = isinstance(x, (int, np.integer)) and not isinstance(x, bool)
        if not ok and isinstance(x, (float, np.floating, torch.Tensor)):
            ok = float(x).is_integer()
        if not ok or not (int(x) >= 1 or (keep and int(x) == -1)):
            raise ConfigError(f"{name}: expected a list of {want}, got {v!r}")
        out.append(int(x))
    return out


def _check_alloc(what: str, shape: Sequence[int], itemsize: int) -> None:
    """ShapeError before allocating an array of ``shape`` that this machine's memory cannot hold
    (numpy would raise MemoryError, or the process be killed later)."""
    from ._bind import _memory_bytes

    need = float(np.prod([float(d) for d in shape])) * itemsize
    mem = _memory_bytes()
    if mem is not None and need > mem:
        raise ShapeError(
            f"{what}: an output of shape {tuple(int(d) for d in shape)} needs "
            f"{need / 2**30:.1f} GiB, more than this machine's {mem / 2**30:.1f} GiB of memory; "
            "expected a smaller size"
        )


class Transform:
    """Base class: ``__call__`` accepts numpy, torch or :class:`Volume`."""

    def __call__(self, x: Any) -> Any:
        it = _Item(x)
        arr, aff = self.apply(it.array, it.affine)
        return it.out(arr, aff)

    def apply(self, a: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError  # pragma: no cover


class Compose(Transform):
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        if callable(transforms):  # one transform, as MONAI's Compose takes it
            transforms = [transforms]
        if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Iterable):
            raise ConfigError(f"Compose: expected a list of transforms, got {transforms!r}")
        transforms = list(transforms)
        bad = [i for i, t in enumerate(transforms) if not callable(t)]
        if bad:
            raise ConfigError(
                f"Compose: transforms[{bad[0]}] is not callable: {transforms[bad[0]]!r}"
            )
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        if isinstance(x, (str, os.PathLike)):  # a file: load it, through Rust when the chain fuses
            from .data import transform_path

            return transform_path(x, self)
        for t in self.transforms:
            x = t(x)
        return x


# ---------------------------------------------------------------------------------------------
# orientation


class Orientation(Transform):
    """Reorient to ``axcodes`` (e.g. ``"RAS"``) by flips and axis permutations (no resampling),
    updating the affine, as MONAI's ``Orientation``. The geometry (nibabel's orientation of the
    affine, the flips, the permutation, the new affine) is computed in Rust
    (``src/volume/geometry.rs``), the same code the fused pipeline runs."""

    def __init__(self, axcodes: str = "RAS") -> None:
        self.axcodes = axcodes
        if not isinstance(axcodes, str):
            raise ConfigError(f"axcodes: expected a string such as 'RAS', got {axcodes!r}")
        _core.orientation_transform(np.eye(4).tolist(), [1] * len(axcodes), axcodes)

    def apply(self, a, affine):
        sr = a.ndim - 1
        if sr != len(self.axcodes):
            raise ShapeError(
                f"Orientation: axcodes {self.axcodes!r} for {sr} spatial dims (shape {a.shape})"
            )
        flips, perm, new_affine = _core.orientation_transform(
            np.asarray(affine, dtype=np.float64).tolist(), list(a.shape[1:]), self.axcodes
        )
        out = np.flip(a, axis=[f + 1 for f in flips]) if flips else a
        out = np.ascontiguousarray(out.transpose([0] + [p + 1 for p in perm]))
        return out, new_affine


# ---------------------------------------------------------------------------------------------
# resampling


class Resize(Transform):
    """Resize the spatial dims to ``spatial_size`` (3D), as MONAI's ``Resize``
    (``F.interpolate``, ``align_corners=False``); modes ``"trilinear"`` and ``"nearest"`` (MONAI's
    default mode is ``"area"``, which voxlm does not implement: pass the mode explicitly). The
    affine is scaled so voxel centres keep their world positions."""

    def __init__(self, spatial_size: Sequence[int], mode: str = "trilinear") -> None:
        size = _sizes(spatial_size, "Resize spatial_size")
        if len(size) != 3:
            raise ConfigError(f"spatial_size: expected 3 positive sizes, got {spatial_size!r}")
        if mode not in ("trilinear", "nearest"):
            raise ConfigError(f"mode: expected 'trilinear' or 'nearest', got {mode!r}")
        self.spatial_size, self.mode = size, mode

    def apply(self, a, affine):
        if a.ndim != 4:
            raise ShapeError(f"Resize: expected [C, D, H, W], got shape {a.shape}")
        out = _core.resize(_f32(a), self.spatial_size, self.mode)
        scale = np.array(a.shape[1:], dtype=np.float64) / np.array(
            self.spatial_size, dtype=np.float64
        )
        s = np.diag(list(scale) + [1.0])
        s[:3, 3] = (scale - 1) / 2.0
        return out, affine @ s


class Spacing(Transform):
    """Resample to voxel size ``pixdim`` (mm) as MONAI's ``Spacing`` (``align_corners=False``,
    ``scale_extent=False``, border padding): the new affine keeps the axis directions with the
    new zooms, the output grid covers the input's voxel centres from the corner nearest the
    origin, and each output voxel samples the input (trilinear or nearest) in Rust."""

    def __init__(self, pixdim: Sequence[float] | float, mode: str = "trilinear") -> None:
        p = [float(pixdim)] * 3 if isinstance(pixdim, (int, float)) else [float(v) for v in pixdim]
        if len(p) != 3 or any(v <= 0 for v in p):
            raise ConfigError(f"pixdim: expected 3 positive voxel sizes, got {pixdim!r}")
        if mode not in ("trilinear", "nearest", "bilinear"):
            raise ConfigError(f"mode: expected 'trilinear' or 'nearest', got {mode!r}")
        self.pixdim, self.mode = p, "trilinear" if mode == "bilinear" else mode

    def apply(self, a, affine):
        if a.ndim != 4:
            raise ShapeError(f"Spacing: expected [C, D, H, W], got shape {a.shape}")
        new_affine, shape, xform, identity = _core.spacing_grid(
            list(a.shape[1:]), np.asarray(affine, dtype=np.float64).tolist(), self.pixdim
        )
        if identity:  # MONAI resamples nothing when the grids agree within 1e-3
            return _f32(a), affine
        out = _core.affine_resample(_f32(a), xform.tolist(), list(shape), self.mode)
        return out, new_affine


class StackSequences(Transform):
    """Stack MRI sequences (e.g. T2W, ADC, DWI) as channels on the first one's grid: every other
    volume is resampled through its affine onto the reference voxel grid (trilinear, border), as
    MONAI's ``ResampleToMatch`` (nothing is resampled when the grids agree within 1e-3). Returns
    a Volume whose data is ``[x, y, z, C]`` (channels last, as :func:`load_image` returns
    multi-channel files)."""

    def __init__(self, mode: str = "trilinear") -> None:
        self.mode = mode

    def __call__(self, volumes: Sequence[Volume]) -> Volume:  # type: ignore[override]
        if not volumes or not all(isinstance(v, Volume) for v in volumes):
            raise VoxlmTypeError("StackSequences: expected a non-empty list of Volumes")
        ref = volumes[0]
        if np.ndim(ref.data) != 3:
            raise ShapeError(f"StackSequences: expected 3-d volumes, got shape {ref.data.shape}")
        shape = ref.data.shape[:3]
        chans = [_f32(np.asarray(ref.data))]
        ref_aff = np.asarray(ref.affine, dtype=np.float64).tolist()
        for v in volumes[1:]:
            data = _f32(np.asarray(v.data))
            if data.ndim != 3:
                raise ShapeError(f"StackSequences: expected 3-d volumes, got shape {data.shape}")
            xform, same = _core.match_grid(
                list(data.shape),
                np.asarray(v.affine, dtype=np.float64).tolist(),
                list(shape),
                ref_aff,
            )
            if same:
                chans.append(data)
                continue
            chans.append(
                _core.affine_resample(data[None], xform.tolist(), list(shape), self.mode)[0]
            )
        return Volume(np.stack(chans, axis=-1), ref.affine, ref.header)


# ---------------------------------------------------------------------------------------------
# intensity


class ScaleIntensityRange(Transform):
    """Map ``[a_min, a_max]`` linearly onto ``[b_min, b_max]`` (CT windows), optionally clipping."""

    def __init__(
        self, a_min: float, a_max: float, b_min: float = 0.0, b_max: float = 1.0, clip: bool = False
    ) -> None:
        self.args = (float(a_min), float(a_max), float(b_min), float(b_max), bool(clip))

    def apply(self, a, affine):
        return _core.scale_intensity_range(a, *self.args), None


class ScaleIntensityRangePercentiles(Transform):
    """ScaleIntensityRange with ``a_min``/``a_max`` the ``lower``/``upper`` percentiles of the
    image (``np.percentile``, linear), per channel with ``channel_wise``."""

    def __init__(
        self,
        lower: float,
        upper: float,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = False,
        channel_wise: bool = False,
    ) -> None:
        if not 0 <= lower <= upper <= 100:
            raise ConfigError(
                f"lower/upper: expected 0 <= lower <= upper <= 100, got {lower}, {upper}"
            )
        self.lower, self.upper, self.b_min, self.b_max, self.clip = lower, upper, b_min, b_max, clip
        self.channel_wise = channel_wise

    def _one(self, a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [self.lower, self.upper])
        return _core.scale_intensity_range(
            a, float(lo), float(hi), float(self.b_min), float(self.b_max), bool(self.clip)
        )

    def apply(self, a, affine):
        if self.channel_wise:
            return np.stack([self._one(c) for c in a]), None
        return self._one(a), None


class NormalizeIntensity(Transform):
    """``(x - mean) / std`` (population std; 1 when it is 0) over all voxels or, with
    ``nonzero``, only the non-zero ones (others stay 0); per channel with ``channel_wise``."""

    def __init__(self, nonzero: bool = False, channel_wise: bool = False) -> None:
        self.nonzero, self.channel_wise = nonzero, channel_wise

    def _one(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=True)
        sel = x != 0 if self.nonzero else np.ones(x.shape, dtype=bool)
        if not sel.any():
            return x
        v = x[sel]
        mean, std = float(np.mean(v)), float(np.std(v))
        x[sel] = (v - mean) / (std if std != 0 else 1.0)
        return x

    def apply(self, a, affine):
        if self.channel_wise:
            return np.stack([self._one(c) for c in a]), None
        return self._one(a), None


# ---------------------------------------------------------------------------------------------
# crops and pads


def _translate(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    t = np.eye(affine.shape[0])
    t[: len(start), -1] = start
    return affine @ t


def _crop(a: np.ndarray, affine: np.ndarray, start: Sequence[int], end: Sequence[int]):
    sl = (slice(None),) + tuple(slice(int(s), int(e)) for s, e in zip(start, end))
    return np.ascontiguousarray(a[sl]), _translate(affine, [int(s) for s in start])


class SpatialPad(Transform):
    """Pad each spatial dim to at least ``spatial_size`` (``method`` ``"symmetric"`` or ``"end"``,
    constant ``value``); ``-1`` keeps a dim."""

    def __init__(
        self, spatial_size: Sequence[int], method: str = "symmetric", value: float = 0.0
    ) -> None:
        if method not in ("symmetric", "end"):
            raise ConfigError(f"method: expected 'symmetric' or 'end', got {method!r}")
        size = _sizes(spatial_size, "SpatialPad spatial_size", keep=True)
        self.spatial_size, self.method, self.value = size, method, value

    def apply(self, a, affine):
        shape = a.shape[1:]
        if len(self.spatial_size) != len(shape):
            raise ShapeError(
                f"SpatialPad: spatial_size {self.spatial_size} for spatial shape {shape}"
            )
        pads = [(0, 0)]
        for cur, want in zip(shape, self.spatial_size):
            extra = max(int(want) - cur, 0) if want != -1 else 0
            before = extra // 2 if self.method == "symmetric" else 0
            pads.append((before, extra - before))
        _check_alloc("SpatialPad", [d + p0 + p1 for d, (p0, p1) in zip(a.shape, pads)], a.itemsize)
        out = np.pad(a, pads, mode="constant", constant_values=self.value)
        return out, _translate(affine, [-p[0] for p in pads[1:]])


class CenterSpatialCrop(Transform):
    """Crop the centre ``roi_size`` (MONAI's centre: ``size // 2 - roi // 2``); ``-1`` keeps a
    dim."""

    def __init__(self, roi_size: Sequence[int]) -> None:
        self.roi_size = _sizes(roi_size, "CenterSpatialCrop roi_size", keep=True)

    def apply(self, a, affine):
        shape = a.shape[1:]
        roi = [s if r == -1 else min(int(r), s) for r, s in zip(self.roi_size, shape)]
        start = [max(s // 2 - r // 2, 0) for s, r in zip(shape, roi)]
        return _crop(a, affine, start, [st + r for st, r in zip(start, roi)])


class ResizeWithPadOrCrop(Transform):
    """Pad (symmetric) then centre-crop to exactly ``spatial_size``."""

    def __init__(self, spatial_size: Sequence[int], value: float = 0.0) -> None:
        self.pad, self.crop = SpatialPad(spatial_size, value=value), CenterSpatialCrop(spatial_size)

    def apply(self, a, affine):
        a, affine = self.pad.apply(a, affine)
        return self.crop.apply(a, affine)


class CropForeground(Transform):
    """Crop to the bounding box of ``select_fn(image) `` (default ``> 0``) over all channels,
    enlarged by ``margin`` voxels and clipped to the image."""

    def __init__(
        self,
        select_fn: Callable[[np.ndarray], np.ndarray] = lambda x: x > 0,
        margin: int | Sequence[int] = 0,
    ) -> None:
        self.select_fn, self.margin = select_fn, margin

    def apply(self, a, affine):
        fg = np.asarray(self.select_fn(a)).any(0)
        nd = fg.ndim
        margin = [self.margin] * nd if isinstance(self.margin, int) else list(self.margin)
        if not fg.any():
            return a[(slice(None),) + (slice(0, 0),) * nd], affine
        start, end = [], []
        for ax in range(nd):
            idx = np.nonzero(fg.any(axis=tuple(i for i in range(nd) if i != ax)))[0]
            start.append(max(int(idx[0]) - margin[ax], 0))
            end.append(min(int(idx[-1]) + 1 + margin[ax], fg.shape[ax]))
        return _crop(a, affine, start, end)


class CropAroundPoint(Transform):
    """Crop a box around a point (PICG isolates lesions this way).

    ``point``: voxel indices, or world mm with ``world=True`` (through the affine). Box:
    ``size`` voxels per axis, or ``margin`` x the given ``extent`` (e.g. a lesion diameter in
    voxels). Out-of-image parts are padded with ``value`` so the output size is exact.
    """

    def __init__(
        self,
        point: Sequence[float],
        size: Sequence[int] | None = None,
        world: bool = False,
        extent: Sequence[float] | None = None,
        margin: float = 2.0,
        value: float = 0.0,
    ) -> None:
        if size is None and extent is None:
            raise ConfigError("CropAroundPoint: give size (voxels) or extent with margin")
        self.point, self.size, self.world = list(point), size, world
        self.extent, self.margin, self.value = extent, margin, value

    def apply(self, a, affine):
        nd = a.ndim - 1
        p = np.array(self.point, dtype=np.float64)
        if self.world:
            p = (np.linalg.inv(affine) @ np.append(p[:3], 1.0))[:nd]
        size = (
            np.array(self.size)
            if self.size is not None
            else np.maximum(np.ceil(np.array(self.extent) * self.margin), 1)
        ).astype(int)
        if len(size) != nd or len(p) != nd:
            raise ShapeError(f"CropAroundPoint: point/size must have {nd} entries")
        start = np.round(p).astype(int) - size // 2
        end = start + size
        pads = [(0, 0)] + [(max(-s, 0), max(e - d, 0)) for s, e, d in zip(start, end, a.shape[1:])]
        _check_alloc(
            "CropAroundPoint", [d + p0 + p1 for d, (p0, p1) in zip(a.shape, pads)], a.itemsize
        )
        padded = np.pad(a, pads, mode="constant", constant_values=self.value)
        shift = [pp[0] for pp in pads[1:]]
        return _crop(padded, _translate(affine, [-s for s in shift]), start + shift, end + shift)


class SampleSlices(Transform):
    """``n`` slices at equal intervals along ``axis`` (a spatial axis, 0 = first spatial)."""

    def __init__(self, n: int, axis: int = 0) -> None:
        if n <= 0:
            raise ConfigError(f"n: expected > 0, got {n}")
        self.n, self.axis = n, axis

    def apply(self, a, affine):
        size = a.shape[1 + self.axis]
        idx = np.linspace(0, size - 1, self.n).round().astype(int)
        return np.ascontiguousarray(np.take(a, idx, axis=1 + self.axis)), None


def stitch_images(images: Sequence[np.ndarray], gap: int = 10, value: float = 0.0) -> np.ndarray:
    """RRG24's multi-image input: 1-4 images ``[H, W(, C)]`` side by side, ``gap`` px apart,
    vertically centred on the tallest, padded with ``value``."""
    if not 1 <= len(images) <= 4:
        raise ShapeError(f"images: expected 1 to 4 images, got {len(images)}")
    imgs = [np.asarray(i) for i in images]
    if len({i.ndim for i in imgs}) != 1 or imgs[0].ndim not in (2, 3):
        raise ShapeError("images: expected all [H, W] or all [H, W, C]")
    h = max(i.shape[0] for i in imgs)
    w = sum(i.shape[1] for i in imgs) + gap * (len(imgs) - 1)
    out = np.full((h, w) + imgs[0].shape[2:], value, dtype=np.result_type(*imgs))
    x = 0
    for i in imgs:
        top = (h - i.shape[0]) // 2
        out[top : top + i.shape[0], x : x + i.shape[1]] = i
        x += i.shape[1] + gap
    return out


# ---------------------------------------------------------------------------------------------
# seeded augmentations


class _Random(Transform):
    def __init__(self, prob: float, seed: int | None) -> None:
        if not 0 <= prob <= 1:
            raise ConfigError(f"prob: expected a value in [0, 1], got {prob}")
        self.prob, self.rng = prob, np.random.default_rng(seed)

    def set_random_state(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)


class RandFlip(_Random):
    """Flip along ``spatial_axis`` with probability ``prob`` (seeded)."""

    def __init__(
        self, prob: float = 0.5, spatial_axis: int | Sequence[int] = 0, seed: int | None = None
    ) -> None:
        super().__init__(prob, seed)
        self.axes = [spatial_axis] if isinstance(spatial_axis, int) else list(spatial_axis)

    def apply(self, a, affine):
        if self.rng.random() >= self.prob:
            return a, None
        return np.ascontiguousarray(np.flip(a, axis=[x + 1 for x in self.axes])), None


class RandRotate90(_Random):
    """Rotate by ``k * 90`` degrees (k uniform in 1..max_k) in ``spatial_axes`` with prob."""

    def __init__(
        self,
        prob: float = 0.5,
        max_k: int = 3,
        spatial_axes: tuple[int, int] = (0, 1),
        seed: int | None = None,
    ) -> None:
        super().__init__(prob, seed)
        self.max_k, self.spatial_axes = max_k, spatial_axes

    def apply(self, a, affine):
        if self.rng.random() >= self.prob:
            return a, None
        k = int(self.rng.integers(1, self.max_k + 1))
        return np.ascontiguousarray(
            np.rot90(a, k, axes=(self.spatial_axes[0] + 1, self.spatial_axes[1] + 1))
        ), None


class RandScaleShiftIntensity(_Random):
    """``x * (1 + s) + o`` with ``s ~ U(-scale, scale)``, ``o ~ U(-offset, offset)`` (seeded)."""

    def __init__(
        self, prob: float = 0.5, scale: float = 0.1, offset: float = 0.1, seed: int | None = None
    ) -> None:
        super().__init__(prob, seed)
        self.scale, self.offset = scale, offset

    def apply(self, a, affine):
        if self.rng.random() >= self.prob:
            return a, None
        s = self.rng.uniform(-self.scale, self.scale)
        o = self.rng.uniform(-self.offset, self.offset)
        return (_f32(a) * np.float32(1 + s) + np.float32(o)).astype(np.float32), None


__all__ = [
    "Transform",
    "Compose",
    "Orientation",
    "Resize",
    "Spacing",
    "StackSequences",
    "ScaleIntensityRange",
    "ScaleIntensityRangePercentiles",
    "NormalizeIntensity",
    "SpatialPad",
    "CenterSpatialCrop",
    "ResizeWithPadOrCrop",
    "CropForeground",
    "CropAroundPoint",
    "SampleSlices",
    "stitch_images",
    "RandFlip",
    "RandRotate90",
    "RandScaleShiftIntensity",
]
