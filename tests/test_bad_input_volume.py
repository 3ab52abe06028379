"""Bad input to the volume entry points (transforms, readers, the fused pipeline): a voxlm
exception naming what was expected and what was given, raised before anything is allocated;
never a Rust panic, an out-of-memory abort or a numpy MemoryError."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import voxlm
from voxlm import data
from voxlm import transforms as T
from voxlm.exceptions import ConfigError, DTypeError, ShapeError, VoxlmError, VoxlmTypeError

V = np.zeros((1, 8, 8, 8), np.float32)


@pytest.mark.parametrize(
    ("make", "exc", "words"),
    [
        (lambda: T.Resize("abc"), ConfigError, ("Resize spatial_size", "'abc'")),
        (lambda: T.Resize((4, 4, True)), ConfigError, ("Resize spatial_size",)),
        (lambda: T.Resize((4, 0, 4)), ConfigError, ("integers >= 1",)),
        (lambda: T.SpatialPad((-2, 4, 4)), ConfigError, ("SpatialPad spatial_size", "-1")),
        (lambda: T.SpatialPad(5), ConfigError, ("SpatialPad spatial_size", "5")),
        (lambda: T.CenterSpatialCrop((0, 4, 4)), ConfigError, ("CenterSpatialCrop roi_size",)),
        (lambda: T.ResizeWithPadOrCrop((4, 4.5, 4)), ConfigError, ("spatial_size", "4.5")),
        (lambda: T.Compose([5]), ConfigError, ("transforms[0] is not callable",)),
        (lambda: T.Compose(5), ConfigError, ("expected a list of transforms",)),
        (lambda: T.Compose("abc"), ConfigError, ("expected a list of transforms",)),
    ],
)
def test_transform_arguments(make, exc, words):
    with pytest.raises(exc) as e:
        make()
    assert all(w in str(e.value) for w in words), str(e.value)


def test_valid_sizes_still_work():
    assert T.Resize((4.0, 4, 4))(V).shape == (1, 4, 4, 4)  # an integral float is a size
    assert T.SpatialPad((-1, 10, 8))(V).shape == (1, 8, 10, 8)
    assert T.CenterSpatialCrop((-1, 4, 4))(V).shape == (1, 8, 4, 4)
    assert T.Compose(T.Resize((4, 4, 4)))(V).shape == (1, 4, 4, 4)  # one transform, as MONAI
    assert T.Compose(t for t in [T.Resize((4, 4, 4))])(V).shape == (1, 4, 4, 4)


@pytest.mark.parametrize(
    "transform",
    [
        T.Resize((4096,) * 3),
        T.Spacing((1e-6,) * 3),
        T.Spacing((1e-3,) * 3),
        T.SpatialPad((4096,) * 3),
        T.ResizeWithPadOrCrop((4096,) * 3),
        T.CropAroundPoint((4, 4, 4), size=(4096,) * 3),
    ],
    ids=["resize", "spacing-overflow", "spacing-huge", "pad", "pad-or-crop", "crop-point"],
)
def test_outputs_larger_than_memory_are_refused_before_allocating(transform):
    """Each ran out of memory (Resize: the Rust resampler aborted the process), panicked in
    ndarray ('Shape too large') or raised numpy's MemoryError."""
    with pytest.raises(ShapeError, match=r"more than this machine's .* GiB of memory"):
        transform(V)


def test_fused_pipeline_refuses_huge_outputs(tmp_path):
    """The same sizes through the fused Rust path (a Compose applied to a file)."""
    p = tmp_path / "v.nii.gz"
    voxlm.save_volume(np.zeros((8, 8, 8), np.float32), p, np.eye(4))
    for t in (T.Resize((4096,) * 3), T.Spacing((1e-6,) * 3), T.SpatialPad((4096,) * 3)):
        with pytest.raises(ShapeError, match="memory"):
            T.Compose([t])(p)
        with pytest.raises(ShapeError, match="memory"):
            data.load_batch([p], T.Compose([t]))


def test_abort_free_in_a_child_process():
    """The case that used to kill the interpreter (rc -6), run where an abort cannot take the
    test runner with it."""
    code = (
        "import numpy as np, voxlm.transforms as T\n"
        "from voxlm.exceptions import ShapeError\n"
        "try:\n    T.Resize((4096,) * 3)(np.zeros((1, 8, 8, 8), np.float32))\n"
        "except ShapeError:\n    print('refused')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "refused", (r.returncode, r.stderr[-500:])


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: voxlm.load_volume(5), VoxlmTypeError, ("path", "5")),
        (lambda: voxlm.load_image(5), VoxlmTypeError, ("path", "5")),
        (lambda: voxlm.load_image(b"/x.nii"), VoxlmTypeError, ("path",)),
        (lambda: voxlm.load_volume("/x.nii", dtype="foo"), DTypeError, ("dtype", "'foo'")),
        (lambda: data.VolumeDataset(5), VoxlmTypeError, ("VolumeDataset paths", "5")),
        (lambda: data.VolumeDataset("/a.nii.gz"), VoxlmTypeError, ("VolumeDataset paths",)),
        (lambda: data.load_batch(5), VoxlmTypeError, ("load_batch paths",)),
        (lambda: data.load_batch([5]), VoxlmTypeError, ("paths",)),
    ],
)
def test_reader_arguments(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert isinstance(e.value, VoxlmError)
    assert all(w in str(e.value) for w in words), str(e.value)
