"""The chunked LM loss (no full logits) against the full-logits loss, torch's cross-entropy and
transformers + peft: loss and every trainable gradient."""

import pytest
import torch

from voxlm.adapters import LoraConfig, add_lora
from voxlm.exceptions import ConfigError, ShapeError
from voxlm.linear_ce import linear_cross_entropy
from voxlm.llm import LlamaConfig, LlamaForCausalLM


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_equals_torch_cross_entropy(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 11, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (3, 11), generator=g)
    y[0, :4] = -100
    ours = linear_cross_entropy(h, w, y, chunk_size=chunk)
    ours.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = torch.nn.functional.cross_entropy(
        (h[:, :-1] @ w.t()).reshape(-1, 50), y[:, 1:].reshape(-1)
    )
    ref.backward()
    # float64 throughout: only summation order differs
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gh, h.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, w.grad, rtol=1e-12, atol=1e-12)


def test_frozen_weight_gets_no_grad_and_scaled_backward():
    h = torch.randn(2, 5, 8, requires_grad=True)
    w = torch.randn(20, 8)
    y = torch.randint(0, 20, (2, 5))
    (3.0 * linear_cross_entropy(h, w, y, chunk_size=3)).backward()
    ref_h = h.detach().clone().requires_grad_(True)
    (
        3.0
        * torch.nn.functional.cross_entropy(
            (ref_h[:, :-1] @ w.t()).reshape(-1, 20), y[:, 1:].reshape(-1)
        )
    ).backward()
    torch.testing.assert_close(h.grad, ref_h.grad, rtol=1e-5, atol=1e-7)


def test_bad_input_named():
    h, w = torch.randn(2, 5, 8), torch.randn(20, 8)
    with pytest.raises(ShapeError, match="weight"):
        linear_cross_entropy(h, torch.randn(20, 7), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ShapeError, match="token ids"):
        linear_cross_entropy(h, w, torch.full((2, 5), 25, dtype=torch.long))
    with pytest.raises(ConfigError, match="chunk_size"):
        linear_cross_entropy(h, w, torch.zeros(2, 5, dtype=torch.long), chunk_size=0)
    assert torch.isnan(linear_cross_entropy(h, w, torch.full((2, 5), -100, dtype=torch.long)))


def _tiny(tie=False):
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=tie,
        )
    )


@pytest.mark.parametrize("tie", [False, True])
def test_llama_chunked_loss_equals_full_loss_with_lora(tie):
    m = _tiny(tie)
    add_lora(m, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for n, p in m.named_parameters():
        p.requires_grad_(".lora_" in n or n.endswith("embed_tokens.weight"))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = torch.randint(0, 300, (2, 9))
    labels = ids.clone()
    labels[:, :3] = -100
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    full = m(input_ids=ids, attention_mask=mask, labels=labels)
    full.loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}
    m.zero_grad()
    out = m(input_ids=ids, attention_mask=mask, labels=labels, loss_chunk_size=5)
    assert out.logits is None
    out.loss.backward()
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-6, atol=1e-6)
    # float32, the same sums in another order (chunks; libtorch's thread count changes the
    # order too): each element within 1e-5 relative, or 1e-6 of its gradient's largest element
    # (an embedding row sums terms up to that size; one thread measured 1.5e-7 at max 0.68)
    for n, p in m.named_parameters():
        if p.requires_grad:
            scale = float(grads[n].abs().max())
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6 * scale, msg=n)


def test_llama_chunked_loss_vs_transformers_peft(tmp_path):
    cfg = dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0
    )
    m, ref, ref_sd = _peft_pair(tmp_path, cfg)
    ids = torch.randint(0, 300, (2, 9))
    labels = ids.clone()
    labels[:, :2] = -100
    out = m(input_ids=ids, labels=labels, loss_chunk_size=4)
    out.loss.backward()
    r = ref(input_ids=ids, labels=labels)
    r.loss.backward()
    torch.testing.assert_close(out.loss, r.loss, rtol=1e-5, atol=1e-6)
    for n, p in m.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(
                p.grad, ref_sd["base_model.model." + n].grad, rtol=1e-4, atol=1e-6, msg=n
            )


