"""Batches and datasets of volumes.

* :func:`load_batch`: many NIfTI files -> one ``torch.Tensor`` ``[B, C, D, H, W]``, parallel
  across files. Pipelines made of :class:`~voxlm.transforms.Orientation` ("RAS"),
  :class:`~voxlm.transforms.Spacing`, :class:`~voxlm.transforms.ScaleIntensityRange` and
  :class:`~voxlm.transforms.Resize` (in that order) run
  entirely in Rust (one pass per file, GIL released); any other transform runs per file in a
  thread pool on top of the Rust loader.
* :class:`VolumeDataset`: a ``torch.utils.data.Dataset`` that works in ``DataLoader`` worker
  processes (it holds paths, not Rust objects).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from . import _core
from . import transforms as T
from .exceptions import ShapeError
from .volume import Volume, load_volume

PathLike = str | os.PathLike[str]


def _rust_plan(transform: Any) -> dict[str, Any] | None:
    steps = transform.transforms if isinstance(transform, T.Compose) else ([] if transform is None else [transform])
    plan: dict[str, Any] = {"ras": False, "spacing": None, "window": None, "size": None, "mode": "trilinear"}
    order = 0
    for t in steps:
        if isinstance(t, T.Orientation) and t.axcodes == "RAS" and order == 0:
            plan["ras"], order = True, 1
        elif isinstance(t, T.Spacing) and t.mode == "trilinear" and order <= 1:
            plan["spacing"], order = t.pixdim, 2
        elif isinstance(t, T.ScaleIntensityRange) and order <= 2:
            plan["window"], order = t.args, 3
        elif isinstance(t, T.Resize) and order <= 3:
            plan["size"], plan["mode"], order = t.spatial_size, t.mode, 4
        else:
            return None
    return plan


def load_batch(paths: Sequence[PathLike], transform: Callable[[Any], Any] | None = None,
               num_threads: int = 0) -> torch.Tensor:
    """Load ``paths`` into ``[B, C, D, H, W]`` float32 (``num_threads`` files at a time; 0 = all
    cores). Volumes must end up the same shape (add a Resize)."""
    if len(paths) == 0:
        raise ShapeError("paths: expected at least one file")
    plan = _rust_plan(transform)
    if plan is not None:
        arr = _core.load_batch([os.fspath(p) for p in paths], plan["ras"], plan["window"], plan["size"],
                               plan["mode"], int(num_threads), plan["spacing"])
        return torch.from_numpy(arr)

    def one(p: PathLike) -> np.ndarray:
        out = transform(load_volume(p)) if transform is not None else load_volume(p)
        arr = out.data[None] if isinstance(out, Volume) else np.asarray(out)
        return np.ascontiguousarray(arr, dtype=np.float32)

    with ThreadPoolExecutor(max_workers=num_threads or os.cpu_count()) as ex:
        arrays = list(ex.map(one, paths))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ShapeError(f"volumes have different shapes {sorted(shapes)}: add a Resize")
    return torch.from_numpy(np.stack(arrays))


class VolumeDataset(torch.utils.data.Dataset):
    """``(volume [C, D, H, W] tensor[, label])`` per path, through ``transform``."""

    def __init__(self, paths: Sequence[PathLike], transform: Callable[[Any], Any] | None = None,
                 labels: Sequence[Any] | None = None) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ShapeError(f"labels: expected {len(paths)} (one per path), got {len(labels)}")
        self.paths, self.transform, self.labels = [os.fspath(p) for p in paths], transform, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        v = load_volume(self.paths[i])
        out = self.transform(v) if self.transform is not None else v
        arr = out.data[None] if isinstance(out, Volume) else np.asarray(out)
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        return x if self.labels is None else (x, self.labels[i])
