"""``.npy`` volumes through voxlm's Rust reader against ``numpy.load``: every numeric dtype in
both byte orders, C and Fortran order, format versions 1 and 2, M3D-Cap's [1, 32, 256, 256]
layout; values exact (float64), channel handling as ``load_image`` documents."""

import numpy as np
import pytest

import voxlm
from voxlm.volume import load_image

DTYPES = [
    "<f4",
    ">f4",
    "<f8",
    ">f8",
    "<i2",
    ">i2",
    "<u2",
    "|u1",
    "|i1",
    "<i4",
    ">u4",
    "<i8",
    "<u8",
    "|b1",
]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
def test_dtypes_and_orders(tmp_path, dt, order):
    rng = np.random.default_rng(0)
    a = (rng.normal(0, 50, (5, 6, 7)) + 60).astype(np.dtype(dt))
    a = np.asfortranarray(a) if order == "F" else a
    np.save(tmp_path / "a.npy", a)
    v = load_image(tmp_path / "a.npy", np.float64)
    np.testing.assert_array_equal(v.data, np.load(tmp_path / "a.npy").astype(np.float64))
    assert v.data.shape == (5, 6, 7)


def test_format_version_2_and_m3d(tmp_path):
    a = np.random.default_rng(1).random((1, 32, 256, 256), dtype=np.float32)
    with open(tmp_path / "v2.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=(2, 0))
    v = load_image(tmp_path / "v2.npy")
    np.testing.assert_array_equal(v.data, a[0])
    assert v.meta["original_shape"] == [1, 32, 256, 256]


@pytest.mark.parametrize("order", ["C", "F"])
def test_channels_last(tmp_path, order):
    a = np.arange(3 * 4 * 5 * 6, dtype=np.float32).reshape(3, 4, 5, 6)
    np.save(tmp_path / "c.npy", np.asfortranarray(a) if order == "F" else a)
    v = load_image(tmp_path / "c.npy")
    np.testing.assert_array_equal(v.data, np.moveaxis(a, 0, -1))
    assert v.meta["channels_last"] is True


def test_bad_npy(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(voxlm.VolumeFormatError, match="o.npy.*not numeric"):
        load_image(tmp_path / "o.npy")
    np.save(tmp_path / "t.npy", np.zeros((8, 8, 8), np.float32))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-10])
    with pytest.raises(voxlm.VolumeFormatError, match="truncated .npy"):
        load_image(tmp_path / "t.npy")
