"""MetaImage through ``voxlm.load_image`` against SimpleITK, on files SimpleITK writes: every
pixel type, ``.mha`` and ``.mhd`` + ``.raw``/``.zraw``, compressed or not, oblique directions,
vector pixels (channels last), 2-D and 4-D; values exact, the RAS affine within 1e-12 of
SimpleITK's LPS origin/spacing/direction flipped. Corrupt headers and data: VolumeFormatError
naming the file."""

import os

import numpy as np
import pytest
import SimpleITK as sitk

import voxlm
from voxlm.volume import load_image

DTYPES = [
    np.uint8,
    np.int8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float32,
    np.float64,
]


def ras_affine(img):
    n = img.GetDimension()
    d = np.array(img.GetDirection()).reshape(n, n)[:3, :3]
    a = np.eye(4)
    a[:3, :3] = d @ np.diag(img.GetSpacing()[:3])
    a[:3, 3] = img.GetOrigin()[:3]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a


def oblique(rng, spacing=(0.7, 0.8, 2.5)):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q.flatten().tolist(), spacing


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "ext,compress", [(".mha", False), (".mha", True), (".mhd", False), (".mhd", True)]
)
def test_written_by_simpleitk(tmp_path, dtype, ext, compress):
    rng = np.random.default_rng(0)
    arr = (rng.normal(0, 40, (5, 6, 7)) + 60).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    d, s = oblique(rng)
    img.SetDirection(d)
    img.SetSpacing(s)
    img.SetOrigin((-10.0, 20.5, 33.0))
    p = str(tmp_path / f"x{ext}")
    sitk.WriteImage(img, p, useCompression=compress)
    if ext == ".mhd":
        assert os.path.exists(p[:-4] + (".zraw" if compress else ".raw"))
    ref = sitk.ReadImage(p)
    v = load_image(p, np.float64)
    np.testing.assert_array_equal(
        v.data, sitk.GetArrayFromImage(ref).transpose(2, 1, 0).astype(np.float64)
    )
    np.testing.assert_allclose(v.affine, ras_affine(ref), rtol=0, atol=1e-12)
    assert v.meta["format"] == "metaimage" and v.meta["CompressedData"] == compress
    np.testing.assert_array_equal(load_image(p).data, v.data.astype(np.float32))


def test_vector_pixels_channels_last(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(6, 5, 4, 3)).astype(np.float32)
    img = sitk.GetImageFromArray(arr, isVector=True)
    sitk.WriteImage(img, str(tmp_path / "v.mha"), useCompression=True)
    v = load_image(tmp_path / "v.mha")
    assert v.shape == (4, 5, 6, 3) and v.meta["ElementNumberOfChannels"] == 3
    np.testing.assert_array_equal(v.data, arr.transpose(2, 1, 0, 3))


def test_2d_and_4d(tmp_path):
    rng = np.random.default_rng(2)
    a2 = rng.integers(0, 255, (9, 11)).astype(np.uint8)
    img = sitk.GetImageFromArray(a2)
    img.SetSpacing((0.5, 0.25))
    img.SetOrigin((3.0, -4.0))
    sitk.WriteImage(img, str(tmp_path / "a.mha"))
    v = load_image(tmp_path / "a.mha")
    np.testing.assert_array_equal(v.data, a2.T)
    np.testing.assert_allclose(
        v.affine, np.array([[-0.5, 0, 0, -3], [0, -0.25, 0, 4], [0, 0, 1, 0], [0, 0, 0, 1]])
    )
    a4 = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    img4 = sitk.GetImageFromArray(a4, isVector=False)
    sitk.WriteImage(img4, str(tmp_path / "b.mha"))
    v4 = load_image(tmp_path / "b.mha")
    np.testing.assert_array_equal(v4.data, a4.transpose(3, 2, 1, 0))
    np.testing.assert_allclose(
        v4.affine, ras_affine(sitk.ReadImage(str(tmp_path / "b.mha"))), atol=1e-12
    )


def test_anatomical_orientation_and_content_dispatch(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16))
    p = tmp_path / "t.mha"
    sitk.WriteImage(img, str(p))
    renamed = tmp_path / "t.bin"
    os.rename(p, renamed)
    v = load_image(renamed)
    assert v.meta["AnatomicalOrientation"] == "RAI" and v.axcodes == ("L", "P", "S")


def _header(**kv):
    base = {
        "ObjectType": "Image",
        "NDims": "3",
        "DimSize": "2 2 2",
        "ElementType": "MET_SHORT",
        "ElementDataFile": "LOCAL",
    }
    base.update(kv)
    keys = [k for k in base if k != "ElementDataFile"] + ["ElementDataFile"]
    return "".join(f"{k} = {base[k]}\n" for k in keys if base[k] is not None).encode()


@pytest.mark.parametrize(
    "kv,data,msg",
    [
        ({}, b"\0" * 10, "truncated voxel data"),
        ({"ElementType": "MET_FOO"}, b"\0" * 16, "unsupported ElementType"),
        ({"DimSize": "2 2"}, b"\0" * 16, "DimSize must be 3"),
        ({"DimSize": "2 -2 2"}, b"\0" * 16, "DimSize"),
        ({"NDims": None}, b"\0" * 16, "missing NDims"),
        ({"CompressedData": "True"}, b"garbage!" * 4, "corrupt compressed voxel data"),
        ({"ElementDataFile": "missing.raw"}, b"", "missing.raw"),
        ({"TransformMatrix": "1 0 0"}, b"\0" * 16, "TransformMatrix"),
        ({"ElementDataFile": None}, b"", "no ElementDataFile"),
    ],
)
def test_corrupt_headers(tmp_path, kv, data, msg):
    p = tmp_path / "bad.mha"
    p.write_bytes(_header(**kv) + data)
    with pytest.raises((voxlm.VolumeFormatError, voxlm.VoxlmIOError), match=msg):
        load_image(p)
