"""voxlm.synth's own writers of real formats, read back by the reference readers:
MetaImage by SimpleITK, DICOM by pydicom and SimpleITK's GDCM series reader, PNG by Pillow,
gzipped CSV by the csv module. Exact equality (integer data, geometry to 1e-6 mm)."""

import gzip
import io

import numpy as np
import pytest

from voxlm.exceptions import DTypeError, ShapeError
from voxlm.synth.writers import (
    lps_to_ras_affine,
    png_bytes,
    stable_uid,
    write_csv,
    write_dicom_series,
    write_mha,
    write_nifti,
)

sitk = pytest.importorskip("SimpleITK")


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.uint16])
def test_mha_reads_identically_in_simpleitk(tmp_path, compress, dtype):
    rng = np.random.default_rng(0)
    a = (rng.random((5, 7, 9)) * 200).astype(dtype)
    spacing, origin = (0.5, 0.75, 3.0), (-10.25, 4.5, -30.0)
    direction = (0, 1, 0, 1, 0, 0, 0, 0, -1)
    f = tmp_path / "x.mha"
    write_mha(f, a, spacing, origin, direction, compress=compress)
    img = sitk.ReadImage(str(f))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), a)
    assert sitk.GetArrayFromImage(img).dtype == a.dtype
    np.testing.assert_allclose(img.GetSpacing(), spacing, atol=1e-9)
    np.testing.assert_allclose(img.GetOrigin(), origin, atol=1e-9)
    np.testing.assert_allclose(img.GetDirection(), direction, atol=1e-9)
    head = f.read_bytes()[:600].decode("latin-1")
    for key in (
        "ObjectType = Image",
        "NDims = 3",
        "DimSize = 9 7 5",
        "ElementDataFile = LOCAL",
        "TransformMatrix =",
        "ElementSpacing =",
        "Offset =",
    ):
        assert key in head


def test_mha_refuses_bad_input(tmp_path):
    with pytest.raises(ShapeError, match="3-d"):
        write_mha(tmp_path / "a.mha", np.zeros((3, 3)), (1, 1, 1))
    with pytest.raises(DTypeError, match="unsupported dtype"):
        write_mha(tmp_path / "a.mha", np.zeros((2, 2, 2), dtype=np.complex64), (1, 1, 1))


def test_nifti_of_an_itk_grid_has_simpleitks_geometry(tmp_path):
    """lps_to_ras_affine: the NIfTI written for an ITK image's grid (masks on the T2W grid) is
    read by SimpleITK with the image's origin, spacing and direction."""
    a = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)  # [D, H, W]
    spacing, origin = (0.6, 0.7, 3.0), (-20.0, 11.0, 5.0)
    write_mha(tmp_path / "img.mha", a, spacing, origin)
    write_nifti(
        tmp_path / "mask.nii.gz",
        np.ascontiguousarray(a.transpose(2, 1, 0)),
        lps_to_ras_affine(spacing, origin),
    )
    i, m = sitk.ReadImage(str(tmp_path / "img.mha")), sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(m), a)
    np.testing.assert_allclose(m.GetOrigin(), i.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(m.GetSpacing(), i.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(m.GetDirection(), i.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_dicom_series_reads_in_pydicom_and_simpleitk(tmp_path, modality):
    pydicom = pytest.importorskip("pydicom")
    rng = np.random.default_rng(1)
    stored = rng.integers(-1000, 3000, size=(4, 6, 5)).astype(np.int16)  # [D, H, W]
    spacing, origin = (0.8, 0.9, 2.5), (-100.0, -120.0, 40.0)
    slope, intercept = (1.0, -1024.0) if modality == "CT" else (1.0, 0.0)
    files = write_dicom_series(
        tmp_path / "s",
        stored,
        spacing,
        origin,
        modality,
        slope,
        intercept,
        patient_id="P1",
        series_description="desc",
        uid_seed="t",
    )
    assert len(files) == 4
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.SOPClassUID == (
            "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
        )
        assert ds.Modality == modality and ds.PatientID == "P1" and ds.SeriesDescription == "desc"
        assert (ds.Rows, ds.Columns) == (6, 5)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [spacing[1], spacing[0]])
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], [origin[0], origin[1], origin[2] + k * 2.5]
        )
        np.testing.assert_allclose(
            [float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0]
        )
        assert float(ds.SliceThickness) == 2.5 and int(ds.InstanceNumber) == k + 1
        assert float(ds.RescaleSlope) == slope and float(ds.RescaleIntercept) == intercept
        np.testing.assert_array_equal(ds.pixel_array, stored[k])
        if modality == "CT":
            np.testing.assert_array_equal(
                pydicom.pixels.apply_rescale(ds.pixel_array, ds), stored[k] * slope + intercept
            )
        assert len(ds.SeriesInstanceUID) <= 64 and ds.SeriesInstanceUID.startswith("2.25.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    img = reader.Execute()
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(img), stored.astype(np.float64) * slope + intercept
    )
    np.testing.assert_allclose(img.GetSpacing(), spacing, atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), origin, atol=1e-6)


def test_uids_are_deterministic_and_valid():
    a, b = stable_uid("x", 1), stable_uid("x", 1)
    assert a == b != stable_uid("x", 2)
    assert len(a) <= 64 and all(
        p.isdigit() and (p == "0" or not p.startswith("0")) for p in a.split(".")
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_reads_identically_in_pillow(dtype):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    a = rng.integers(0, np.iinfo(dtype).max, size=(13, 17), endpoint=True).astype(dtype)
    im = Image.open(io.BytesIO(png_bytes(a)))
    im.load()
    assert im.size == (17, 13)
    np.testing.assert_array_equal(np.asarray(im).astype(dtype), a)


def test_png_refuses_bad_input():
    with pytest.raises(ShapeError, match="2-d"):
        png_bytes(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DTypeError, match="uint8 or uint16"):
        png_bytes(np.zeros((2, 2), np.float32))


def test_gzip_csv_is_deterministic(tmp_path):
    write_csv(tmp_path / "a.csv.gz", ["x", "y"], [[1, "a,b"], [2, ""]])
    first = (tmp_path / "a.csv.gz").read_bytes()
    write_csv(tmp_path / "a.csv.gz", ["x", "y"], [[1, "a,b"], [2, ""]])
    assert (tmp_path / "a.csv.gz").read_bytes() == first
    assert gzip.decompress(first).decode() == 'x,y\n1,"a,b"\n2,\n'


@pytest.mark.parametrize("gen", ["chest_ct", "chest_xray", "prostate_mri"])
def test_generators_refuse_sizes_before_writing(tmp_path, gen):
    """A case count or grid that cannot be written is a ConfigError naming it, before anything is
    allocated or written (was a numpy MemoryError after minutes for n = 10**12)."""
    from voxlm import synth
    from voxlm.exceptions import ConfigError

    fn = getattr(synth, gen)
    out = tmp_path / "d"
    with pytest.raises(ConfigError, match=r"need about .* GB on disk"):
        fn(out, 10**12)
    for bad in (0, 2.5, True, "3"):
        with pytest.raises(ConfigError, match=r"n: expected an integer >= 1"):
            fn(out, bad)
    for shape in ((4, 64, 64), (64, 64), "abc", (8.5, 8, 8)):
        with pytest.raises(ConfigError, match=r"shape: expected three integers >= 8"):
            fn(out, 2, shape=shape)
    assert not out.exists()
