"""Losses computed in Rust against plain-PyTorch transcriptions of each method's formula.

Tolerance: 1e-6 in float32 / 1e-12 in float64 against the transcriptions (same libtorch kernels,
a different but equivalent op order); gradcheck in float64 through every Rust loss."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import voxlm
from voxlm.losses import (
    PICG_FOCAL_ALPHA,
    PrototypeBank,
    focal_loss,
    kl_distill,
    lm_loss,
    weighted_sum,
)

# ---- plain-PyTorch transcriptions of the reference code -------------------------------------


def focal_ref(logits, target, alpha, gamma, reduction="mean"):
    ce = F.cross_entropy(logits, target, reduction="none")
    pt = torch.exp(-ce)
    loss = (1 - pt) ** gamma * ce
    if alpha is not None:
        loss = alpha[target] * loss
    return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]


def kl_ref(student, teacher, T=1.0):
    return nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(student / T, dim=-1), F.softmax(teacher / T, dim=-1)
    )


def lm_ref(logits, labels):
    # transformers' LlamaForCausalLM loss
    shift_logits = logits[..., :-1, :].contiguous().float()
    shift_labels = labels[..., 1:].contiguous()
    return F.cross_entropy(shift_logits.view(-1, logits.size(-1)), shift_labels.view(-1))


def prototype_ref(bank: PrototypeBank, group_x, cls_labels):
    """Dia-LLaMA my_embedding_layer.py, mode='train' (group_vision_x: [B*14, D])."""
    B, L = cls_labels.shape
    all_memory = []
    for i in range(B):
        for n, j in enumerate(cls_labels[i]):
            if j == 0:
                all_memory.append(
                    torch.cat([bank.neg_sample_memory[n], bank.pos_sample_memory[n]], 0)
                )
            else:
                all_memory.append(
                    torch.cat([bank.pos_sample_memory[n], bank.neg_sample_memory[n]], 0)
                )
    all_memory = F.normalize(torch.stack(all_memory, 0), dim=-1)  # B*L, 2, P
    x = F.normalize(bank.proj(group_x.reshape(B * L, -1)).unsqueeze(1), dim=-1)
    sim = torch.matmul(x, all_memory.transpose(-1, -2)).squeeze(1) / bank.temp
    return F.cross_entropy(sim, torch.zeros(B * L, dtype=torch.long))


# ---- focal -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
def test_focal_equals_transcription(reduction, gamma):
    logits = torch.randn(32, 5)
    target = torch.randint(0, 5, (32,))
    alpha = torch.tensor(PICG_FOCAL_ALPHA)
    got = focal_loss(logits, target, PICG_FOCAL_ALPHA, gamma, reduction)
    torch.testing.assert_close(
        got, focal_ref(logits, target, alpha, gamma, reduction), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        focal_loss(logits, target, None, gamma, reduction),
        focal_ref(logits, target, None, gamma, reduction),
        rtol=1e-6,
        atol=1e-6,
    )


def test_focal_gradcheck():
    logits = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (8,))
    alpha = torch.tensor(PICG_FOCAL_ALPHA, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, target, alpha, 2.0), (logits,))


# ---- KL distillation -------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
def test_kl_distill_equals_kldivloss_batchmean(T):
    s, t = torch.randn(6, 64), torch.randn(6, 64)
    torch.testing.assert_close(kl_distill(s, t, T), kl_ref(s, t, T), rtol=1e-6, atol=1e-7)
    s64, t64 = s.double(), t.double()
    torch.testing.assert_close(kl_distill(s64, t64, T), kl_ref(s64, t64, T), rtol=1e-12, atol=1e-14)


def test_kl_distill_with_projection_trains_the_projection():
    proj = nn.Linear(32, 64)
    s, t = torch.randn(4, 32), torch.randn(4, 64)
    loss = kl_distill(s, t, projection=proj)
    torch.testing.assert_close(loss, kl_ref(proj(s), t))
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_kl_distill_gradcheck():
    s = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: kl_distill(a, b, 1.5), (s, t))


# ---- LM loss ---------------------------------------------------------------------------------


def test_lm_loss_equals_transformers_formula():
    logits = torch.randn(2, 9, 50)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :4] = -100  # prompt
    labels[1, 7:] = -100  # padding
    torch.testing.assert_close(
        lm_loss(logits, labels), lm_ref(logits, labels), rtol=1e-6, atol=1e-6
    )
    bf = logits.bfloat16()
    got = lm_loss(bf, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, lm_ref(bf, labels), rtol=1e-6, atol=1e-6)


def test_lm_loss_gradcheck():
    logits = torch.randn(2, 5, 11, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 1] = -100
    assert torch.autograd.gradcheck(lambda x: lm_loss(x, labels), (logits,))


def test_lm_loss_with_llama_for_causal_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 10))
    labels = ids.clone()
    labels[:, :3] = -100
    out = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(lm_loss(out.logits, labels), out.loss, rtol=1e-6, atol=1e-6)


# ---- prototype bank --------------------------------------------------------------------------


def test_prototype_loss_equals_dia_llama_code():
    bank = PrototypeBank(14, 48, proj_dim=24)
    feats = torch.randn(3, 14, 48)
    labels = torch.randint(0, 2, (3, 14))
    torch.testing.assert_close(
        bank.loss(feats, labels), prototype_ref(bank, feats, labels), rtol=1e-6, atol=1e-6
    )
    names = {n for n, _ in bank.named_parameters()}
    assert names == {"proj.weight", "proj.bias", "pos_sample_memory", "neg_sample_memory", "temp"}
    assert bank.temp.item() == pytest.approx(0.07)


def test_prototype_predict_is_the_nearer_prototype():
    bank = PrototypeBank(4, 8)
    feats = torch.randn(5, 4, 8)
    s_pos, s_neg = bank(feats)
    x = F.normalize(bank.proj(feats), dim=-1)
    ref_pos = (x * F.normalize(bank.pos_sample_memory[:, 0], dim=-1)).sum(-1) / bank.temp
    torch.testing.assert_close(s_pos, ref_pos)
    assert torch.equal(bank.predict(feats), (s_pos >= s_neg).long())


def test_prototype_gradcheck_and_training_step():
    bank = PrototypeBank(3, 6, dtype=torch.float64)
    feats = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 2, (2, 3))

    def f(x, w, b, pos, neg, temp):
        return voxlm._core.prototype_loss(x, labels, w, b, pos, neg, temp)

    params = (
        feats,
        bank.proj.weight,
        bank.proj.bias,
        bank.pos_sample_memory,
        bank.neg_sample_memory,
        bank.temp,
    )
    assert torch.autograd.gradcheck(f, params)
    bank.zero_grad()
    bank.loss(feats.detach(), labels).backward()
    assert all(p.grad is not None for p in bank.parameters())


def test_weighted_sum():
    a, b = torch.tensor(1.5, requires_grad=True), torch.tensor(0.25, requires_grad=True)
    total = weighted_sum({"lm": a, "dp": b}, {"lm": 1.0, "dp": 4.0})
    assert total.item() == pytest.approx(2.5)
    total.backward()
    assert b.grad.item() == 4.0
    assert weighted_sum([a, b], [1, 4]).item() == pytest.approx(2.5)
    with pytest.raises(voxlm.ConfigError):
        weighted_sum({"lm": a}, {"dp": 1.0})


# ---- bad input -------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors():
    logits = torch.randn(4, 5)
    with pytest.raises(voxlm.ConfigError, match=r"class indices must lie in \[0, 4\]"):
        focal_loss(logits, torch.tensor([0, 1, 2, 7]))
    with pytest.raises(voxlm.ShapeError, match="expected 4 targets"):
        focal_loss(logits, torch.tensor([0, 1]))
    with pytest.raises(voxlm.DTypeError, match="integer tensor"):
        focal_loss(logits, torch.zeros(4))
    with pytest.raises(voxlm.ConfigError, match="NaN"):
        focal_loss(torch.full((4, 5), float("nan")), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(voxlm.ShapeError, match="alpha"):
        focal_loss(logits, torch.tensor([0, 1, 2, 3]), [1.0, 2.0])
    with pytest.raises(voxlm.ConfigError, match="reduction"):
        focal_loss(logits, torch.tensor([0, 1, 2, 3]), reduction="avg")
    with pytest.raises(voxlm.ShapeError, match="project the student"):
        kl_distill(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(voxlm.ShapeError, match="empty batch"):
        kl_distill(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(voxlm.ConfigError, match="temperature"):
        kl_distill(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(voxlm.ConfigError, match="token ids must lie"):
        lm_loss(torch.randn(1, 3, 5), torch.tensor([[1, 2, 9]]))
    with pytest.raises(voxlm.ShapeError, match=r"\[B, T, V\]"):
        lm_loss(torch.randn(3, 5), torch.tensor([[1, 2, 3]]))
    bank = PrototypeBank(3, 6)
    with pytest.raises(voxlm.ShapeError, match="feature size 6"):
        bank.loss(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(voxlm.ConfigError, match="0 \\(negative\\) or 1"):
        bank.loss(torch.randn(2, 3, 6), torch.full((2, 3), 2))
    with pytest.raises(voxlm.ShapeError, match="pos_sample_memory"):
        bank(torch.randn(2, 4, 6))
