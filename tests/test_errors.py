"""The error model: every bad input reaching Rust becomes a voxlm exception with a short message
naming what was expected and what was given, never a panic or a C++ backtrace."""

import numpy as np
import pytest
import torch

import voxlm
from voxlm import exceptions

from .conftest import requires_cuda


def assert_clean(excinfo, cls, *fragments):
    err = excinfo.value
    assert type(err) is cls
    msg = str(err)
    assert "Exception raised from" not in msg and "frame #" not in msg
    assert "panicked" not in msg
    assert len(msg) < 300, msg
    for f in fragments:
        assert f in msg, msg


def test_hierarchy():
    assert issubclass(voxlm.VoxlmError, Exception)
    for name, base in [
        ("ShapeError", ValueError),
        ("DTypeError", ValueError),
        ("DeviceError", ValueError),
        ("ConfigError", ValueError),
        ("CheckpointError", OSError),
        ("VolumeFormatError", OSError),
        ("VoxlmTypeError", TypeError),
        ("TorchError", RuntimeError),
    ]:
        cls = getattr(exceptions, name)
        assert cls is getattr(voxlm, name) is getattr(voxlm._core, name)
        assert issubclass(cls, voxlm.VoxlmError) and issubclass(cls, base)
        assert cls.__module__ == "voxlm.exceptions"


def test_shape_mismatch():
    w = torch.randn(5, 8)
    with pytest.raises(voxlm.ShapeError) as e:
        voxlm.ops.lora_linear(torch.randn(3, 7), w)
    assert_clean(e, voxlm.ShapeError, "last dimension 8", "[3, 7]")
    with pytest.raises(voxlm.ShapeError) as e:
        voxlm.ops.lora_linear(torch.randn(3, 8), w, None, torch.randn(4, 8), torch.randn(5, 3))
    assert_clean(e, voxlm.ShapeError, "lora_B", "[5, 4]", "[5, 3]")
    with pytest.raises(voxlm.ShapeError) as e:
        voxlm.ops.lora_linear(torch.randn(3, 8), torch.randn(5, 8, 1))
    assert_clean(e, voxlm.ShapeError, "weight", "2-d")


def test_dtype_mismatch():
    with pytest.raises(voxlm.DTypeError) as e:
        voxlm.ops.lora_linear(torch.randn(3, 8, dtype=torch.float64), torch.randn(5, 8))
    assert_clean(e, voxlm.DTypeError, "float32", "float64")
    with pytest.raises(voxlm.DTypeError) as e:
        voxlm.ops.lora_linear(
            torch.ones(3, 8, dtype=torch.int64), torch.ones(5, 8, dtype=torch.int64)
        )
    assert_clean(e, voxlm.DTypeError, "floating", "int64")


def test_device_mismatch_meta():
    with pytest.raises(voxlm.DeviceError) as e:
        voxlm.ops.lora_linear(torch.randn(3, 8), torch.empty(5, 8, device="meta"))
    assert_clean(e, voxlm.DeviceError, "meta")


@requires_cuda
def test_device_mismatch_cuda():
    with pytest.raises(voxlm.DeviceError) as e:
        voxlm.ops.lora_linear(torch.randn(3, 8), torch.randn(5, 8, device="cuda"))
    assert_clean(e, voxlm.DeviceError, "cuda:0", "cpu")


def test_not_a_tensor_and_config():
    with pytest.raises(voxlm.VoxlmTypeError) as e:
        voxlm.ops.lora_linear([[1.0] * 8], torch.randn(5, 8))
    assert_clean(e, voxlm.VoxlmTypeError, "torch.Tensor", "list")
    with pytest.raises(voxlm.ConfigError) as e:
        voxlm.ops.lora_linear(torch.randn(3, 8), torch.randn(5, 8), None, torch.randn(2, 8), None)
    assert_clean(e, voxlm.ConfigError, "lora_a and lora_b")
    with pytest.raises(voxlm.ConfigError) as e:
        voxlm.ops.lora_linear(
            torch.randn(3, 8),
            torch.randn(5, 8),
            None,
            torch.randn(2, 8),
            torch.randn(5, 2),
            dropout=1.5,
        )
    assert_clean(e, voxlm.ConfigError, "lora_dropout", "1.5")


def test_numpy_errors():
    with pytest.raises(voxlm.DTypeError) as e:
        voxlm._core.scale_intensity_range(np.zeros(3, dtype=np.complex64), 0.0, 1.0)
    assert_clean(e, voxlm.DTypeError, "complex64")
    with pytest.raises(voxlm.VoxlmTypeError):
        voxlm._core.scale_intensity_range([1, 2, 3], 0.0, 1.0)
    with pytest.raises(voxlm.ConfigError) as e:
        voxlm._core.scale_intensity_range(np.zeros(3, dtype=np.float32), float("nan"), 1.0)
    assert_clean(e, voxlm.ConfigError, "a_min")


def test_a_failure_leaves_inputs_intact():
    w = torch.randn(5, 8)
    before = w.clone()
    with pytest.raises(voxlm.ShapeError):
        voxlm.ops.lora_linear(torch.randn(3, 7), w)
    assert torch.equal(w, before)
