"""DICOM through ``voxlm.load_image`` against pydicom and SimpleITK.

* every test file shipped in pydicom's wheel whose transfer syntax voxlm decodes (implicit and
  explicit VR little endian, big endian, deflate, RLE): values == pydicom's ``pixel_array``
  through ``apply_modality_lut`` (exact, float64); the others: a VolumeFormatError naming the
  transfer syntax (or the unsupported pixel layout);
* series written with pydicom (oblique, rescaled, shuffled file names, each transfer syntax) and
  the real series in pydicom's ``dicomdirtests``: data == SimpleITK's ``ImageSeriesReader``
  (exact) and the RAS affine == SimpleITK's LPS origin/spacing/direction flipped: 1e-9 for
  axis-aligned series; 1e-5 for oblique ones, whose 6-decimal direction cosines are not exactly
  orthonormal (voxlm uses them as stored, ITK re-orthonormalises the normal);
* folders with several series, non-uniform gaps, mixed orientation, corrupt files: errors that
  name the file and list what was found.
"""

import glob
import os
import re
import shutil
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

import voxlm
from voxlm.volume import load_image

DATA = os.path.dirname(get_testdata_file("CT_small.dcm"))
DECODED = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.5",
}
# files whose pixel layout voxlm refuses (with a VolumeFormatError naming it)
REFUSED = {
    "liver_1frame.dcm": "BitsAllocated 1",
    "liver_expb_1frame.dcm": "BitsAllocated 1",
    "SC_rgb_rle_32bit.dcm": "pixel data",
    "SC_rgb_rle_32bit_2frame.dcm": "pixel data",
    "rtdose_rle.dcm": "pixel data",
    "rtdose_rle_1frame.dcm": "pixel data",
    "SC_ybr_full_422_uncompressed.dcm": "pixel data",
    "SC_rgb_jpeg.dcm": "DICOM",
    "rtdose_expb.dcm": "32-bit",
    "rtdose_expb_1frame.dcm": "32-bit",
}


def _shipped():
    out = []
    for f in sorted(glob.glob(os.path.join(DATA, "*.dcm"))):
        try:
            ds = pydicom.dcmread(f)
            ts = str(ds.file_meta.TransferSyntaxUID)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.pixel_array  # noqa: B018  (pydicom can decode it: a reference exists)
        except Exception:
            continue
        out.append((f, ts))
    return out


SHIPPED = _shipped()


def ras_affine(img: sitk.Image) -> np.ndarray:
    d = np.array(img.GetDirection()).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d @ np.diag(img.GetSpacing())
    a[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a


def test_shipped_files_found():
    assert len(SHIPPED) > 40


@pytest.mark.parametrize("path,ts", SHIPPED, ids=[os.path.basename(p) for p, _ in SHIPPED])
def test_every_shipped_file_vs_pydicom(path, ts):
    name = os.path.basename(path)
    if ts not in DECODED and name not in REFUSED:
        with pytest.raises(
            voxlm.VolumeFormatError,
            match=re.escape(f"{name}: unsupported DICOM transfer syntax {ts}"),
        ):
            load_image(path)
        return
    if name in REFUSED or (ts not in DECODED and name in REFUSED):
        with pytest.raises(voxlm.VolumeFormatError, match=re.escape(name)):
            load_image(path)
        return
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) == 1:
        ref = ref[None]
    v = load_image(path, np.float64)
    ours = np.moveaxis(v.data, [0, 1, 2], [2, 1, 0])  # (x=col, y=row, z) -> (frame, row, col)
    if "GridFrameOffsetVector" in ds and list(ds.GridFrameOffsetVector) != sorted(
        ds.GridFrameOffsetVector
    ):
        ours = ours[np.argsort(np.argsort(ds.GridFrameOffsetVector))]
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)
    assert v.meta["format"] == "dicom" and v.meta["TransferSyntaxUID"] == ts
    assert load_image(path).data.dtype == np.float32


def _template():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds


