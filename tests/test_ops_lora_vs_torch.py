"""voxlm.ops.lora_linear against its torch.nn.functional transcription (PEFT's lora.Linear forward:
``result + lora_B(lora_A(dropout(x))) * scaling``).

Tolerances: float64 results agree to 1e-12 (same libtorch kernels, same op order); float32 1e-6
relative; bfloat16/float16 to their epsilon (both sides round each op to the dtype).
"""

import pytest
import torch
import torch.nn.functional as F

import voxlm

from .conftest import requires_cuda


def reference(x, w, b, a, bb, scaling, p=0.0, training=False):
    y = F.linear(x, w, b)
    if a is not None:
        y = y + F.linear(F.linear(F.dropout(x, p, training), a), bb) * scaling
    return y


def make(dtype=torch.float64, device="cpu", batch=(2, 3), fin=8, fout=5, r=4, bias=True):
    kw = {"dtype": dtype, "device": device}
    x = torch.randn(*batch, fin, **kw, requires_grad=True)
    w = torch.randn(fout, fin, **kw, requires_grad=True)
    b = torch.randn(fout, **kw, requires_grad=True) if bias else None
    a = torch.randn(r, fin, **kw, requires_grad=True)
    bb = torch.randn(fout, r, **kw, requires_grad=True)
    return x, w, b, a, bb


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_gradcheck_float64_through_rust(bias, batch):
    x, w, b, a, bb = make(batch=batch, bias=bias)
    inputs = (x, w, a, bb) + ((b,) if bias else ())

    def f(x, w, a, bb, *rest):
        return voxlm.ops.lora_linear(x, w, rest[0] if rest else None, a, bb, scaling=0.7)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_values_and_grads_equal_torch_functional():
    x, w, b, a, bb = make(dtype=torch.float32, batch=(6, 7), fin=32, fout=16, r=8)
    y = voxlm.ops.lora_linear(x, w, b, a, bb, scaling=2.0)
    ref_inputs = [t.detach().clone().requires_grad_() for t in (x, w, b, a, bb)]
    y_ref = reference(*ref_inputs, 2.0)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    for t, r in zip((x, w, b, a, bb), ref_inputs):
        torch.testing.assert_close(t.grad, r.grad, rtol=1e-5, atol=1e-5)


def test_plain_linear_without_lora():
    x, w, b, _, _ = make(dtype=torch.float32)
    torch.testing.assert_close(voxlm.ops.lora_linear(x, w, b), F.linear(x, w, b))


def test_dropout_uses_torch_rng_and_matches_peft_semantics():
    x, w, b, a, bb = make(dtype=torch.float32, batch=(16,), fin=64)
    torch.manual_seed(123)
    y = voxlm.ops.lora_linear(x, w, b, a, bb, scaling=0.5, dropout=0.3, training=True)
    torch.manual_seed(123)
    y_ref = reference(x, w, b, a, bb, 0.5, p=0.3, training=True)
    torch.testing.assert_close(y, y_ref)
    # not training: dropout is off whatever p is
    y_eval = voxlm.ops.lora_linear(x, w, b, a, bb, scaling=0.5, dropout=0.3, training=False)
    torch.testing.assert_close(y_eval, reference(x, w, b, a, bb, 0.5))


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)]
)
def test_low_precision_dtypes(dtype, tol):
    x, w, b, a, bb = (t.detach() for t in make(dtype=dtype, fin=16, fout=8))
    y = voxlm.ops.lora_linear(x, w, b, a, bb, scaling=0.5)
    assert y.dtype == dtype
    ref = reference(x, w, b, a, bb, 0.5)
    torch.testing.assert_close(y, ref, rtol=tol, atol=tol)


def test_no_grad_is_honoured():
    x, w, b, a, bb = make(dtype=torch.float32)
    with torch.no_grad():
        y = voxlm.ops.lora_linear(x, w, b, a, bb)
    assert not y.requires_grad and y.grad_fn is None
    with torch.inference_mode():
        y = voxlm.ops.lora_linear(x, w, b, a, bb)
    assert y.is_inference()


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda(dtype):
    x, w, b, a, bb = make(dtype=dtype, device="cuda")
    y = voxlm.ops.lora_linear(x, w, b, a, bb, scaling=0.5)
    assert y.is_cuda
    y.sum().backward()
    assert a.grad is not None and a.grad.is_cuda
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y, reference(x, w, b, a, bb, 0.5), rtol=tol, atol=tol)
