"""NIfTI I/O against nibabel: every NIfTI file shipped in nibabel's wheel, and files nibabel writes
covering datatypes, endianness, NIfTI-2, pairs, scaling, qform/sform/fallback affines and header
extensions. Data are compared exactly (float64) — voxlm applies nibabel's float64 scaling —
and affines within 1e-12 (nibabel builds the qform in 80-bit long double, voxlm in float64)."""

import glob
import gzip
import os
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

import voxlm
from voxlm.volume import Volume, aff2axcodes, load_volume, save_volume

NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
SHIPPED = sorted(
    glob.glob(os.path.join(NIB_DATA, "*.nii*")) + glob.glob(os.path.join(NIB_DATA, "*.hdr"))
)


def nib_load(path):
    img = nib.load(path)
    if not hasattr(img, "affine"):  # CIFTI-2: read the same file as plain NIfTI-2
        img = nib.Nifti2Image.from_filename(path)
    return img


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_every_shipped_file(path):
    try:
        ref = nib_load(path)
        ref_data = ref.get_fdata()
    except Exception:  # nibabel cannot read it either (e.g. a .hdr whose .img is not shipped)
        with pytest.raises((voxlm.VolumeFormatError, voxlm.VoxlmIOError)):
            load_volume(path)
        return
    v = load_volume(path, np.float64)
    assert v.data.shape == ref_data.shape
    np.testing.assert_array_equal(v.data, ref_data)
    np.testing.assert_allclose(v.affine, ref.affine, rtol=0, atol=1e-12)
    assert v.axcodes == nib.aff2axcodes(ref.affine)
    v32 = load_volume(path)
    assert v32.data.dtype == np.float32
    np.testing.assert_array_equal(v32.data, ref_data.astype(np.float32))


def oblique_affine(rng):
    a = np.eye(4)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    a[:3, :3] = q @ np.diag(rng.uniform(0.5, 3.0, 3))
    a[:3, 3] = rng.normal(0, 50, 3)
    return a


DTYPES = [
    np.uint8,
    np.int8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.float32,
    np.float64,
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("endian", ["<", ">"])
def test_datatypes_and_endianness(tmp_path, dtype, endian):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo, hi = (info.min, info.max) if info else (-1e6, 1e6)
    data = rng.uniform(max(lo, -1e6), min(hi, 1e6), (5, 6, 7)).astype(dtype)
    img = nib.Nifti1Image(data, oblique_affine(rng), dtype=dtype)
    hdr = img.header.as_byteswapped(endian) if endian == ">" else img.header
    path = tmp_path / "x.nii"
    nib.Nifti1Image(data, img.affine, hdr).to_filename(path)
    ref = nib.load(path)
    v = load_volume(path, np.float64)
    np.testing.assert_array_equal(v.data, ref.get_fdata())
    np.testing.assert_allclose(v.affine, ref.affine, rtol=0, atol=1e-12)
    assert v.header["little_endian"] == (endian == "<")


@pytest.mark.parametrize(
    "kind", ["nifti2", "pair", "pair_gz", "scaled", "qform_only", "no_affine", "4d", "ext", "gz"]
)
def test_header_variants(tmp_path, kind):
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 3000, (6, 5, 4), dtype=np.int16)
    aff = oblique_affine(rng)
    if kind == "nifti2":
        img, name = nib.Nifti2Image(data.astype(np.float32), aff), "x.nii"
    elif kind in ("pair", "pair_gz"):
        img, name = nib.Nifti1Pair(data, aff), "x.img" + (".gz" if kind == "pair_gz" else "")
    elif kind == "4d":
        img, name = (
            nib.Nifti1Image(rng.normal(size=(4, 3, 5, 2)).astype(np.float32), aff),
            "x.nii.gz",
        )
    else:
        img, name = nib.Nifti1Image(data, aff), "x.nii.gz" if kind == "gz" else "x.nii"
    if kind == "scaled":
        img.header.set_slope_inter(0.25, -1024.0)
    if kind == "qform_only":
        img.header.set_sform(None, code=0)
        img.header.set_qform(aff, code=1)
    if kind == "no_affine":
        img.header.set_sform(None, code=0)
        img.header.set_qform(None, code=0)
    if kind == "ext":
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"voxlm comment " * 5))
    path = tmp_path / name
    img.to_filename(path)
    ref = nib.load(path)
    v = load_volume(path, np.float64)
    np.testing.assert_array_equal(v.data, ref.get_fdata())
    np.testing.assert_allclose(v.affine, ref.affine, rtol=0, atol=1e-12)
    if kind == "scaled":
        assert v.header["scl_slope"] == 0.25


