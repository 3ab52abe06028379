"""Transforms against MONAI (data and affine) and torch.nn.functional.interpolate, on synthetic
volumes with non-trivial affines. Tolerances: geometric transforms exact; Resize 1e-5 relative
(float32 interpolation weights by PyTorch's formula; the kernel sums the 8 taps in another
order); intensity transforms 1e-5 relative."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai import transforms as mt
from monai.data import MetaTensor

import voxlm
from voxlm import transforms as vt
from voxlm.volume import Volume


def meta(a, affine):
    return MetaTensor(torch.from_numpy(a.copy()), affine=torch.from_numpy(affine))


def vol_and_affine(seed=0, shape=(2, 9, 11, 7)):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape).astype(np.float32)
    aff = np.diag([-0.8, 1.2, 2.5, 1.0])
    aff[:3, 3] = [10.0, -20.0, 5.0]
    return a, aff


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "SAL"])
@pytest.mark.parametrize("diag", [(-0.8, 1.2, 2.5), (1.0, -1.5, -2.0)])
def test_orientation_equals_monai(codes, diag):
    a, aff = vol_and_affine()
    aff[:3, :3] = np.diag(diag)[[2, 0, 1]]  # permuted axes, flips
    ref = mt.Orientation(axcodes=codes)(meta(a, aff))
    out, new_aff = vt.Orientation(codes).apply(a, aff)
    np.testing.assert_array_equal(out, ref.numpy())
    np.testing.assert_allclose(new_aff, ref.affine.numpy(), atol=1e-12)
    v = vt.Orientation(codes)(Volume(a[0], aff))
    assert "".join(v.axcodes) == codes


@pytest.mark.parametrize("mode", ["trilinear", "nearest"])
@pytest.mark.parametrize("size", [(5, 31, 8), (16, 16, 16), (9, 11, 7)])
def test_resize_equals_interpolate_and_monai(mode, size):
    a, aff = vol_and_affine(1)
    out = vt.Resize(size, mode)(a)
    kw = {"align_corners": False} if mode == "trilinear" else {}
    ref = F.interpolate(torch.from_numpy(a)[None], size=size, mode=mode, **kw)[0].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    ref_m = mt.Resize(spatial_size=size, mode=mode)(meta(a, aff))
    # MONAI's Resize goes through its own interpolation call: 1e-5 (float32 rounding order)
    np.testing.assert_allclose(out, ref_m.numpy(), rtol=0, atol=1e-5)
    _, new_aff = vt.Resize(size, mode).apply(a, aff)
    np.testing.assert_allclose(new_aff, ref_m.affine.numpy(), atol=1e-6)
    t = vt.Resize(size, mode)(torch.from_numpy(a))
    assert isinstance(t, torch.Tensor) and tuple(t.shape) == (2, *size)


@pytest.mark.parametrize("channel_wise", [False, True])
def test_percentile_window_equals_monai(channel_wise):
    a, _ = vol_and_affine(2)
    ref = mt.ScaleIntensityRangePercentiles(
        0.5, 99.5, 0.0, 1.0, clip=True, channel_wise=channel_wise
    )(a)
    out = vt.ScaleIntensityRangePercentiles(
        0.5, 99.5, 0.0, 1.0, clip=True, channel_wise=channel_wise
    )(a)
    np.testing.assert_allclose(out, np.asarray(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nonzero", [False, True])
@pytest.mark.parametrize("channel_wise", [False, True])
def test_normalize_intensity_equals_monai(nonzero, channel_wise):
    a, _ = vol_and_affine(3)
    a[:, :3] = 0
    ref = mt.NormalizeIntensity(nonzero=nonzero, channel_wise=channel_wise)(a)
    out = vt.NormalizeIntensity(nonzero=nonzero, channel_wise=channel_wise)(a)
    np.testing.assert_allclose(out, np.asarray(ref), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("margin", [0, 2])
def test_crop_foreground_equals_monai(margin):
    a, aff = vol_and_affine(4)
    a[:] = 0
    a[0, 2:5, 3:9, 1:4] = 1.0
    a[1, 6, 2, 5] = 2.0
    ref = mt.CropForeground(select_fn=lambda x: x > 0, margin=margin, allow_smaller=True)(
        meta(a, aff)
    )
    out, new_aff = vt.CropForeground(margin=margin).apply(a, aff)
    np.testing.assert_array_equal(out, ref.numpy())
    np.testing.assert_allclose(new_aff, ref.affine.numpy(), atol=1e-12)


@pytest.mark.parametrize("size", [(12, 12, 12), (6, 13, 4), (9, 11, 7)])
def test_pad_and_crop_equal_monai(size):
    a, aff = vol_and_affine(5)
    for ours, theirs in [
        (vt.SpatialPad(size), mt.SpatialPad(spatial_size=size)),
        (vt.CenterSpatialCrop(size), mt.CenterSpatialCrop(roi_size=size)),
        (vt.ResizeWithPadOrCrop(size), mt.ResizeWithPadOrCrop(spatial_size=size)),
    ]:
        ref = theirs(meta(a, aff))
        out, new_aff = ours.apply(a, aff)
        np.testing.assert_array_equal(out, ref.numpy())
        np.testing.assert_allclose(new_aff, ref.affine.numpy(), atol=1e-12)


def test_methods_transforms():
    a, aff = vol_and_affine(6, shape=(1, 20, 20, 20))
    crop = vt.CropAroundPoint((2, 10, 18), size=(6, 6, 6))
    out, new_aff = crop.apply(a, aff)
    assert out.shape == (1, 6, 6, 6)
    np.testing.assert_array_equal(out[0, 1:, :, :5], a[0, 0:5, 7:13, 15:20])
    assert (out[0, 0] == 0).all() and (out[0, :, :, 5] == 0).all()
    world = (aff @ np.array([10, 10, 10, 1.0]))[:3]
    out_w, _ = vt.CropAroundPoint(world, size=(4, 4, 4), world=True).apply(a, aff)
    np.testing.assert_array_equal(out_w, a[:, 8:12, 8:12, 8:12])
    s = vt.SampleSlices(5)(a)
    assert s.shape == (1, 5, 20, 20) and np.array_equal(s[0, -1], a[0, -1])
    img = vt.stitch_images([np.ones((4, 3)), np.ones((6, 2)) * 2], gap=10)
    assert img.shape == (6, 15) and img[1, 0] == 1 and img[0, 0] == 0 and img[0, 13] == 2
    f1 = vt.RandFlip(prob=1.0, spatial_axis=1, seed=0)(a)
    np.testing.assert_array_equal(f1, a[:, :, ::-1])
    r1, r2 = vt.RandScaleShiftIntensity(1.0, seed=3)(a), vt.RandScaleShiftIntensity(1.0, seed=3)(a)
    np.testing.assert_array_equal(r1, r2)
    pipe = vt.Compose(
        [
            vt.Orientation("RAS"),
            vt.ScaleIntensityRange(-1, 1, 0, 1, clip=True),
            vt.Resize((8, 8, 8)),
        ]
    )
    v = pipe(Volume(a[0], aff))
    assert isinstance(v, Volume) and v.shape == (8, 8, 8) and "".join(v.axcodes) == "RAS"


def test_bad_transform_inputs():
    with pytest.raises(voxlm.ConfigError, match="axcodes"):
        vt.Orientation("RAX")
    with pytest.raises(voxlm.ConfigError, match="spatial_size"):
        vt.Resize((0, 4, 4))
    with pytest.raises(voxlm.ShapeError, match=r"\[C, D, H, W\]"):
        vt.Resize((4, 4, 4))(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(voxlm.VoxlmTypeError):
        vt.Resize((4, 4, 4))([1, 2, 3])
    with pytest.raises(voxlm.ShapeError):
        vt.stitch_images([])


def test_load_batch_rust_pipeline_equals_transforms(tmp_path):
    import nibabel as nib

    from voxlm.data import VolumeDataset, load_batch

    rng = np.random.default_rng(7)
    paths = []
    for i, diag in enumerate([(-0.8, 0.8, 2.0), (0.9, -0.9, -2.5), (0.7, 0.7, 1.5)]):
        data = rng.integers(-1000, 1500, (20 + i, 18, 12), dtype=np.int16)
        aff = np.diag(list(diag) + [1.0])
        if i == 2:
            aff[:3, :3] = aff[:3, :3][[1, 2, 0]]  # permuted axes
        p = tmp_path / f"ct{i}.nii.gz"
        nib.Nifti1Image(data, aff).to_filename(p)
        paths.append(p)
    pipe = vt.Compose(
        [
            vt.Orientation("RAS"),
            vt.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
            vt.Resize((8, 16, 16)),
        ]
    )
    fast = load_batch(paths, pipe, num_threads=2)
    assert fast.shape == (3, 1, 8, 16, 16) and fast.dtype == torch.float32
    for i, p in enumerate(paths):
        ref = mt.Compose(
            [
                mt.LoadImage(image_only=True, reader="NibabelReader"),
                mt.EnsureChannelFirst(),
                mt.Orientation("RAS"),
                mt.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
                mt.Resize((8, 16, 16), mode="trilinear"),
            ]
        )(str(p))
        np.testing.assert_allclose(fast[i].numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    slow = load_batch(paths, vt.Compose([*pipe.transforms, vt.NormalizeIntensity()]))
    assert slow.shape == fast.shape
    ds = VolumeDataset(paths, pipe, labels=[0, 1, 2])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    x, y = next(iter(loader))
    torch.testing.assert_close(x, fast)
    assert y.tolist() == [0, 1, 2]
    with pytest.raises(voxlm.ShapeError, match="differs"):
        load_batch(paths, vt.Orientation("RAS"))
    with pytest.raises(voxlm.VoxlmIOError):
        load_batch([tmp_path / "nope.nii.gz"], pipe)


@pytest.mark.parametrize("oblique", [False, True])
@pytest.mark.parametrize(
    "diag,pix", [((-0.8, 0.8, 2.0), (1.5, 1.5, 1.5)), ((-1.2, 0.9, 3.0), (0.6, 1.1, 1.7))]
)
def test_spacing_equals_monai(oblique, diag, pix):
    rng = np.random.default_rng(8)
    a = rng.normal(size=(2, 20, 18, 12)).astype(np.float32)
    aff = np.diag(list(diag) + [1.0])
    aff[:3, 3] = [5, -3, 2]
    if oblique:
        c, s = np.cos(0.3), np.sin(0.3)
        aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ aff[:3, :3]
    ref = mt.Spacing(pixdim=pix, mode="bilinear")(meta(a, aff))
    out, new_aff = vt.Spacing(pix).apply(a, aff)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(
        out, ref.numpy(), rtol=0, atol=1e-5
    )  # float32 grid coordinates in MONAI
    np.testing.assert_allclose(new_aff, ref.affine.numpy(), atol=1e-9)
    v = vt.Spacing(pix)(Volume(a[0], aff))
    np.testing.assert_allclose(v.spacing, pix, rtol=1e-9)


def test_spacing_nearest_and_stack_sequences():
    from scipy import ndimage

    rng = np.random.default_rng(9)
    t2 = rng.normal(size=(16, 14, 10)).astype(np.float32)
    aff = np.diag([0.5, 0.5, 3.0, 1.0])
    adc_aff = np.diag([1.0, 1.0, 3.0, 1.0])
    adc_aff[:3, 3] = [0.3, -0.4, 1.0]
    adc = rng.normal(size=(8, 7, 10)).astype(np.float32)
    out = vt.StackSequences()([Volume(t2, aff), Volume(adc, adc_aff)])
    assert out.shape == (16, 14, 10, 2) and np.array_equal(out.data[..., 0], t2)
    # reference: the ADC sampled at the T2W voxel centres (order 1, clamped at the border)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in t2.shape], indexing="ij"), 0).reshape(3, -1)
    src = (np.linalg.solve(adc_aff, aff) @ np.vstack([idx, np.ones(idx.shape[1])]))[:3]
    src = np.clip(src, 0, np.array(adc.shape)[:, None] - 1)
    ref = ndimage.map_coordinates(adc.astype(np.float64), src, order=1).reshape(t2.shape)
    np.testing.assert_allclose(out.data[..., 1], ref, rtol=0, atol=1e-5)
    # nearest: ties at exactly .5 round to even
    a = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)
    n = _core_resample(a, np.diag([0.5, 1, 1, 1]), (7, 1, 1))
    assert n.ravel().tolist() == [0, 0, 1, 2, 2, 2, 3]


def _core_resample(a, xform, size):
    from voxlm import _core

    return _core.affine_resample(a, xform.tolist(), list(size), "nearest")


def test_load_batch_with_spacing_equals_monai_chain(tmp_path):
    import nibabel as nib

    from voxlm.data import load_batch

    rng = np.random.default_rng(11)
    paths = []
    for i, diag in enumerate([(-0.7, -0.7, 1.25), (0.8, -0.9, 2.5), (0.6, 0.6, 1.0)]):
        data = rng.integers(-1000, 1500, (30, 28, 14), dtype=np.int16)
        aff = np.diag(list(diag) + [1.0])
        aff[:3, 3] = [10.0, -5.0, 3.0]
        if i == 1:
            c, s = np.cos(0.25), np.sin(0.25)
            aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ aff[:3, :3]
        if i == 2:
            aff[:3, :3] = aff[:3, :3][[2, 0, 1]]
        p = tmp_path / f"s{i}.nii.gz"
        nib.Nifti1Image(data, aff).to_filename(p)
        paths.append(p)
    pipe = vt.Compose(
        [
            vt.Orientation("RAS"),
            vt.Spacing(1.5),
            vt.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
            vt.Resize((8, 12, 12)),
        ]
    )
    fast = load_batch(paths, pipe)
    for i, p in enumerate(paths):
        ref = mt.Compose(
            [
                mt.LoadImage(image_only=True, reader="NibabelReader"),
                mt.EnsureChannelFirst(),
                mt.Orientation("RAS"),
                mt.Spacing(1.5, mode="bilinear"),
                mt.ScaleIntensityRange(-160, 240, 0, 1, clip=True),
                mt.Resize((8, 12, 12), mode="trilinear"),
            ]
        )(str(p))
        np.testing.assert_allclose(fast[i].numpy(), ref.numpy(), rtol=0, atol=1e-4, err_msg=str(i))
        # and the Python transforms on a Volume agree with the fused Rust pipeline
        from voxlm.volume import load_volume

        v = pipe(load_volume(p))
        np.testing.assert_allclose(fast[i, 0].numpy(), v.data, rtol=0, atol=1e-5)
