"""Volumes: NIfTI-1/2 I/O in Rust with nibabel's semantics.

``load_volume(path)`` returns a :class:`Volume` whose ``data`` has nibabel's axis order and
values (``nibabel.load(path).get_fdata()``; float32 by default, float64 on request) and whose
``affine`` is nibabel's best affine (sform, else qform, else the shape/zoom fallback).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core
from .exceptions import ConfigError, DTypeError, ShapeError, VoxlmTypeError


def _fspath(path: Any, name: str = "path") -> str:
    """``os.fspath(path)`` for a str or os.PathLike, else a VoxlmTypeError naming it."""
    if isinstance(path, (str, os.PathLike)):
        p = os.fspath(path)
        if isinstance(p, str):
            return p
    raise VoxlmTypeError(f"{name}: expected a file path (str or os.PathLike), got {path!r}")


def _dtype_name(dtype: Any) -> str:
    """numpy's name of ``dtype`` (``np.float32``, ``"float64"``, ...), else a DTypeError."""
    try:
        return np.dtype(dtype).name
    except (TypeError, ValueError):
        raise DTypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None


PathLike = str | os.PathLike[str]
_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def io_orientation(affine: np.ndarray, tol: float | None = None) -> np.ndarray:
    """Voxel axis -> world axis and direction, ``[p, 2]`` with NaN rows for axes without a
    direction (nibabel's ``io_orientation``: normalised columns, the nearest orthogonal matrix
    by SVD, the most dominant column assigned first). Computed in Rust
    (``src/volume/geometry.rs``), the code the fused pipeline runs."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.ndim != 2:
        raise ShapeError(f"affine: expected a 2-d matrix, got shape {affine.shape}")
    return np.array(_core.io_orientation(affine.tolist(), tol), dtype=np.float64).reshape(-1, 2)


def aff2axcodes(affine: np.ndarray) -> tuple[str | None, ...]:
    """Axis codes such as ``("R", "A", "S")`` of an affine (nibabel's ``aff2axcodes``)."""
    codes: list[str | None] = []
    for ax, direction in io_orientation(affine):
        if np.isnan(ax):
            codes.append(None)
        else:
            codes.append(_LABELS[int(ax)][0 if direction == -1 else 1])
    return tuple(codes)


@dataclass
class Volume:
    """An image volume: ``data`` (numpy, axes x, y, z[, ...] as nibabel), its 4x4 ``affine``
    (voxel -> world mm) and the NIfTI ``header`` fields."""

    data: np.ndarray
    affine: np.ndarray
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata dict (``header``): NIfTI header fields, or for other formats
        ``{"format": ..., ...}`` as :func:`load_image` documents."""
        return self.header

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along the first three axes (the affine's column norms)."""
        a = np.asarray(self.affine)[:3, :3]
        return tuple(float(v) for v in np.sqrt((a * a).sum(0)))

    @property
    def axcodes(self) -> tuple[str | None, ...]:
        return aff2axcodes(self.affine)

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.shape}, dtype={self.data.dtype}, spacing="
            f"{tuple(round(s, 4) for s in self.spacing)}, "
            f"axcodes={''.join(c or '?' for c in self.axcodes)})"
        )


def load_volume(path: PathLike, dtype: Any = np.float32) -> Volume:
    """Read a NIfTI-1/2 file (``.nii``, ``.nii.gz`` by gzip magic, ``.hdr``/``.img`` pairs).

    Raises :class:`~voxlm.VolumeFormatError` for corrupt, truncated or unsupported files (an
    ``OSError``) and :class:`~voxlm.VoxlmIOError` for unreadable paths."""
    name = _dtype_name(dtype)
    data, affine, header = _core.load_nifti(_fspath(path), name)
    return Volume(data, affine, header)