@pytest.mark.parametrize("name", ["w.nii", "w.nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8, np.float64])
def test_files_voxlm_writes_load_in_nibabel(tmp_path, name, dtype):
    rng = np.random.default_rng(2)
    data = (rng.normal(size=(7, 5, 3)) * 100).astype(dtype)
    aff = oblique_affine(rng)
    save_volume(Volume(data, aff), tmp_path / name)
    ref = nib.load(tmp_path / name)
    np.testing.assert_array_equal(np.asanyarray(ref.dataobj), data)
    np.testing.assert_allclose(
        ref.affine, aff.astype(np.float32), rtol=0, atol=1e-12
    )  # sform is float32
    back = load_volume(tmp_path / name, np.float64)
    np.testing.assert_array_equal(back.data, data.astype(np.float64))
    # non-contiguous input is written in NIfTI (Fortran) order all the same
    view = np.ascontiguousarray(data.transpose(2, 1, 0)).transpose(2, 1, 0)
    save_volume(view, tmp_path / ("v_" + name), aff)
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / ("v_" + name)).dataobj), data)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_gzip_levels_read_back_and_compress_like_nibabel(tmp_path, level):
    """Every zlib level gives one gzip member that Python's gzip and nibabel read back exactly;
    from level 1 the file is no larger than 1.05x what nibabel writes at the same level (zlib's
    dynamic Huffman blocks), on a CT-like int16 volume (body + noise: mostly literals). zlib-rs's
    level 1 (fixed Huffman codes) wrote 1.4x nibabel's size on such data."""
    rng = np.random.default_rng(4)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 64, 64)], indexing="ij")
    body = np.where(xx**2 + (yy * 1.3) ** 2 < 0.8, 40, -1000)
    data = (body + rng.normal(0, 20, body.shape)).astype(np.int16).transpose(2, 1, 0)
    aff = np.diag([0.7, 0.7, 1.25, 1.0])
    ours = tmp_path / "ours.nii.gz"
    save_volume(Volume(np.ascontiguousarray(data), aff), ours, compress_level=level)
    raw = gzip.decompress(ours.read_bytes())  # the file's whole decompressed content
    member = zlib.decompressobj(wbits=31)  # one gzip member, and nothing after it
    assert member.decompress(ours.read_bytes()) == raw
    assert member.eof and member.unused_data == b""
    np.testing.assert_array_equal(np.asanyarray(nib.load(ours).dataobj), data)
    img = nib.Nifti1Image(data, aff)
    theirs = tmp_path / "theirs.nii"
    nib.save(img, theirs)
    assert len(raw) == theirs.stat().st_size  # the same 352-byte header + voxels
    if level >= 1:
        ref = gzip.compress(theirs.read_bytes(), compresslevel=level)
        assert ours.stat().st_size <= 1.05 * len(ref), (ours.stat().st_size, len(ref))


@pytest.mark.parametrize("name", ["u.nii", "u.nii.gz"])
def test_unit_scaling_leaves_values_as_stored(tmp_path, name):
    """scl_slope 1 and scl_inter 0 are nibabel's no-scaling short-cut (`apply_read_scaling`):
    float values come back as stored, -0.0 included (`x * 1 + 0` would give +0.0)."""
    data = np.array([-0.0, 0.0, -1.5, np.inf, -np.inf, np.nan, 3.0, -0.0], np.float32)
    img = nib.Nifti1Image(data.reshape(2, 2, 2), np.eye(4))
    plain = tmp_path / "plain.nii"
    img.to_filename(plain)
    raw = bytearray(plain.read_bytes())
    struct.pack_into("<ff", raw, 112, 1.0, 0.0)  # scl_slope, scl_inter
    path = tmp_path / name
    path.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    ref = nib.load(path)
    assert (ref.dataobj.slope, ref.dataobj.inter) == (1.0, 0.0)  # nibabel keeps them here
    for dtype in (np.float32, np.float64):
        want = ref.get_fdata(dtype=dtype)
        got = load_volume(path, dtype).data
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    assert np.signbit(load_volume(path).data.reshape(-1, order="F")[[0, 7]]).all()


@pytest.mark.parametrize("bad", [-1, 10, 1.5, "1", True])
def test_bad_compress_level(tmp_path, bad):
    with pytest.raises(voxlm.ConfigError, match="compress_level"):
        save_volume(np.zeros((2, 2, 2), np.float32), tmp_path / "x.nii.gz", compress_level=bad)
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.parametrize("layout", ["two_members", "many_members", "small_tail", "large_tail"])
def test_gzip_layouts(tmp_path, layout):
    """Single-member streams go through libdeflate; several members (as `cat a.gz b.gz` makes)
    and streams with more bytes after the voxels than the data take the streaming decoder.
    Every layout loads as nibabel reads it."""
    rng = np.random.default_rng(3)
    data = rng.integers(-1000, 1000, (37, 23, 11)).astype(np.int16)
    plain = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.0, 1.0])), plain)
    raw = plain.read_bytes()
    cut = len(raw) // 3
    if layout == "two_members":
        gz = gzip.compress(raw[:cut]) + gzip.compress(raw[cut:])
    elif layout == "many_members":
        gz = b"".join(gzip.compress(raw[i : i + 997]) for i in range(0, len(raw), 997))
    elif layout == "small_tail":  # bytes past the voxels (nibabel ignores them)
        gz = gzip.compress(raw + bytes(100))
    else:
        gz = gzip.compress(raw + bytes(3 << 20))
    path = tmp_path / "v.nii.gz"
    path.write_bytes(gz)
    v = load_volume(path, np.float64)
    np.testing.assert_array_equal(v.data, nib.load(path).get_fdata())
    np.testing.assert_array_equal(v.data, data)


