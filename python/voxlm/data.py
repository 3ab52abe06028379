"""Batches and datasets of volumes (any format :func:`voxlm.load_image` reads).

* :func:`load_batch`: many files -> one ``torch.Tensor`` ``[B, C, D, H, W]``, parallel across
  files.
* :class:`VolumeDataset`: a ``torch.utils.data.Dataset`` for ``DataLoader`` workers (it holds
  paths, not Rust objects), with an optional persistent cache (:class:`VolumeDataset`'s
  ``cache_dir``, MONAI ``PersistentDataset``'s idea).
* :func:`transform_path`: a :class:`~voxlm.transforms.Compose` applied to a path (also what
  ``Compose(...)(path)`` does).

The fused Rust path. A chain of the form ``[Orientation(any axcodes)] [Spacing(trilinear |
nearest)] [ScaleIntensityRange]`` followed by any of ``ScaleIntensityRange``,
``ScaleIntensityRangePercentiles``, ``NormalizeIntensity``, ``CropForeground`` (default
``select_fn``, ``x > 0``), ``SpatialPad``, ``CenterSpatialCrop``, ``ResizeWithPadOrCrop`` and
``Resize`` runs entirely in Rust, one pass per file with the GIL released: NIfTI voxels are
resampled straight from the file's bytes through a strided, reoriented view; other formats are
decoded to float32 once. Any other chain runs the Python transforms on :func:`load_image`'s
volume (same numbers, slower).

Multi-sequence items (MRI T2W / ADC / DWI of one study): wherever a path is accepted, a list
of paths stacks them as channels ``[C, D, H, W]``: every sequence after the first is resampled
onto the first one's voxel grid (MONAI ``ResampleToMatch``: trilinear, border padding, nothing
resampled when the grids agree), then the chain runs on the stacked image (Orientation and
Spacing on every channel, intensity statistics and the foreground box over all channels, as
MONAI's transforms on a multi-channel image). Fused in Rust when the chain fuses; otherwise
:class:`~voxlm.transforms.StackSequences` and the Python transforms.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from . import _core
from . import transforms as T
from .exceptions import ShapeError, VoxlmIOError, VoxlmTypeError
from .volume import Volume, load_image

PathLike = str | os.PathLike[str]
#: one file, or the sequences of one study (stacked as channels on the first one's grid)
Item = PathLike | Sequence[PathLike]
_DEFAULT_SELECT = T.CropForeground.__init__.__defaults__[0]  # type: ignore[index]


def _steps_of(transform: Any) -> list[Any]:
    if transform is None:
        return []
    return list(transform.transforms) if isinstance(transform, T.Compose) else [transform]


def _size3(v: Sequence[int]) -> list[float] | None:
    vals = [float(x) for x in v]
    return vals if len(vals) == 3 else None


def _post_step(t: Any) -> tuple[str, list[float]] | None:
    if isinstance(t, T.ScaleIntensityRange):
        a0, a1, b0, b1, clip = t.args
        return "window", [a0, a1, b0, b1, float(clip)]
    if isinstance(t, T.ScaleIntensityRangePercentiles):
        return "percentiles", [
            float(t.lower),
            float(t.upper),
            float(t.b_min),
            float(t.b_max),
            float(t.clip),
        ]
    if isinstance(t, T.NormalizeIntensity):
        return "normalize", [float(t.nonzero)]
    if isinstance(t, T.CropForeground) and t.select_fn is _DEFAULT_SELECT:
        m = [t.margin] * 3 if isinstance(t.margin, int) else list(t.margin)
        return ("crop_foreground", [float(x) for x in m]) if len(m) == 3 else None
    if isinstance(t, T.SpatialPad):
        s = _size3(t.spatial_size)
        return None if s is None else ("pad", s + [float(t.method == "symmetric"), float(t.value)])
    if isinstance(t, T.CenterSpatialCrop):
        s = _size3(t.roi_size)
        return None if s is None else ("center_crop", s)
    if isinstance(t, T.ResizeWithPadOrCrop):
        s = _size3(t.pad.spatial_size)
        return None if s is None else ("pad_or_crop", s + [float(t.pad.value)])
    if isinstance(t, T.Resize):
        return "resize", [float(x) for x in t.spatial_size] + [
            0.0 if t.mode == "trilinear" else 1.0
        ]
    return None


def rust_plan(transform: Any) -> dict[str, Any] | None:
    """The fused Rust pipeline equivalent to ``transform``, or None when the chain needs Python
    (see the module docstring for the chains that fuse)."""
    steps = _steps_of(transform)
    plan: dict[str, Any] = {
        "axcodes": None,
        "spacing": None,
        "spacing_mode": "trilinear",
        "window": None,
        "size": None,
        "mode": "trilinear",
        "steps": [],
    }
    i = 0
    if i < len(steps) and isinstance(steps[i], T.Orientation) and len(steps[i].axcodes) == 3:
        plan["axcodes"], i = steps[i].axcodes, i + 1
    if i < len(steps) and isinstance(steps[i], T.Spacing):
        plan["spacing"], plan["spacing_mode"], i = list(steps[i].pixdim), steps[i].mode, i + 1
    if i < len(steps) and isinstance(steps[i], T.ScaleIntensityRange):
        plan["window"], i = steps[i].args, i + 1
    post = []
    for t in steps[i:]:
        s = _post_step(t)
        if s is None:
            return None
        post.append(s)
    if len(post) == 1 and post[0][0] == "resize":  # straight from the file's bytes
        plan["size"] = [int(x) for x in post[0][1][:3]]
        plan["mode"] = "trilinear" if post[0][1][3] == 0.0 else "nearest"
        post = []
    plan["steps"] = post
    return plan


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _item(x: Any) -> str | list[str]:
    """A path, or a non-empty list of paths (a dict of sequences: its values in order)."""
    if _is_path(x):
        return os.fspath(x)
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)) and x and all(_is_path(p) for p in x):
        return [os.fspath(p) for p in x] if len(x) > 1 else os.fspath(x[0])
    raise VoxlmTypeError(
        "paths: expected each item to be a path or a non-empty list of paths (sequences), "
        f"got {x!r}"
    )


def _run_plan(
    paths: Sequence[Item],
    plan: dict[str, Any],
    num_threads: int = 0,
    series_uid: str | None = None,
) -> np.ndarray:
    return _core.load_batch(
        [_item(p) for p in paths],
        False,
        plan["window"],
        plan["size"],
        plan["mode"],
        int(num_threads),
        plan["spacing"],
        plan["axcodes"],
        plan["spacing_mode"],
        plan["steps"],
        series_uid,
    )


def _as_array(out: Any) -> np.ndarray:
    if isinstance(out, Volume):
        arr = np.asarray(out.data)
        # the axis after the spatial ones holds channels (DICOM samples, MetaImage vectors, RGB)
        n_spatial = 2 if out.header.get("axes") == "HWC" else 3
        arr = arr[None] if arr.ndim <= n_spatial else np.moveaxis(arr, -1, 0)
    elif isinstance(out, torch.Tensor):
        arr = out.detach().cpu().numpy()
    else:
        arr = np.asarray(out)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _apply_chain(arr: np.ndarray, affine: np.ndarray, transform: Any) -> np.ndarray:
    """``transform`` on a channel-first array that keeps its affine: voxlm transforms get the
    affine (Orientation and Spacing need it), other callables the array."""
    out: Any = arr
    for t in _steps_of(transform):
        if isinstance(t, T.Compose):
            out = _apply_chain(_as_array(out), affine, t)
        elif isinstance(t, T.Transform) and isinstance(out, np.ndarray):
            out, new = t.apply(out, affine)
            affine = affine if new is None else np.asarray(new)
        else:
            out = t(out)
    return _as_array(out) if not isinstance(out, np.ndarray) else np.asarray(out, np.float32)


def _stacked_python(
    paths: Sequence[str], transform: Any, series_uid: str | None = None
) -> np.ndarray:
    vols = [load_image(p, series_uid=series_uid) for p in paths]
    for p, v in zip(paths, vols):
        if v.data.ndim != 3:
            raise ShapeError(f"{p}: expected a 3-d sequence, got shape {v.data.shape}")
    st = T.StackSequences()(vols)
    arr = np.ascontiguousarray(np.moveaxis(np.asarray(st.data), -1, 0), dtype=np.float32)
    if transform is None:
        return arr
    return _apply_chain(arr, np.asarray(st.affine, dtype=np.float64), transform)


def transform_paths(
    paths: Sequence[PathLike], transform: Callable[[Any], Any] | None, num_threads: int = 0
) -> np.ndarray:
    """The sequences ``paths`` of one study stacked as channels on the first one's grid, then
    ``transform``: float32 ``[C, D, H, W]`` (see the module docstring); fused in Rust when the
    chain allows it."""
    item = _item(list(paths))
    if isinstance(item, str):
        return transform_path(item, transform, num_threads)
    plan = rust_plan(transform)
    if plan is not None:
        return _run_plan([item], plan, num_threads)[0]
    return _stacked_python(item, transform)


def transform_path(
    path: PathLike, transform: Callable[[Any], Any] | None, num_threads: int = 0
) -> np.ndarray:
    """``transform(load_image(path))`` as float32 ``[C, D, H, W]``, through the fused Rust path
    when the chain allows it (:func:`rust_plan`)."""
    plan = rust_plan(transform)
    if plan is not None:
        return _run_plan([path], plan, num_threads)[0]
    v = load_image(path)
    return _as_array(transform(v) if transform is not None else v)


def load_batch(
    paths: Sequence[Item], transform: Callable[[Any], Any] | None = None, num_threads: int = 0
) -> torch.Tensor:
    """Load ``paths`` (any format) into ``[B, C, D, H, W]`` float32 (``num_threads`` files at a
    time; 0 = all cores). Volumes must end up the same shape (add a Resize). An item that is a
    list of paths stacks those sequences as channels (module docstring)."""
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Sequence):
        raise VoxlmTypeError(f"load_batch paths: expected a list of paths, got {paths!r}")
    if len(paths) == 0:
        raise ShapeError("paths: expected at least one file")
    items = [_item(p) for p in paths]
    plan = rust_plan(transform)
    if plan is not None:
        return torch.from_numpy(_run_plan(items, plan, num_threads))

    def one(p: str | list[str]) -> np.ndarray:
        if isinstance(p, list):
            return _stacked_python(p, transform)
        v = load_image(p)
        return _as_array(transform(v) if transform is not None else v)

    with ThreadPoolExecutor(max_workers=num_threads or os.cpu_count()) as ex:
        arrays = list(ex.map(one, items))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ShapeError(f"volumes have different shapes {sorted(shapes)}: add a Resize")
    return torch.from_numpy(np.stack(arrays))


def _describe(t: Any) -> Any:
    """A stable description of a transform for cache keys.

    Named functions go by module and qualified name; a lambda or a closure (whose name cannot
    tell two of them apart: ``<lambda>``, or one inner function over different captured values)
    also by its bytecode, constants, defaults and captured values, so ``lambda x: x > 0`` and
    ``lambda x: x > 100`` get different keys."""
    if isinstance(t, T.Compose):
        return [_describe(x) for x in t.transforms]
    if isinstance(t, types.FunctionType) and (
        t.__name__ == "<lambda>" or t.__closure__ or "<locals>" in t.__qualname__
    ):
        code = t.__code__
        cells = [repr(c.cell_contents) for c in (t.__closure__ or ())]
        return [
            f"{t.__module__}.{t.__qualname__}",
            code.co_code.hex(),
            repr(code.co_consts),
            repr(t.__defaults__),
            cells,
        ]
    if isinstance(t, types.MethodType):
        return [_describe(t.__func__), _describe(t.__self__)]
    if isinstance(t, (types.FunctionType, types.BuiltinFunctionType)):
        return f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', repr(t))}"
    if hasattr(t, "__dict__"):
        fields = {k: _describe(v) for k, v in sorted(vars(t).items()) if k != "rng"}
        return [type(t).__module__ + "." + type(t).__qualname__, fields]
    return repr(t)


def _stamp(p: str) -> Any:
    """A file's identity for cache keys: size and mtime (every file of a DICOM folder)."""
    try:
        st = os.stat(p)
        if os.path.isdir(p):  # a DICOM series: every file's identity, not the folder's
            files = sorted(os.scandir(p), key=lambda e: e.name)
            return [[e.name, e.stat().st_size, e.stat().st_mtime_ns] for e in files]
        return [st.st_size, st.st_mtime_ns]
    except OSError as e:
        raise VoxlmIOError(f"{p}: {e.strerror or e}") from None


