"""Multi-sequence stacking (MRI T2W / ADC / DWI of one study as channels on the first one's
grid) against MONAI: ``LoadImage`` + ``EnsureChannelFirst`` per sequence, ``ResampleToMatch``
(bilinear = trilinear in 3D, border padding) of every other sequence onto the first, the
channels concatenated with the first one's affine, then the same MONAI chain. voxlm's fused Rust
path (``load_batch`` with a list of paths, ``VolumeDataset``, ``ReportDataset(stack_sequences=
True)``) and its Python fallback (``StackSequences`` + the transforms) are both compared, on
synthetic NIfTI (coarser, shifted, rotated and permuted grids) and on real scans: crops of the
MNI152 T1 / GM / WM templates that ship in nilearn's wheel, the GM map subsampled onto a 2 mm
grid and the WM map given a rotated affine (exact copies of the voxels, new geometry).

Tolerance: shapes exact; values within 1e-4 of MONAI after a window to [0, 1] (MONAI builds its
sampling grids in float32, voxlm in float64: coordinates differ by ~1e-5 voxel) and 1e-5
between voxlm's fused and Python paths (same kernels, different summation order)."""

import importlib.util
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from voxlm import transforms as vt
from voxlm.data import VolumeDataset, _stacked_python, load_batch, rust_plan, transform_paths
from voxlm.datasets import ReportDataset
from voxlm.exceptions import VoxlmError, VoxlmTypeError