def save_volume(
    volume: Volume | np.ndarray,
    path: PathLike,
    affine: np.ndarray | None = None,
    compress_level: int = 1,
) -> None:
    """Write a NIfTI-1 file (gzip if the name ends in ``.gz``); the data keep their dtype, the
    affine is stored as the sform. nibabel reads back the same data and affine.

    ``compress_level`` (0-9, as zlib's) is libdeflate's level: one gzip member, dynamic Huffman
    blocks (at level 1 about as small as nibabel's output at the same level)."""
    if isinstance(compress_level, bool) or not isinstance(compress_level, (int, np.integer)):
        raise ConfigError(f"compress_level: expected an int 0..9, got {compress_level!r}")
    if not 0 <= int(compress_level) <= 9:
        raise ConfigError(f"compress_level: expected 0..9 (zlib's levels), got {compress_level}")
    if isinstance(volume, Volume):
        data, aff = volume.data, volume.affine if affine is None else affine
    else:
        data, aff = np.asarray(volume), (np.eye(4) if affine is None else affine)
    aff = np.asarray(aff, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ShapeError(f"affine: expected shape (4, 4), got {aff.shape}")
    zooms = [float(v) for v in np.sqrt((aff[:3, :3] ** 2).sum(0))] + [1.0] * (max(data.ndim - 3, 0))
    _core.save_nifti(_fspath(path), data, aff.tolist(), zooms[: data.ndim], int(compress_level))


# ---------------------------------------------------------------------------------------------
# one entry point for every format, dispatched by content (in Rust: src/volume/load.rs)


def sniff_format(path: PathLike) -> str:
    """The format of ``path`` from its content (not its name): ``"nifti"`` (gzip magic or the
    NIfTI-1/2 ``sizeof_hdr``), ``"dicom"`` (``DICM`` at byte 128, or a folder), ``"metaimage"``
    (a text header starting with ``ObjectType``/``NDims``), ``"png"``, ``"jpeg"``, ``"npy"``.

    Raises :class:`~voxlm.VoxlmIOError` for a missing path and
    :class:`~voxlm.VolumeFormatError` for content it does not recognise."""
    return _core.sniff_format(_fspath(path))


def load_image(path: PathLike, dtype: Any = np.float32, series_uid: str | None = None) -> Volume:
    """Read a volume of any supported format, chosen by content (see :func:`sniff_format`).

    Returns a :class:`Volume`: ``data`` (float32 by default, float64 on request), ``affine``
    voxel -> world mm in nibabel's RAS+ convention, and ``meta`` (== ``header``) holding
    ``"format"`` and the format's fields.

    * NIfTI: exactly :func:`load_volume` (``meta`` = the NIfTI header dict + ``"format"``).
    * DICOM (a file, or a folder = one series): axes x = column, y = row, z = slice sorted
      along the slice normal by ImagePositionPatient; values ``raw * RescaleSlope +
      RescaleIntercept``; the affine is ITK's LPS geometry (SimpleITK ``ImageSeriesReader``)
      flipped to RAS. ``series_uid`` picks a series from a folder holding several (without it
      such a folder is an error listing them). Colour images get a last samples axis.
    * MetaImage (``.mha``, ``.mhd`` + ``.raw``/``.zraw``): SimpleITK's values and geometry (LPS
      flipped to RAS); axes x, y, z as the file; several channels go last.
    * ``.npy`` (M3D-Cap stores float32 ``[1, 32, 256, 256]`` = ``[C, D, H, W]`` in [0, 1]): no
      geometry, so the affine is the identity. A 4-D array with one leading channel is squeezed
      to ``[D, H, W]`` so that a transform (which adds the channel axis back) sees M3D's own
      ``[1, D, H, W]``; a 4-D array with C > 1 leading channels is moved to ``[D, H, W, C]``
      (``meta["channels_last"] = True``); 2-D and 3-D arrays are kept.
      ``meta["original_shape"]`` records the file's shape.
    * PNG / JPEG: ``[H, W]`` or ``[H, W, C]`` as Pillow's ``np.asarray`` (``meta["axes"] ==
      "HWC"``), identity affine; :mod:`voxlm.image` has the 2D API.

    Raises :class:`~voxlm.VolumeFormatError` naming the file and the problem for corrupt or
    unsupported content, :class:`~voxlm.VoxlmIOError` for unreadable paths."""
    p = _fspath(path)
    name = _dtype_name(dtype)
    if name not in ("float32", "float64"):
        raise DTypeError(f"dtype: expected float32 or float64, got {name}")
    if _core.sniff_format(p) == "nifti":
        v = load_volume(p, dtype)
        v.header.setdefault("format", "nifti")
        return v
    data, affine, meta, _fmt = _core.load_image(p, name, series_uid)
    return Volume(data, affine, meta)
