"""Python-owned parameters in a Rust forward (voxlm.nn.LoraLinear, voxlm's one LoRA module
adapters.LoraLayer over a new nn.Linear): gradients land on the nn.Parameters, optimizer steps,
load_state_dict and .to(dtype) are seen by the next Rust forward, and the module is PEFT's
lora.Linear (the same state-dict keys and shapes, the same init, PEFT's state dict loads with
equal outputs; equality to torch's default assert_close tolerance, fp32: the same two matmuls)."""

import copy

import pytest
import torch
import torch.nn.functional as F

import voxlm
from voxlm.nn import LoraLinear

from .conftest import requires_cuda


def A(m):
    return m.lora_A["default"].weight


def B(m):
    return m.lora_B["default"].weight


def reference(m: LoraLinear, x):
    base = F.linear(x, m.base_layer.weight, m.base_layer.bias)
    return base + F.linear(F.linear(x, A(m)), B(m)) * m.scaling["default"]


def make(**kw):
    m = LoraLinear(16, 12, r=4, lora_alpha=8, **kw)
    with torch.no_grad():
        B(m).normal_()  # B starts at zero (PEFT init); make the branch visible
    return m


def test_peft_names_and_init():
    m = LoraLinear(16, 12, r=4, lora_alpha=8)
    assert isinstance(m, voxlm.adapters.LoraLayer)
    assert set(m.state_dict()) == {
        "base_layer.weight",
        "base_layer.bias",
        "lora_A.default.weight",
        "lora_B.default.weight",
    }
    assert torch.count_nonzero(B(m)) == 0
    assert m.scaling == {"default": 2.0}
    x = torch.randn(3, 16)
    torch.testing.assert_close(m(x), m.base_layer(x))
    assert [n for n, p in m.named_parameters() if p.requires_grad] == [
        "lora_A.default.weight",
        "lora_B.default.weight",
    ]
    assert LoraLinear(16, 12, r=4, lora_alpha=8, use_rslora=True).scaling["default"] == 4.0


@pytest.mark.parametrize("bias", [True, False])
def test_same_layout_as_peft_lora_linear(bias):
    import peft
    from peft.tuners.lora import Linear as PeftLinear

    torch.manual_seed(0)
    ref = PeftLinear(
        torch.nn.Linear(16, 12, bias=bias),
        "default",
        peft.LoraConfig(r=4, lora_alpha=8),
        r=4,
        lora_alpha=8,
    )
    with torch.no_grad():
        ref.lora_B["default"].weight.normal_()
    m = LoraLinear(16, 12, r=4, lora_alpha=8, bias=bias)
    theirs = ref.state_dict()
    assert {k: v.shape for k, v in m.state_dict().items()} == {
        k: v.shape for k, v in theirs.items()
    }
    m.load_state_dict(theirs)
    x = torch.randn(5, 16)
    torch.testing.assert_close(m(x), ref(x))
    assert m.scaling == ref.scaling


def test_former_layout_state_dict_loads():
    """The state dict the former nn.LoraLinear wrote (lora_A.weight / lora_B.weight), also
    nested in a parent module."""
    torch.manual_seed(0)
    old = {
        "base_layer.weight": torch.randn(12, 16),
        "base_layer.bias": torch.randn(12),
        "lora_A.weight": torch.randn(4, 16),
        "lora_B.weight": torch.randn(12, 4),
    }
    m = LoraLinear(16, 12, r=4, lora_alpha=8)
    m.load_state_dict(old)  # strict: every key used, none missing
    torch.testing.assert_close(A(m), old["lora_A.weight"], rtol=0, atol=0)
    torch.testing.assert_close(B(m), old["lora_B.weight"], rtol=0, atol=0)
    parent = torch.nn.Sequential(LoraLinear(16, 12, r=4, lora_alpha=8))
    parent.load_state_dict({f"0.{k}": v for k, v in old.items()})
    x = torch.randn(3, 16)
    torch.testing.assert_close(parent(x), reference(m, x))


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
    torch.testing.assert_close(A(m).grad, A(ref).grad)
    torch.testing.assert_close(B(m).grad, B(ref).grad)


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


def test_swapped_parameters_are_seen():
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
        + F.linear(F.linear(F.dropout(x, 0.5, True), A(m)), B(m)) * m.scaling["default"]
    )
    torch.testing.assert_close(y_train, ref)


def test_bad_config():
    with pytest.raises(voxlm.ConfigError, match="r: expected a positive"):
        LoraLinear(4, 4, r=0)
    with pytest.raises(voxlm.ConfigError, match="lora_dropout"):
        LoraLinear(4, 4, r=2, lora_dropout=1.0)
    with pytest.raises(voxlm.ConfigError, match="lora_alpha: expected a finite number"):
        LoraLinear(4, 4, r=2, lora_alpha=float("inf"))
    with pytest.raises(voxlm.ConfigError, match="in_features: expected a positive integer"):
        LoraLinear(0, 4)


@requires_cuda
def test_module_to_cuda():
    m = make().cuda()
    x = torch.randn(5, 16, device="cuda")
    y = m(x)
    assert y.is_cuda
    torch.testing.assert_close(y, reference(m, x))
