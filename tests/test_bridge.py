"""The tensor bridge: zero-copy torch <-> tch (same storage, autograd intact), numpy <-> ndarray
(any strides in, no copy out), and MONAI's ScaleIntensityRange as the first numpy op."""

import numpy as np
import pytest
import torch

import voxlm
from voxlm import _core


def test_rust_result_is_a_plain_torch_tensor_with_history():
    w = torch.randn(4, 3, requires_grad=True)
    y = voxlm.ops.lora_linear(torch.randn(2, 3), w)
    assert type(y) is torch.Tensor
    assert y.grad_fn is not None and y.requires_grad
    y.sum().backward()
    assert w.grad is not None


def test_bound_tensors_share_storage():
    w = torch.zeros(4, 3)
    core = _core.LoraLinearCore(w)
    x = torch.ones(1, 3)
    assert core.forward(x).abs().sum() == 0
    w.fill_(1.0)  # in place on the Python side: seen by Rust without re-binding
    assert torch.equal(core.forward(x), torch.full((1, 4), 3.0))


def test_noncontiguous_tensors():
    x = torch.randn(3, 16)[:, ::2]  # strided view
    w = torch.randn(8, 5).t()  # transposed
    torch.testing.assert_close(voxlm.ops.lora_linear(x, w), x @ w.t())


@pytest.mark.parametrize(
    "dtype", [np.int16, np.uint8, np.int32, np.float32, np.float64, np.uint16, np.int8]
)
def test_scale_intensity_range_vs_monai(dtype):
    from monai.transforms import ScaleIntensityRange

    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo, hi = (max(info.min, -1024), min(info.max, 3000)) if info else (-1024, 3000)
    img = rng.integers(lo, hi, size=(1, 9, 10, 11)).astype(dtype)
    # MONAI subtracts a_min in the input's integer type, so (u)int8 wraps around; voxlm computes
    # in floating point. Compare those two against MONAI on the float32 cast, the intended result.
    ref_in = img.astype(np.float32) if dtype in (np.uint8, np.int8) else img
    ref = ScaleIntensityRange(-160, 240, 0.0, 1.0, clip=True)(ref_in)
    got = _core.scale_intensity_range(img, -160.0, 240.0, 0.0, 1.0, True)
    assert got.dtype == np.float32 and got.shape == img.shape
    # voxlm computes in float64 and rounds once; MONAI in float32: agree to float32 rounding.
    np.testing.assert_allclose(got, np.asarray(ref), rtol=0, atol=2e-7)


def test_scale_intensity_range_strided_input_and_owned_output():
    img = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    view = img.transpose(2, 0, 1)[::2]  # non-contiguous: borrowed with its strides, not copied
    got = _core.scale_intensity_range(view, 0.0, 100.0)
    np.testing.assert_allclose(got, view / 100.0, rtol=1e-6)
    assert got.flags.c_contiguous and got.flags.writeable
    t = torch.from_numpy(got)  # shares the Rust-allocated buffer
    assert t.data_ptr() == got.ctypes.data


def test_scale_intensity_range_degenerate_window_as_monai():
    from monai.transforms import ScaleIntensityRange

    img = np.linspace(-5, 5, 11, dtype=np.float32)
    with pytest.warns(Warning, match="Divide by zero"):
        ref = ScaleIntensityRange(2.0, 2.0, 0.5, 1.0)(img)
    np.testing.assert_allclose(_core.scale_intensity_range(img, 2.0, 2.0, 0.5, 1.0), ref)
