"""Python-owned parameters bound by reference into a Rust forward (voxlm.nn.LoraLinear): gradients
land on the nn.Parameters, optimizer steps, load_state_dict and .to(dtype) are seen by the next Rust
forward, and the module behaves as PEFT's lora.Linear (names, init)."""

import copy

import pytest
import torch
import torch.nn.functional as F

import voxlm
from voxlm.nn import LoraLinear

from .conftest import requires_cuda


def reference(m: LoraLinear, x):
    base = F.linear(x, m.base_layer.weight, m.base_layer.bias)
    return base + F.linear(F.linear(x, m.lora_A.weight), m.lora_B.weight) * m.scaling


def make(**kw):
    m = LoraLinear(16, 12, r=4, lora_alpha=8, **kw)
    with torch.no_grad():
        m.lora_B.weight.normal_()  # B starts at zero (PEFT init); make the branch visible
    return m


def test_peft_names_and_init():
    m = LoraLinear(16, 12, r=4, lora_alpha=8)
    assert set(m.state_dict()) == {
        "base_layer.weight",
        "base_layer.bias",
        "lora_A.weight",
        "lora_B.weight",
    }
    assert torch.count_nonzero(m.lora_B.weight) == 0
    assert m.scaling == 2.0
    x = torch.randn(3, 16)
    torch.testing.assert_close(m(x), m.base_layer(x))
    assert [n for n, p in m.named_parameters() if p.requires_grad] == [
        "lora_A.weight",
        "lora_B.weight",
    ]
    assert LoraLinear(16, 12, r=4, lora_alpha=8, use_rslora=True).scaling == 4.0


def test_grads_land_on_python_parameters():
    m = make()
    x = torch.randn(5, 16)
    y = m(x)
    assert y.grad_fn is not None
    y.square().sum().backward()
    ref = copy.deepcopy(m)
    for p in ref.parameters():
        p.grad = None
    reference(ref, x).square().sum().backward()
    assert m.base_layer.weight.grad is None  # frozen
    torch.testing.assert_close(m.lora_A.weight.grad, ref.lora_A.weight.grad)
    torch.testing.assert_close(m.lora_B.weight.grad, ref.lora_B.weight.grad)


def test_optimizer_step_is_seen_by_rust():
    m = make()
    x = torch.randn(5, 16)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    y0 = m(x).detach()
    for _ in range(3):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    y1 = m(x)
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y1, reference(m, x))


def test_load_state_dict_and_inplace_updates_are_seen():
    m, other = make(), make()
    x = torch.randn(5, 16)
    m.load_state_dict(other.state_dict())
    torch.testing.assert_close(m(x), other(x))
    with torch.no_grad():
        m.base_layer.weight.mul_(2)
    torch.testing.assert_close(m(x), reference(m, x))


def test_to_dtype_is_seen_by_rust():
    m = make()
    x = torch.randn(5, 16, dtype=torch.float64)
    with pytest.raises(voxlm.DTypeError):
        m(x)
    m.to(torch.float64)
    y = m(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, reference(m, x))


def test_swapped_parameters_need_and_get_a_rebind():
    m = make()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    x = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x))


def test_no_grad_and_eval():
    m = make(lora_dropout=0.5)
    x = torch.randn(5, 16)
    with torch.no_grad():
        y = m(x)
    assert not y.requires_grad
    m.eval()
    torch.testing.assert_close(m(x), reference(m, x))  # no dropout in eval
    m.train()
    torch.manual_seed(1)
    y_train = m(x)
    torch.manual_seed(1)
    ref = (
        F.linear(x, m.base_layer.weight, m.base_layer.bias)
        + F.linear(F.linear(F.dropout(x, 0.5, True), m.lora_A.weight), m.lora_B.weight) * m.scaling
    )
    torch.testing.assert_close(y_train, ref)


def test_bad_config():
    with pytest.raises(voxlm.ConfigError, match="r: expected a positive"):
        LoraLinear(4, 4, r=0)
    with pytest.raises(voxlm.ConfigError, match="lora_dropout"):
        LoraLinear(4, 4, r=2, lora_dropout=1.0)


@requires_cuda
def test_module_to_cuda():
    m = make().cuda()
    x = torch.randn(5, 16, device="cuda")
    y = m(x)
    assert y.is_cuda
    torch.testing.assert_close(y, reference(m, x))