def write_series(
    folder,
    n=6,
    orient=(1, 0, 0, 0, 1, 0),
    gap=2.5,
    syntax=ExplicitVRLittleEndian,
    series_uid=None,
    positions=None,
    seed=0,
    slope=1.0,
    intercept=-1024.0,
):
    """A CT series written by pydicom: `n` slices of 128x128 int16, file names shuffled."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    uid = series_uid or generate_uid()
    r, c = np.array(orient[:3], float), np.array(orient[3:], float)
    nrm = np.cross(r, c)
    origin = np.array([-80.0, -95.5, 12.25])
    pos = positions if positions is not None else [k * gap for k in range(n)]
    order = rng.permutation(len(pos))
    for k, d in enumerate(pos):
        ds = _template()
        arr = rng.integers(0, 3000, (128, 128)).astype(np.int16)
        ds.PixelRepresentation = 1
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelData = arr.tobytes()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orient]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + d * nrm]
        ds.PixelSpacing = ["0.703125", "0.75"]
        ds.RescaleSlope = f"{slope}"
        ds.RescaleIntercept = f"{intercept}"
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == RLELossless:
            ds.compress(RLELossless, arr)
        ds.save_as(
            os.path.join(folder, f"IM{order[k]:04d}"),
            enforce_file_format=True,
            implicit_vr=syntax == ImplicitVRLittleEndian,
            little_endian=True,
        )
    return uid


def sitk_series(folder, uid=None):
    reader = sitk.ImageSeriesReader()
    names = (
        reader.GetGDCMSeriesFileNames(str(folder), uid)
        if uid
        else reader.GetGDCMSeriesFileNames(str(folder))
    )
    reader.SetFileNames(names)
    return reader.Execute()


OBLIQUE = (0.866025, 0.5, 0.0, -0.469846, 0.813798, 0.342020)


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless],
    ids=["explicit", "implicit", "deflate", "rle"],
)
@pytest.mark.parametrize(
    "orient",
    [(1, 0, 0, 0, 1, 0), OBLIQUE, (1, 0, 0, 0, 0, -1)],
    ids=["axial", "oblique", "coronal"],
)
def test_series_vs_simpleitk(tmp_path, syntax, orient):
    write_series(tmp_path / "s", orient=orient, syntax=syntax, slope=1.0, intercept=-1024.0)
    ref = sitk_series(tmp_path / "s")
    v = load_image(tmp_path / "s", np.float64)
    np.testing.assert_array_equal(
        v.data, sitk.GetArrayFromImage(ref).transpose(2, 1, 0).astype(np.float64)
    )
    np.testing.assert_allclose(
        v.affine, ras_affine(ref), rtol=0, atol=1e-5 if orient == OBLIQUE else 1e-9
    )
    assert v.meta["RescaleIntercept"] == -1024.0 and len(v.meta["files"]) == 6


def test_series_vs_pydicom_stacking_with_fractional_slope(tmp_path):
    write_series(tmp_path / "s", slope=0.5, intercept=-1000.25, gap=-1.25)
    files = [pydicom.dcmread(p) for p in glob.glob(str(tmp_path / "s" / "*"))]
    files.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    ref = np.stack([apply_modality_lut(d.pixel_array, d) for d in files])  # (z, row, col)
    v = load_image(tmp_path / "s", np.float64)
    np.testing.assert_array_equal(v.data.transpose(2, 1, 0), ref)
    assert v.spacing == pytest.approx((0.75, 0.703125, 1.25))


REFUSALS = ("non-uniform slice spacing", "same position", "ImageOrientationPatient differs")


@pytest.mark.parametrize("sub", ["77654033/CT2", "98892003/MR700", "98892003/MR2", "98892001/CT5N"])
def test_real_series_vs_simpleitk(sub):
    folder = os.path.join(DATA, "dicomdirtests", sub)
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    assert uids
    if len(uids) > 1:
        with pytest.raises(voxlm.VolumeFormatError, match=f"{len(uids)} DICOM series"):
            load_image(folder)
    compared = 0
    for uid in uids:
        ref = sitk_series(folder, uid)
        try:
            v = load_image(folder, np.float64, series_uid=uid)
        except voxlm.VolumeFormatError as e:
            # voxlm refuses what ITK stacks silently (radial or gapped localisers): named
            assert any(r in str(e) for r in REFUSALS), str(e)
            continue
        np.testing.assert_array_equal(
            v.data, sitk.GetArrayFromImage(ref).transpose(2, 1, 0).astype(np.float64)
        )
        np.testing.assert_allclose(v.affine, ras_affine(ref), rtol=0, atol=1e-5)
        compared += 1
    if sub == "77654033/CT2":  # a 4-slice scout with a 202.5 mm jump: refused, gaps listed
        with pytest.raises(
            voxlm.VolumeFormatError, match=r"202\.5000 mm between .*17106 and .*17136"
        ):
            load_image(folder)


def test_several_series_need_a_choice(tmp_path):
    a = write_series(tmp_path / "d", n=3, seed=1)
    b = write_series(tmp_path / "d2", n=4, seed=2)
    for f in os.listdir(tmp_path / "d2"):
        shutil.move(str(tmp_path / "d2" / f), str(tmp_path / "d" / ("B" + f)))
    with pytest.raises(voxlm.VolumeFormatError, match="2 DICOM series") as e:
        load_image(tmp_path / "d")
    assert a in str(e.value) and b in str(e.value) and "series_uid" in str(e.value)
    v = load_image(tmp_path / "d", series_uid=b)
    assert v.shape == (128, 128, 4)
    ref = sitk_series(tmp_path / "d", b)
    np.testing.assert_array_equal(
        v.data, sitk.GetArrayFromImage(ref).transpose(2, 1, 0).astype(np.float32)
    )
    with pytest.raises(voxlm.VolumeFormatError, match='no DICOM series "1.2.3"'):
        load_image(tmp_path / "d", series_uid="1.2.3")


def test_non_uniform_gaps_are_listed(tmp_path):
    write_series(tmp_path / "s", positions=[0, 2.5, 5.0, 10.0, 12.5])
    with pytest.raises(
        voxlm.VolumeFormatError, match=r"non-uniform slice spacing .*5\.0000 mm between"
    ):
        load_image(tmp_path / "s")


def test_duplicate_position_and_mixed_orientation(tmp_path):
    write_series(tmp_path / "s", positions=[0, 2.5, 2.5])
    with pytest.raises(voxlm.VolumeFormatError, match="same position"):
        load_image(tmp_path / "s")
    uid = write_series(tmp_path / "m", n=3)
    write_series(tmp_path / "m2", n=1, orient=OBLIQUE, series_uid=uid, positions=[20.0])
    shutil.move(str(tmp_path / "m2" / "IM0000"), str(tmp_path / "m" / "ZZ"))
    with pytest.raises(voxlm.VolumeFormatError, match="ZZ: ImageOrientationPatient differs"):
        load_image(tmp_path / "m")


def test_corrupt_and_empty(tmp_path):
    write_series(tmp_path / "s", n=2)
    p = tmp_path / "s" / sorted(os.listdir(tmp_path / "s"))[0]
    p.write_bytes(p.read_bytes()[:600])
    with pytest.raises(voxlm.VolumeFormatError, match=p.name):
        load_image(tmp_path / "s")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("x")
    with pytest.raises(voxlm.VolumeFormatError, match="no DICOM files"):
        load_image(tmp_path / "e")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    with pytest.raises(voxlm.VolumeFormatError, match="bad.dcm"):
        load_image(bad)
