"""Recipes pass ``loss_chunk_size`` to the LLM loss: "auto" (the default) chunks large
vocabularies; a recipe's loss and gradients with chunking equal the full-logits ones."""

import pytest
import torch

from voxlm.exceptions import ConfigError
from voxlm.linear_ce import LARGE_VOCAB, recipe_chunk_size
from voxlm.recipes.base import build_llm, model_parts
from voxlm.recipes.example import ExampleRecipe

TINY = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def test_recipe_chunk_size_resolution():
    assert recipe_chunk_size("auto", LARGE_VOCAB) == "auto"
    assert recipe_chunk_size("auto", LARGE_VOCAB - 1) is None
    assert recipe_chunk_size(None, 10**6) is None
    assert recipe_chunk_size("none", 10**6) is None
    assert recipe_chunk_size(64, 100) == 64
    for bad in (0, -3, True, "big", 2.5):
        with pytest.raises(ConfigError, match="loss_chunk_size"):
            recipe_chunk_size(bad, 100)


def test_build_llm_and_model_parts_set_the_chunk_size():
    assert build_llm({**TINY, "vocab_size": 300}).loss_chunk_size is None
    assert build_llm({**TINY, "vocab_size": 300}, loss_chunk_size=8).loss_chunk_size == 8
    llm, *_ = model_parts({"llm": {**TINY, "vocab_size": 300}, "loss_chunk_size": 5})
    assert llm.loss_chunk_size == 5
    with pytest.raises(ConfigError, match="loss_chunk_size"):
        model_parts({"llm": {**TINY, "vocab_size": 300}, "loss_chunk_size": "x"})


def test_recipe_loss_and_grads_chunked_equal_full_logits():
    """The example recipe at a 70,000-token vocabulary: its LLM gets "auto" chunking, the
    forward returns no logits, and loss and every gradient equal the full-logits forward
    (float32, summation order only: 1e-5 relative)."""
    torch.manual_seed(0)
    recipe = ExampleRecipe.from_config(
        {"name": "example", "lora_dropout": 0.0}, {"llm": {**TINY, "vocab_size": 70000}}
    )
    assert recipe.llm.loss_chunk_size == "auto"
    ids = torch.randint(3, 70000, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    recipe.train()
    out = recipe(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert out.logits is None
    out.loss.backward()
    chunked = {n: p.grad.clone() for n, p in recipe.named_parameters() if p.grad is not None}
    assert chunked
    recipe.zero_grad(set_to_none=True)
    recipe.llm.loss_chunk_size = None
    full = recipe(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert full.logits is not None
    full.loss.backward()
    torch.testing.assert_close(out.loss, full.loss, rtol=1e-5, atol=1e-6)
    for n, p in recipe.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(chunked[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)