class VolumeDataset(torch.utils.data.Dataset):
    """``(volume [C, D, H, W] float32 tensor[, label])`` per path, through ``transform``.

    A path may be a list (or dict) of sequences of one study: they are stacked as channels on
    the first one's grid (module docstring), in Rust when the chain fuses.

    Chains that fuse (:func:`rust_plan`) run in Rust, one thread per DataLoader worker.

    ``cache_dir``: persist the deterministic part of the chain (everything before the first
    random transform, as MONAI's ``PersistentDataset``) as ``.npy`` files keyed by the file's
    identity (absolute path, size, mtime) and the transform configuration; random transforms
    run after the cache on every access. Writes go to a unique temporary file renamed into
    place, so concurrent DataLoader workers never read a partial file.
    """

    def __init__(
        self,
        paths: Sequence[Item],
        transform: Callable[[Any], Any] | None = None,
        labels: Sequence[Any] | None = None,
        cache_dir: PathLike | None = None,
        series_uid: str | None = None,
    ) -> None:
        if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Sequence):
            raise VoxlmTypeError(
                f"VolumeDataset paths: expected a list of paths (or of sequence lists), got "
                f"{paths!r}"
            )
        if labels is not None and len(labels) != len(paths):
            raise ShapeError(f"labels: expected {len(paths)} (one per path), got {len(labels)}")
        self.paths, self.transform, self.labels = [_item(p) for p in paths], transform, labels
        self.series_uid = series_uid
        steps = _steps_of(transform)
        cut = next((k for k, t in enumerate(steps) if isinstance(t, T._Random)), len(steps))
        self._head = T.Compose(steps[:cut]) if steps else None
        self._tail = steps[cut:]
        self._plan = rust_plan(self._head) if self._head is not None else None
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        if self.cache_dir is not None:
            os.makedirs(self.cache_dir, exist_ok=True)
            self._config = json.dumps(
                {"plan": self._plan, "head": _describe(self._head)}, sort_keys=True, default=str
            )

    def __len__(self) -> int:
        return len(self.paths)

    def _compute(self, path: str | list[str]) -> np.ndarray:
        threads = 1 if torch.utils.data.get_worker_info() is not None else 0
        if self._plan is not None:
            return _run_plan([path], self._plan, threads, self.series_uid)[0]
        if isinstance(path, list):
            return _stacked_python(path, self._head, self.series_uid)
        v = load_image(path, series_uid=self.series_uid)
        return _as_array(self._head(v) if self._head is not None else v)

    def cache_path(self, i: int) -> str | None:
        """The cache file of item ``i`` (None without ``cache_dir``)."""
        if self.cache_dir is None:
            return None
        item = self.paths[i]
        group = item if isinstance(item, list) else [item]
        ident = json.dumps(
            [[[os.path.abspath(p), _stamp(p)] for p in group], self.series_uid, self._config]
        )
        return os.path.join(self.cache_dir, hashlib.sha256(ident.encode()).hexdigest() + ".npy")

    def _load(self, i: int) -> np.ndarray:
        cp = self.cache_path(i)
        if cp is not None and os.path.exists(cp):
            try:
                return np.load(cp, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                pass  # unreadable cache entry: recompute and replace it
        arr = self._compute(self.paths[i])
        if cp is not None:
            tmp = f"{cp}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, cp)
        return arr

    def __getitem__(self, i: int) -> Any:
        arr = self._load(i)
        out: Any = arr
        for t in self._tail:
            out = t(out)
        x = torch.from_numpy(_as_array(out))
        return x if self.labels is None else (x, self.labels[i])