def _rot(angle, axis=2):
    c, s = np.cos(angle), np.sin(angle)
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def synthetic_study(tmp_path, seed=0):
    """T2W 0.6 x 0.6 x 3 mm; ADC 1.8 mm, shifted and rotated 0.2 rad; DWI with permuted
    (z, x, y) voxel axes and a flipped x: three grids over roughly the same region."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(np.arange(30), np.arange(26), np.arange(8), indexing="ij")
    body = ((x - 15) ** 2 / 150 + (y - 13) ** 2 / 100) < 1
    t2 = np.where(body, 300 + 40 * np.sin(x / 3.0) + 25 * z, 0) + rng.normal(0, 5, body.shape)
    t2_aff = np.diag([0.6, 0.6, 3.0, 1.0])
    t2_aff[:3, 3] = [-9.0, -8.0, -12.0]
    adc = rng.uniform(500, 2000, (11, 10, 9)).astype(np.float32)
    adc_aff = np.eye(4)
    adc_aff[:3, :3] = _rot(0.2) @ np.diag([1.8, 1.8, 3.0])
    adc_aff[:3, 3] = [-9.5, -7.0, -13.0]
    dwi_xyz = rng.uniform(0, 100, (12, 11, 8)).astype(np.float32)
    dwi = np.transpose(dwi_xyz, (2, 0, 1))[:, ::-1]  # voxel axes (z, -x, y)
    dwi_aff = np.zeros((4, 4))
    dwi_aff[2, 0] = 3.0
    dwi_aff[0, 1] = -1.6
    dwi_aff[1, 2] = 1.6
    dwi_aff[:, 3] = [-9.0 + 1.6 * 10, -8.5, -12.5, 1.0]
    paths = []
    for name, data, aff in (("t2w", t2, t2_aff), ("adc", adc, adc_aff), ("dwi", dwi, dwi_aff)):
        p = tmp_path / f"{name}.nii.gz"
        nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), aff).to_filename(p)
        paths.append(str(p))
    return paths


def real_study(tmp_path):
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        pytest.skip("nilearn (its wheel ships the MNI152 templates) is not installed")
    base = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    names = [f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")]
    if not all(os.path.exists(os.path.join(base, n)) for n in names):
        pytest.skip("nilearn's MNI152 templates not found")
    imgs = [nib.load(os.path.join(base, n)) for n in names]
    start = np.array([50, 60, 50])
    sl = tuple(slice(s, s + n) for s, n in zip(start, (80, 90, 70)))
    out = []
    for k, img in enumerate(imgs):
        data = np.asarray(img.dataobj, dtype=np.float32)[sl]
        aff = img.affine.copy()
        aff[:3, 3] = aff[:3, :3] @ start + aff[:3, 3]
        if k == 1:  # GM map on a 2 mm grid: every second voxel
            data = data[::2, ::2, ::2]
            aff[:3, :3] = aff[:3, :3] * 2.0
        if k == 2:  # WM map with a rotated affine about the crop's centre
            c = aff[:3, :3] @ (np.array(data.shape) / 2.0) + aff[:3, 3]
            r = _rot(0.15, axis=0)
            aff[:3, :3] = r @ aff[:3, :3]
            aff[:3, 3] = c - r @ (c - aff[:3, 3])
        p = tmp_path / f"mni_{k}.nii.gz"
        nib.Nifti1Image(np.ascontiguousarray(data), aff).to_filename(p)
        out.append(str(p))
    return out


def monai_stacked(paths, chain):
    load = mt.Compose(
        [mt.LoadImage(image_only=True, reader="NibabelReader"), mt.EnsureChannelFirst()]
    )
    imgs = [load(p) for p in paths]
    ref = imgs[0]
    rs = mt.ResampleToMatch(mode="bilinear", padding_mode="border")
    chans = [ref.as_tensor()] + [rs(im, img_dst=ref).as_tensor() for im in imgs[1:]]
    stacked = MetaTensor(
        torch.cat(chans, 0),
        affine=ref.affine,
        meta={k: v for k, v in ref.meta.items() if k != "affine"},
    )
    return mt.Compose(chain)(stacked).numpy() if chain else stacked.numpy()


CHAINS = {
    "none": (lambda: [], lambda: []),
    "ras_spacing_percentiles_crop_resize": (
        lambda: [
            vt.Orientation("RAS"),
            vt.Spacing((1.0, 1.0, 2.0)),
            vt.ScaleIntensityRangePercentiles(1, 99, 0, 1, clip=True),
            vt.CropForeground(margin=1),
            vt.Resize((6, 16, 16)),
        ],
        lambda: [
            mt.Orientation("RAS"),
            mt.Spacing((1.0, 1.0, 2.0), mode="bilinear"),
            mt.ScaleIntensityRangePercentiles(1, 99, 0, 1, clip=True),
            mt.CropForeground(select_fn=lambda x: x > 0, margin=1, allow_smaller=True),
            mt.Resize((6, 16, 16), mode="trilinear"),
        ],
    ),
    "lps_window_normalize_padcrop": (
        lambda: [
            vt.Orientation("LPS"),
            vt.ScaleIntensityRange(0, 2000, 0, 1, clip=True),
            vt.NormalizeIntensity(),
            vt.ResizeWithPadOrCrop((24, 32, 10)),
        ],
        lambda: [
            mt.Orientation("LPS"),
            mt.ScaleIntensityRange(0, 2000, 0, 1, clip=True),
            mt.NormalizeIntensity(),
            mt.ResizeWithPadOrCrop((24, 32, 10)),
        ],
    ),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_synthetic_study_equals_monai(tmp_path, name):
    ours_fn, ref_fn = CHAINS[name]
    paths = synthetic_study(tmp_path)
    pipe = vt.Compose(ours_fn()) if ours_fn() else None
    assert pipe is None or rust_plan(pipe) is not None
    ref = monai_stacked(paths, ref_fn())
    fused = transform_paths(paths, pipe)
    assert fused.shape == ref.shape and fused.shape[0] == 3, (fused.shape, ref.shape)
    # without a window the raw ADC values (~2000) carry float32's ulp (1.2e-4) into the check
    atol = 1e-4 * (2000 if name == "none" else 1)
    np.testing.assert_allclose(fused, ref, rtol=0, atol=atol)
    py = _stacked_python(paths, pipe)
    np.testing.assert_allclose(fused, py, rtol=0, atol=1e-5 * (2000 if name == "none" else 1))
    # the first channel alone is the single-file pipeline (channels share no statistics here)
    if name == "none":
        np.testing.assert_array_equal(fused[0], load_batch([paths[0]])[0, 0].numpy())


def test_real_templates_equal_monai(tmp_path):
    paths = real_study(tmp_path)
    ours = vt.Compose(
        [
            vt.Orientation("RAS"),
            vt.Spacing((2.5, 2.5, 2.5)),
            vt.ScaleIntensityRangePercentiles(0.5, 99.5, 0, 1, clip=True),
            vt.CropForeground(margin=2),
            vt.ResizeWithPadOrCrop((32, 40, 32)),
        ]
    )
    ref = monai_stacked(
        paths,
        [
            mt.Orientation("RAS"),
            mt.Spacing((2.5, 2.5, 2.5), mode="bilinear"),
            mt.ScaleIntensityRangePercentiles(0.5, 99.5, 0, 1, clip=True),
            mt.CropForeground(select_fn=lambda x: x > 0, margin=2, allow_smaller=True),
            mt.ResizeWithPadOrCrop((32, 40, 32)),
        ],
    )
    fused = load_batch([paths], ours)[0].numpy()
    assert fused.shape == ref.shape == (3, 32, 40, 32)
    np.testing.assert_allclose(fused, ref, rtol=0, atol=1e-4)
    assert np.abs(fused[1]).max() > 0.5 and np.abs(fused[2]).max() > 0.5  # GM/WM resampled in


def test_datasets_stack_sequences(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = synthetic_study(tmp_path / "a", seed=1)
    b = synthetic_study(tmp_path / "b", seed=2)
    pipe = vt.Compose(
        [
            vt.Orientation("RAS"),
            vt.ScaleIntensityRange(0, 2000, 0, 1, clip=True),
            vt.ResizeWithPadOrCrop((24, 24, 8)),
        ]
    )
    want = [transform_paths(p, pipe) for p in (a, b)]
    # VolumeDataset items as lists or dicts of sequences, through a DataLoader worker, cached
    ds = VolumeDataset([a, dict(zip(("t2w", "adc", "dwi"), b))], pipe, cache_dir=tmp_path / "c")
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    (batch,) = list(dl)
    assert batch.shape == (2, 3, 24, 24, 8)
    np.testing.assert_array_equal(batch.numpy(), np.stack(want))
    assert all(os.path.exists(ds.cache_path(i)) for i in range(2))
    np.testing.assert_array_equal(ds[1].numpy(), want[1])  # from the cache
    # ReportDataset: a record's sequences stacked as the channels of "image"
    rec = {"id": "s1", "sequences": dict(zip(("t2w", "adc", "dwi"), a)), "report": "x"}
    item = ReportDataset([rec], transform=pipe, stack_sequences=True)[0]
    np.testing.assert_array_equal(item["image"].numpy(), want[0])
    assert "sequences" not in item and list(item["sequence_paths"]) == ["t2w", "adc", "dwi"]
    sep = ReportDataset([rec], transform=pipe)[0]
    assert set(sep["sequences"]) == {"t2w", "adc", "dwi"}
    np.testing.assert_array_equal(sep["sequences"]["t2w"].numpy(), want[0][:1])


def test_bad_sequence_inputs(tmp_path):
    paths = synthetic_study(tmp_path)
    four = tmp_path / "four.nii.gz"
    nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)).to_filename(four)
    with pytest.raises(VoxlmError, match="four.nii.gz"):
        load_batch([[paths[0], str(four)]])
    with pytest.raises(VoxlmError, match="four.nii.gz"):
        load_batch([[paths[0], str(four)]], vt.Compose([vt.RandFlip(prob=0.0)]))
    with pytest.raises(OSError, match="missing.nii"):
        load_batch([[paths[0], str(tmp_path / "missing.nii")]])
    with pytest.raises(VoxlmTypeError, match="non-empty list of paths"):
        load_batch([[]])
    with pytest.raises(VoxlmError, match="differs"):
        load_batch([paths, paths[:2]])
