"""Fixtures several test files share (one definition each; bench/bench_recipes.py imports the
Dia-LLaMA ones through tests/test_recipe_dia_llama.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: ``LlamaConfig`` fields of the tiny LLaMA the recipe tests build (64 wide, 2 layers, 4 query /
#: 2 key-value heads); the vocabulary comes from the tokenizer.
TINY_LLAMA: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)

#: The tokenizer every recipe test uses (1024 BPE tokens, shipped with voxlm).
TOKENIZER = "bundled:ctrg-bpe"


def tiny_recipe(
    cls: Any, recipe: Mapping[str, Any], llm: Mapping[str, Any] = TINY_LLAMA, **kw: Any
) -> Any:
    """``cls.from_config({**recipe, **kw}, {"llm": llm, "tokenizer": TOKENIZER})`` after
    ``torch.manual_seed(0)`` (so each call builds the same weights)."""
    torch.manual_seed(0)
    return cls.from_config({**recipe, **kw}, {"llm": dict(llm), "tokenizer": TOKENIZER})


#: ``transformers.LlamaConfig`` fields of the tiny HF LLaMA the adapter tests build (vocabulary
#: 128, 64 wide, 2 layers, 4 query / 2 key-value heads).
TINY_HF_LLAMA: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def hf_tiny_llama(**overrides: Any) -> Any:
    """``transformers.LlamaForCausalLM`` of :data:`TINY_HF_LLAMA` with ``overrides`` (random
    init from torch's global RNG)."""
    import transformers

    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY_HF_LLAMA, **overrides}))


#: ``voxlm.llm.LlamaConfig`` fields of the smallest LLaMA the bad-input tests build (16 wide,
#: 1 layer, 2 query / 1 key-value heads, vocabulary 32)
TINY_LM = dict(
    vocab_size=32,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=32,
)
