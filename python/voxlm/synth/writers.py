"""Small writers of the real file formats the synthetic datasets are stored in.

Each is a plain-Python transcription of the format's public specification, kept minimal:

* :func:`write_mha` — MetaImage (``.mha``, header + ``ElementDataFile = LOCAL`` data, optional
  zlib compression), as ITK/SimpleITK write it for PI-CAI.
* :func:`write_dicom_series` — one DICOM Part 10 file per slice, explicit VR little endian,
  CT Image Storage or MR Image Storage, with the geometry tags readers need.
* :func:`write_png` — 8- or 16-bit greyscale PNG (zlib, filter type 0 per row).
* :func:`write_nifti` — NIfTI-1 through :func:`voxlm.save_volume` (the Rust writer).
* :func:`atomic_dir` — build a dataset in a temporary sibling folder, then rename it into place,
  so that two processes generating the same dataset never see a half-written one.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import os
import pathlib
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

PathLike = str | os.PathLike[str]

# ------------------------------------------------------------------------------------------
# folders and tables


def check_size(
    what: str, n: Any, shape: Any, out: PathLike, bytes_per_voxel: float, volumes: int = 1
) -> tuple[int, tuple[int, int, int]]:
    """``(n, shape)`` checked: ``n`` an integer >= 1, ``shape`` three integers >= 8, and the
    dataset's estimated size on disk (``n * volumes * prod(shape) * bytes_per_voxel``, about what
    the compressed files take) within the free space of ``out``'s file system; otherwise a
    ``ConfigError`` naming what was given (not a MemoryError or a full disk half-way)."""
    from ..exceptions import ConfigError

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{what} n: expected an integer >= 1, got {n!r}")
    try:
        dims = tuple(int(d) for d in shape)
        ok = len(dims) == 3 and all(d >= 8 and d == s for d, s in zip(dims, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(shape, (str, bytes)):
        raise ConfigError(f"{what} shape: expected three integers >= 8, got {shape!r}")
    need = float(n) * volumes * float(np.prod(dims, dtype=np.float64)) * bytes_per_voxel
    probe = pathlib.Path(out).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ConfigError(
            f"{what}: {n} cases of shape {dims} need about {need / 1e9:.3g} GB on disk, "
            f"{probe} has {free / 1e9:.3g} GB free"
        )
    return int(n), dims  # type: ignore[return-value]


@contextlib.contextmanager
def atomic_dir(final: PathLike) -> Iterator[pathlib.Path]:
    """Yield a fresh temporary folder next to ``final``; on success rename it to ``final``.

    If ``final`` appeared meanwhile (another process won the race), the temporary copy is
    removed and the existing folder is kept. On error the temporary folder is removed."""
    final = pathlib.Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        if final.is_dir() and any(final.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)  # someone else finished first
        else:
            if final.is_dir():
                final.rmdir()
            os.rename(tmp, final)


def write_csv(path: PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV file (``.csv.gz`` is gzip-compressed, deterministic: no timestamp in the header)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)


def stable_uid(*parts: Any) -> str:
    """A DICOM UID under the UUID-derived root ``2.25.`` from a hash of ``parts`` (deterministic,
    <= 64 characters)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(h[:16], "big"))


# ------------------------------------------------------------------------------------------
# NIfTI


