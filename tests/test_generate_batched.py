"""Batched beam search as an evaluation loop runs it: image-embedding prompts (``inputs_embeds``)
of different lengths, left-padded into one batch, 2-3 beams, against transformers' ``generate``
on the same tiny random weights (saved with ``save_pretrained``, loaded through voxlm's loader).

Tokens must be identical, for the fused float32 CPU step (the default: the prompt runs once per
row, its beams share the cached prompt through a row table, reordering rewrites the table) and
for the libtorch step (``cpu_kernels=False``: the cache is copied per beam and gathered). The
fused step's logits differ from libtorch's by float32 rounding (~1e-6, Rust test
``step_matches_libtorch_forward``); on these models no beam choice is that close."""

import pytest
import torch
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM as HFLlama

from voxlm.llm import LlamaForCausalLM

SHAPES = {"mha": {}, "gqa": {"num_key_value_heads": 2}}


def _models(tmp_path, name):
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=160,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
        **SHAPES[name],
    )
    hf = HFLlama(HFConfig(**cfg)).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.normal_(1.0, 0.1)
    hf.save_pretrained(tmp_path / name)
    return hf, LlamaForCausalLM.from_pretrained(tmp_path / name).eval()


def _prompts(hf, image=6, lens=(3, 9, 5, 1)):
    """Left-padded ``(inputs_embeds [B, L, H], attention_mask [B, L])``: image embeddings then
    text token embeddings, per row of a different length."""
    g = torch.Generator().manual_seed(1)
    h = hf.config.hidden_size
    total = image + max(lens)
    embeds = torch.zeros(len(lens), total, h)
    mask = torch.zeros(len(lens), total, dtype=torch.long)
    for i, n in enumerate(lens):
        ids = torch.randint(1, hf.config.vocab_size, (n,), generator=g)
        with torch.no_grad():
            row = torch.cat([torch.randn(image, h, generator=g), hf.model.embed_tokens(ids)])
        embeds[i, total - row.shape[0] :] = row
        mask[i, total - row.shape[0] :] = 1
    return embeds, mask


def _hf(hf, e, m, new, beams, eos=None):
    return hf.generate(
        inputs_embeds=e,
        attention_mask=m,
        max_new_tokens=new,
        min_new_tokens=0 if eos is not None else new,
        num_beams=beams,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
        early_stopping=False,
    )


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("beams", [2, 3])
@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_batched_beams_left_padding_embeds_token_identical(tmp_path, name, beams, cpu_kernels):
    hf, vm = _models(tmp_path, name)
    e, m = _prompts(hf)
    new = 16
    ref = _hf(hf, e, m, new, beams)
    got = vm.generate(
        inputs_embeds=e,
        attention_mask=m,
        max_new_tokens=new,
        num_beams=beams,
        eos_token_id=[],
        pad_token_id=0,
        cpu_kernels=cpu_kernels,
    )
    assert got.shape == ref.shape == (e.shape[0], new)  # inputs_embeds: only the new tokens
    assert torch.equal(got, ref)


@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_batched_beams_with_eos_token_identical(tmp_path, cpu_kernels):
    """With an EOS the model emits, rows finish at different steps and beams die."""
    hf, vm = _models(tmp_path, "gqa")
    e, m = _prompts(hf)
    free = vm.generate(
        inputs_embeds=e, attention_mask=m, max_new_tokens=12, num_beams=2, eos_token_id=[]
    )
    eos = int(free[1, 4])
    ref = _hf(hf, e, m, 12, 2, eos=eos)
    got = vm.generate(
        inputs_embeds=e,
        attention_mask=m,
        max_new_tokens=12,
        num_beams=2,
        eos_token_id=eos,
        pad_token_id=0,
        cpu_kernels=cpu_kernels,
    )
    assert (ref == eos).any()  # the EOS did end some beam
    assert got.shape == ref.shape
    assert torch.equal(got, ref)


@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_exactly_tied_candidates_kept_in_transformers_order(tmp_path, cpu_kernels):
    """Four tokens with the same LM-head row (pointing along the prompts' last hidden states, so
    they lead): their log-probabilities are equal in float32 at every step, so beam search's
    candidates tie exactly and only the order in which ``torch.topk`` returns tied values decides
    which become the beams, in which order, and which hypothesis is returned (transformers'
    candidate top-k over beams x vocabulary: libtorch's CPU heap order, not the lower index
    first; then its top-k of the running beams and of the finished slots). voxlm transcribes
    the first (host selection on the fused step) and runs the others through libtorch's top-k;
    tokens must equal transformers'."""
    hf, _ = _models(tmp_path, "gqa")
    tied = [7, 9, 12, 15]
    e, m = _prompts(hf)
    with torch.no_grad():
        last = hf.model(inputs_embeds=e, attention_mask=m).last_hidden_state[:, -1]
        d = last.mean(0) / last.mean(0).norm()
        hf.lm_head.weight[tied] = 8.0 * d * hf.lm_head.weight.norm(dim=1).mean()
        logits = hf(inputs_embeds=e, attention_mask=m).logits[:, -1]
    hf.save_pretrained(tmp_path / "tied")
    vm = LlamaForCausalLM.from_pretrained(tmp_path / "tied").eval()
    # the premise: exactly tied and on top, and torch.topk returns them not lower index first
    assert (logits[:, tied] == logits[:, tied[:1]]).all()
    assert all(set(r) == set(tied) for r in logits.topk(4).indices.tolist())
    step0 = torch.log_softmax(logits[0], -1)
    assert torch.cat([step0, torch.full_like(step0, -1e9)]).topk(4).indices.tolist() != tied
    new = 12
    ref = _hf(hf, e, m, new, 2)
    got = vm.generate(
        inputs_embeds=e,
        attention_mask=m,
        max_new_tokens=new,
        num_beams=2,
        eos_token_id=[],
        pad_token_id=0,
        cpu_kernels=cpu_kernels,
    )
    assert torch.isin(ref, torch.tensor(tied)).float().mean() > 0.5  # mostly tied choices
    assert torch.equal(got, ref)