def test_no_grad_computes_no_gradients(monkeypatch):
    """Under no_grad (evaluation) only the loss is computed: the softmax-gradient path never
    runs."""
    h = torch.randn(2, 6, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    y = torch.randint(0, 30, (2, 6))
    ref = linear_cross_entropy(h, w, y, chunk_size=4)
    calls = []
    real = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, y, chunk_size=4)
    assert not calls and not loss.requires_grad
    torch.testing.assert_close(loss, ref.detach())


def _peft_pair(tmp_path, cfg):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    m = _tiny()
    m.save_pretrained(tmp_path)
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32)
    ref = peft.get_peft_model(ref, peft.LoraConfig(**cfg))
    m = LlamaForCausalLM.from_pretrained(tmp_path)
    add_lora(m, LoraConfig(**cfg))
    for n, p in m.named_parameters():
        p.requires_grad_(".lora_" in n)
    with torch.no_grad():  # same non-zero LoRA weights on both sides
        ref_sd = dict(ref.named_parameters())
        for n, p in m.named_parameters():
            if ".lora_" in n:
                p.normal_(0, 0.1)
                ref_sd["base_model.model." + n].copy_(p)
    return m, ref, ref_sd


@pytest.mark.parametrize("chunk", [None, 4])
def test_llama_lora_dropout_vs_peft_same_masks(tmp_path, chunk):
    """LoRA dropout 0.3 on every linear in training mode: voxlm draws each mask as libtorch's
    CPU dropout does (same random stream, same order q, k, v, o, gate, up, down) but saves only
    the bool mask; with the same seed the masks equal PEFT's (nn.Dropout), so loss and every
    LoRA gradient equal PEFT's (1e-4 relative: float32, different summation order in the
    chunked loss). The check is not vacuous: another seed gives a different loss."""
    cfg = dict(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.3)
    m, ref, ref_sd = _peft_pair(tmp_path, cfg)
    m.train()
    ref.train()
    ids = torch.randint(0, 300, (2, 9))
    labels = ids.clone()
    labels[:, :2] = -100
    torch.manual_seed(123)
    out = m(input_ids=ids, labels=labels, loss_chunk_size=chunk)
    out.loss.backward()
    torch.manual_seed(123)
    r = ref(input_ids=ids, labels=labels)
    r.loss.backward()
    torch.testing.assert_close(out.loss, r.loss, rtol=1e-5, atol=1e-6)
    for n, p in m.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(
                p.grad, ref_sd["base_model.model." + n].grad, rtol=1e-4, atol=1e-6, msg=n
            )
    torch.manual_seed(124)
    with torch.no_grad():
        other = m(input_ids=ids, labels=labels, loss_chunk_size=chunk).loss
    assert abs(other.item() - r.loss.item()) > 1e-5


@pytest.mark.parametrize("autocast", [False, True])
def test_bf16_and_autocast_chunks(autocast):
    """bfloat16 hidden states and weight, or float32 ones under CPU bf16 autocast (the
    gradient's rows are then copied in, not written with out=): the loss is the float32 loss of
    the same bfloat16-rounded products up to bf16 rounding, and the gradient has the hidden
    states' dtype and shape."""
    torch.manual_seed(0)
    w = torch.randn(50, 8)
    dtype = torch.float32 if autocast else torch.bfloat16
    h = torch.randn(2, 5, 8, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 50, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = linear_cross_entropy(h, w.to(dtype), y, chunk_size=3)
    loss.backward()
    hb, wb = h.detach().bfloat16().float(), w.bfloat16().float()
    ref = torch.nn.functional.cross_entropy(
        (hb[:, :-1] @ wb.t()).reshape(-1, 50), y[:, 1:].reshape(-1)
    )
    assert abs(loss.item() - ref.item()) < 2e-2
    assert h.grad.dtype == dtype and h.grad.shape == h.shape
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