def test_spacing_and_axcodes():
    aff = np.diag([-1.5, 2.0, 3.0, 1.0])
    v = Volume(np.zeros((2, 2, 2), np.float32), aff)
    assert v.spacing == (1.5, 2.0, 3.0)
    assert v.axcodes == ("L", "A", "S") == nib.aff2axcodes(aff)
    rng = np.random.default_rng(3)
    for _ in range(20):
        a = oblique_affine(rng)
        assert aff2axcodes(a) == nib.aff2axcodes(a)


def test_bad_files(tmp_path):
    good = tmp_path / "g.nii"
    nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_filename(good)
    raw = good.read_bytes()
    (tmp_path / "trunc.nii").write_bytes(raw[:-10])
    with pytest.raises(voxlm.VolumeFormatError, match="truncated"):
        load_volume(tmp_path / "trunc.nii")
    (tmp_path / "trunc.nii.gz").write_bytes(gzip.compress(raw)[:-30])
    with pytest.raises(voxlm.VolumeFormatError):
        load_volume(tmp_path / "trunc.nii.gz")
    bad = bytearray(gzip.compress(raw))
    bad[40:60] = b"\x00" * 20
    (tmp_path / "corrupt.nii.gz").write_bytes(bytes(bad))
    with pytest.raises(voxlm.VolumeFormatError):
        load_volume(tmp_path / "corrupt.nii.gz")
    magic = bytearray(raw)
    magic[344:348] = b"xyz\0"
    (tmp_path / "magic.nii").write_bytes(bytes(magic))
    with pytest.raises(voxlm.VolumeFormatError, match="magic"):
        load_volume(tmp_path / "magic.nii")
    for dims, frag in [
        ((3, 0, 4, 4), "must be positive"),
        ((3, -2, 4, 4), "must be positive"),
        ((3, 32767, 32767, 32767), "truncated"),
    ]:
        h = bytearray(raw)
        h[40:48] = np.array(dims, dtype="<i2").tobytes()
        (tmp_path / "dims.nii").write_bytes(bytes(h))
        with pytest.raises(voxlm.VolumeFormatError, match=frag):
            load_volume(tmp_path / "dims.nii")
    h = bytearray(raw)
    h[40:48] = np.array((3, 32767, 32767, 32767), dtype="<i2").tobytes()
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(bytes(h)))
    with pytest.raises(voxlm.VolumeFormatError, match="gzip stream holds"):
        load_volume(tmp_path / "huge.nii.gz")  # refused before inflating anything
    (tmp_path / "short.nii").write_bytes(b"\x5c\x01\x00\x00" + b"\x00" * 20)
    with pytest.raises(voxlm.VolumeFormatError, match="too short"):
        load_volume(tmp_path / "short.nii")
    with pytest.raises(voxlm.VoxlmIOError) as e:
        load_volume(tmp_path / "missing.nii")
    assert isinstance(e.value, OSError)
    with pytest.raises(voxlm.DTypeError):
        load_volume(good, np.int16)


def test_more_bad_files_name_the_file(tmp_path):
    good = tmp_path / "g.nii"
    nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_filename(good)
    raw = bytearray(good.read_bytes())
    nan = bytearray(raw)
    nan[280:284] = np.array([np.nan], dtype="<f4").tobytes()
    (tmp_path / "nan.nii").write_bytes(bytes(nan))
    with pytest.raises(voxlm.VolumeFormatError, match=r"nan\.nii: the sform affine has NaN"):
        load_volume(tmp_path / "nan.nii")
    off = bytearray(raw)
    off[108:112] = np.array([1e6], dtype="<f4").tobytes()
    (tmp_path / "off.nii").write_bytes(bytes(off))
    with pytest.raises(voxlm.VolumeFormatError, match=r"off\.nii: truncated"):
        load_volume(tmp_path / "off.nii")
    cplx = bytearray(raw)
    cplx[70:72] = np.array([32], dtype="<i2").tobytes()
    (tmp_path / "c.nii").write_bytes(bytes(cplx))
    with pytest.raises(voxlm.VolumeFormatError, match=r"c\.nii: datatype 32 \(complex\)"):
        load_volume(tmp_path / "c.nii")
    nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)).to_filename(tmp_path / "4d.nii")
    from voxlm import transforms as vt
    from voxlm.data import load_batch

    with pytest.raises(voxlm.VolumeFormatError, match=r"4d\.nii: expected a 3D volume"):
        load_batch([tmp_path / "4d.nii"], vt.Compose([vt.Resize((2, 2, 2))]))