def write_nifti(path: PathLike, data_xyz: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI-1 (gzip by ``.gz``) with ``data_xyz`` in nibabel's axis order and its RAS affine."""
    from ..volume import Volume, save_volume

    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_volume(Volume(np.ascontiguousarray(data_xyz), np.asarray(affine, dtype=np.float64)), path)


# ------------------------------------------------------------------------------------------
# MetaImage

_MET_TYPES = {
    np.dtype(np.int8): "MET_CHAR",
    np.dtype(np.uint8): "MET_UCHAR",
    np.dtype(np.int16): "MET_SHORT",
    np.dtype(np.uint16): "MET_USHORT",
    np.dtype(np.int32): "MET_INT",
    np.dtype(np.uint32): "MET_UINT",
    np.dtype(np.float32): "MET_FLOAT",
    np.dtype(np.float64): "MET_DOUBLE",
}


def _num(v: float) -> str:
    return repr(float(v)) if float(v) != int(v) else str(int(v))


def write_mha(
    path: PathLike,
    array_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    compress: bool = True,
) -> None:
    """A 3-D MetaImage file with the data inline (``ElementDataFile = LOCAL``).

    Args:
        array_zyx: ``[D, H, W]`` array (x fastest on disk, as SimpleITK's ``GetArrayFromImage``).
        spacing_xyz, origin_xyz: mm, ITK (LPS) physical space.
        direction: the 3x3 direction cosines, row-major (ITK's ``TransformMatrix`` order).
        compress: zlib-compress the data (``CompressedData = True`` + ``CompressedDataSize``).
    """
    a = np.asarray(array_zyx)
    if a.ndim != 3:
        from ..exceptions import ShapeError

        raise ShapeError(f"write_mha: expected a 3-d [D, H, W] array, got shape {a.shape}")
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    if np.dtype(dt.name) not in _MET_TYPES:
        from ..exceptions import DTypeError

        raise DTypeError(
            f"write_mha: unsupported dtype {a.dtype}; expected one of "
            f"{sorted(str(d) for d in _MET_TYPES)}"
        )
    raw = np.ascontiguousarray(a, dtype=np.dtype(dt.name).newbyteorder("<")).tobytes()
    d, h, w = a.shape
    lines = [
        "ObjectType = Image",
        "NDims = 3",
        "BinaryData = True",
        "BinaryDataByteOrderMSB = False",
        f"CompressedData = {'True' if compress else 'False'}",
    ]
    if compress:
        raw = zlib.compress(raw, 6)
        lines.append(f"CompressedDataSize = {len(raw)}")
    lines += [
        "TransformMatrix = " + " ".join(_num(v) for v in direction),
        "Offset = " + " ".join(_num(v) for v in origin_xyz),
        "CenterOfRotation = 0 0 0",
        "AnatomicalOrientation = RAI",
        "ElementSpacing = " + " ".join(_num(v) for v in spacing_xyz),
        f"DimSize = {w} {h} {d}",
        f"ElementType = {_MET_TYPES[np.dtype(dt.name)]}",
        "ElementDataFile = LOCAL",
    ]
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(("\n".join(lines) + "\n").encode("ascii") + raw)


def lps_to_ras_affine(
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> np.ndarray:
    """The NIfTI (RAS) affine of an ITK image with this geometry (voxel index i, j, k -> mm),
    i.e. what SimpleITK writes when it saves the image as NIfTI."""
    dmat = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = dmat * np.asarray(spacing_xyz, dtype=np.float64)[None, :]
    a[:3, 3] = origin_xyz
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ a


# ------------------------------------------------------------------------------------------
# DICOM (explicit VR little endian)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLEMENTATION_UID = "2.25.241139043233958839446425513372474830317"
_LONG_VRS = {"OB", "OW", "OF", "SQ", "UT", "UN"}


def _ds(v: float) -> str:
    s = f"{float(v):.6g}"
    return s if len(s) <= 16 else f"{float(v):.8e}"[:16]


def _element(group: int, elem: int, vr: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        data = value
    else:
        if isinstance(value, (list, tuple)):
            text = "\\".join(_ds(v) if vr == "DS" else str(v) for v in value)
        elif vr == "DS":
            text = _ds(value)
        else:
            text = str(value)
        data = text.encode("ascii")
    if vr == "US":
        data = struct.pack("<H", int(value))
    elif vr == "UL":
        data = struct.pack("<I", int(value))
    if len(data) % 2:
        data += b"\0" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", group, elem) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(data)) + data
    return head + struct.pack("<H", len(data)) + data


def write_dicom_file(
    path: PathLike, elements: list[tuple[int, int, str, Any]], sop_class: str, sop_instance: str
) -> None:
    """One DICOM Part 10 file: 128-byte preamble, ``DICM``, file meta group 2 (explicit VR LE),
    then ``elements`` sorted by tag."""
    meta_body = b"".join(
        [
            _element(0x0002, 0x0001, "OB", b"\0\1"),
            _element(0x0002, 0x0002, "UI", sop_class),
            _element(0x0002, 0x0003, "UI", sop_instance),
            _element(0x0002, 0x0010, "UI", EXPLICIT_VR_LE),
            _element(0x0002, 0x0012, "UI", IMPLEMENTATION_UID),
            _element(0x0002, 0x0013, "SH", "VOXLM_SYNTH"),
        ]
    )
    meta = _element(0x0002, 0x0000, "UL", len(meta_body)) + meta_body
    body = b"".join(_element(*e) for e in sorted(elements, key=lambda e: (e[0], e[1])))
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\0" * 128 + b"DICM" + meta + body)


def write_dicom_series(
    folder: PathLike,
    array_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float],
    modality: str = "CT",
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    patient_id: str = "SYNTH",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_description: str = "",
    series_number: int = 1,
    uid_seed: str = "",
) -> list[pathlib.Path]:
    """An axial DICOM series, one file per slice (``IM0001.dcm`` ...), int16 stored values.

    Stored pixel ``x`` and real value ``v = rescale_slope * x + rescale_intercept`` (HU for CT).
    Slice ``k`` sits at ``ImagePositionPatient = origin + k * spacing_z`` along z, orientation
    ``1\\0\\0\\0\\1\\0`` (LPS rows/columns); ``PixelSpacing`` is ``row\\column`` = ``y\\x``.

    Args:
        array_zyx: ``[D, H, W]`` stored values (cast to int16).
    """
    a = np.asarray(array_zyx)
    if a.ndim != 3:
        from ..exceptions import ShapeError

        raise ShapeError(f"write_dicom_series: expected a 3-d [D, H, W] array, got shape {a.shape}")
    a = np.clip(np.rint(a), -32768, 32767).astype("<i2")
    modality = modality.upper()
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    study_uid = study_uid or stable_uid("study", uid_seed, patient_id)
    series_uid = series_uid or stable_uid("series", uid_seed, patient_id, series_number)
    frame_uid = stable_uid("frame", uid_seed, patient_id)
    folder = pathlib.Path(folder)
    sx, sy, sz = (float(v) for v in spacing_xyz)
    out = []
    for k in range(a.shape[0]):
        sop_uid = stable_uid("sop", uid_seed, patient_id, series_number, k)
        pos = [float(origin_xyz[0]), float(origin_xyz[1]), float(origin_xyz[2]) + k * sz]
        el: list[tuple[int, int, str, Any]] = [
            (0x0008, 0x0008, "CS", "ORIGINAL\\PRIMARY\\AXIAL"),
            (0x0008, 0x0016, "UI", sop_class),
            (0x0008, 0x0018, "UI", sop_uid),
            (0x0008, 0x0020, "DA", "20200101"),
            (0x0008, 0x0060, "CS", modality),
            (0x0008, 0x103E, "LO", series_description[:64]),
            (0x0010, 0x0010, "PN", patient_id[:64]),
            (0x0010, 0x0020, "LO", patient_id[:64]),
            (0x0018, 0x0050, "DS", sz),
            (0x0020, 0x000D, "UI", study_uid),
            (0x0020, 0x000E, "UI", series_uid),
            (0x0020, 0x0011, "IS", series_number),
            (0x0020, 0x0013, "IS", k + 1),
            (0x0020, 0x0032, "DS", pos),
            (0x0020, 0x0037, "DS", [1, 0, 0, 0, 1, 0]),
            (0x0020, 0x0052, "UI", frame_uid),
            (0x0020, 0x1041, "DS", pos[2]),
            (0x0028, 0x0002, "US", 1),
            (0x0028, 0x0004, "CS", "MONOCHROME2"),
            (0x0028, 0x0010, "US", a.shape[1]),
            (0x0028, 0x0011, "US", a.shape[2]),
            (0x0028, 0x0030, "DS", [sy, sx]),
            (0x0028, 0x0100, "US", 16),
            (0x0028, 0x0101, "US", 16),
            (0x0028, 0x0102, "US", 15),
            (0x0028, 0x0103, "US", 1),
            (0x0028, 0x1052, "DS", rescale_intercept),
            (0x0028, 0x1053, "DS", rescale_slope),
            (0x7FE0, 0x0010, "OW", a[k].tobytes()),
        ]
        if modality == "CT":
            el.append((0x0028, 0x1054, "LO", "HU"))
        f = folder / f"IM{k + 1:04d}.dcm"
        write_dicom_file(f, el, sop_class, sop_uid)
        out.append(f)
    return out


# ------------------------------------------------------------------------------------------
# PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bytes(image: np.ndarray) -> bytes:
    """Greyscale PNG bytes of a ``[H, W]`` uint8 or uint16 array."""
    a = np.asarray(image)
    if a.ndim != 2:
        from ..exceptions import ShapeError

        raise ShapeError(f"png: expected a 2-d [H, W] array, got shape {a.shape}")
    if a.dtype == np.uint8:
        depth, rows = 8, a
    elif a.dtype == np.uint16:
        depth, rows = 16, a.astype(">u2")
    else:
        from ..exceptions import DTypeError

        raise DTypeError(f"png: expected uint8 or uint16, got {a.dtype}")
    h, w = a.shape
    raw = np.concatenate(
        [np.zeros((h, 1), np.uint8), np.ascontiguousarray(rows).view(np.uint8).reshape(h, -1)],
        axis=1,
    )
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: PathLike, image: np.ndarray) -> None:
    """Write :func:`png_bytes` of ``image`` to ``path``."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(png_bytes(image))
