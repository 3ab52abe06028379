"""Bad input to LlamaForCausalLM's constructor, forward and generate: a voxlm exception naming
the argument (were ValueError/RuntimeError/AttributeError/TypeError from torch or Python, or a
mask of 2s silently used)."""

from __future__ import annotations

import pytest
import torch

from voxlm import llm
from voxlm.exceptions import CheckpointError, ConfigError, DTypeError, ShapeError, VoxlmError

from ._fixtures import TINY_LM

CFG = llm.LlamaConfig(**TINY_LM)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return llm.LlamaForCausalLM(CFG).eval()


IDS = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda m: m.generate(IDS, eos_token_id="x"), ConfigError, ("eos_token_id", "'x'")),
        (lambda m: m.generate(IDS, eos_token_id=[1, 99]), ConfigError, ("[0, 32)",)),
        (lambda m: m.generate(IDS, eos_token_id=True), ConfigError, ("eos_token_id",)),
        (lambda m: m.generate(IDS, pad_token_id=-1), ConfigError, ("pad_token_id",)),
        (lambda m: m.generate(IDS, do_sample=True, seed=2**70), ConfigError, ("seed",)),
        (lambda m: m.generate(IDS, seed="1"), ConfigError, ("seed",)),
        (lambda m: m.generate(IDS, max_new_tokens=2.5), ConfigError, ("max_new_tokens",)),
        (lambda m: m.generate(IDS, num_beams=0), ConfigError, ("num_beams",)),
        (
            lambda m: m.generate(IDS, attention_mask=torch.tensor([[1, 2, 1]])),
            ShapeError,
            ("attention_mask", "[2]"),
        ),
        (
            lambda m: m(IDS, attention_mask=torch.tensor([[0.5, 1.0, 1.0]])),
            ShapeError,
            ("attention_mask", "0.5"),
        ),
        (
            lambda m: m(IDS, attention_mask=torch.ones(1, 3, dtype=torch.complex64)),
            DTypeError,
            ("attention_mask",),
        ),
        (lambda m: llm.LlamaForCausalLM(CFG, dtype=torch.int64), DTypeError, ("dtype",)),
        (lambda m: llm.LlamaForCausalLM(CFG, device="gpu"), VoxlmError, ("device", "'gpu'")),
        (lambda m: llm.LlamaForCausalLM(5), ConfigError, ("config", "LlamaConfig", "int")),
        (lambda m: llm.LlamaForCausalLM({"hidden_size": 16}), ConfigError, ("num_attention",)),
        (lambda m: llm.LlamaForCausalLM.from_pretrained(5), CheckpointError, ("path", "5")),
    ],
)
def test_llm_arguments(model, call, exc, words):
    with pytest.raises(exc) as e:
        call(model)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_valid_masks_and_ids_unchanged(model):
    a = model(IDS).logits
    for mask in (torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3).long()):
        assert torch.equal(model(IDS, attention_mask=mask).logits, a)
    out = model.generate(IDS, max_new_tokens=2, eos_token_id=[1, 2], seed=3)
    assert out.shape[1] <= 5
    d = {k: getattr(CFG, k) for k in ("vocab_size", "hidden_size", "intermediate_size")}
    d |= {"num_hidden_layers": 1, "num_attention_heads": 2}
    assert llm.LlamaForCausalLM(d).config.hidden_size == 16


def test_linear_cross_entropy_names_non_tensors():
    import numpy as np

    from voxlm.exceptions import VoxlmTypeError
    from voxlm.linear_ce import linear_cross_entropy

    w, lab = torch.randn(5, 4), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(VoxlmTypeError, match="hidden: expected a torch.Tensor, got ndarray"):
        linear_cross_entropy(np.ones((2, 3, 4)), w, lab)
    with pytest.raises(DTypeError, match="weight: expected a floating-point tensor"):
        linear_cross_entropy(torch.ones(2, 3, 4), w.long(), lab)
    with pytest.raises(VoxlmTypeError, match="labels"):
        linear_cross_entropy(torch.ones(2, 3, 4), w, [[0, 0, 0], [0, 0, 0]])
