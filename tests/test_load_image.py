"""``voxlm.load_image``: dispatch by content (not by file name), NIfTI through the Rust reader
(== nibabel), ``.npy`` through numpy's format (M3D-Cap's float32 [1, 32, 256, 256])."""

import os

import nibabel as nib
import numpy as np
import pytest

import voxlm
from voxlm.volume import load_image, sniff_format


def test_nifti_equals_nibabel_whatever_the_name(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 2000, (5, 6, 7)).astype(np.int16)
    aff = np.diag([0.7, 0.8, 2.5, 1.0])
    aff[:3, 3] = [-10, 20, 30]
    p = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), p)
    ref = nib.load(p)
    ref_data = ref.get_fdata()
    renamed = tmp_path / "scan.bin"
    os.rename(p, renamed)
    assert sniff_format(renamed) == "nifti"
    v = load_image(renamed, np.float64)
    np.testing.assert_array_equal(v.data, ref_data)
    np.testing.assert_allclose(v.affine, ref.affine, atol=1e-12)
    assert v.meta["format"] == "nifti" and v.meta is v.header
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(data, aff), plain)
    assert sniff_format(plain) == "nifti"
    np.testing.assert_array_equal(load_image(plain).data, ref_data.astype(np.float32))


def test_npy_m3d_layout(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.random((1, 32, 256, 256), dtype=np.float32)
    p = tmp_path / "Axial_C__portal_venous_phase.npy"
    np.save(p, arr)
    v = voxlm.load_image(p)
    assert v.data.shape == (32, 256, 256) and v.data.dtype == np.float32
    np.testing.assert_array_equal(v.data, arr[0])
    np.testing.assert_array_equal(v.affine, np.eye(4))
    assert v.meta == {"format": "npy", "original_shape": [1, 32, 256, 256], "channels_last": False}


def test_npy_channels_and_dtypes(tmp_path):
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)
    np.save(tmp_path / "c.npy", arr)
    v = load_image(tmp_path / "c.npy", np.float64)
    assert v.data.shape == (3, 4, 5, 2) and v.meta["channels_last"]
    np.testing.assert_array_equal(v.data, np.moveaxis(arr, 0, -1).astype(np.float64))
    np.save(tmp_path / "d.npy", arr[0, 0])
    assert load_image(tmp_path / "d.npy").shape == (4, 5)
    np.save(tmp_path / "e.npy", np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(voxlm.VolumeFormatError, match="e.npy"):
        load_image(tmp_path / "e.npy")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(voxlm.VolumeFormatError, match="not numeric"):
        load_image(tmp_path / "s.npy")


def test_corrupt_npy_names_file(tmp_path):
    p = tmp_path / "broken.npy"
    np.save(p, np.zeros((4, 4, 4), np.float32))
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(voxlm.VolumeFormatError, match="broken.npy"):
        load_image(p)


@pytest.mark.parametrize(
    "head,fmt",
    [
        (b"\x00" * 128 + b"DICM" + b"\x00" * 16, "dicom"),
        (b"ObjectType = Image\nNDims = 3\n", "metaimage"),
        (b"NDims = 3\n", "metaimage"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 16, "png"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 16, "jpeg"),
    ],
)
def test_sniffing(tmp_path, head, fmt):
    p = tmp_path / "file.dat"
    p.write_bytes(head)
    assert sniff_format(p) == fmt
    assert sniff_format(tmp_path) == "dicom"  # a folder is a DICOM series


def test_unknown_and_missing(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello world, not an image")
    with pytest.raises(voxlm.VolumeFormatError, match="notes.txt: unknown image format"):
        load_image(p)
    with pytest.raises(voxlm.VoxlmIOError, match="missing.nii"):
        load_image(tmp_path / "missing.nii")
