"""LLaMA-family language models on the Rust core.

* :class:`LlamaConfig` (:mod:`.config`): read from a HF ``config.json`` (LLaMA 1/2/3/3.1/3.2),
  validated in Rust.
* :class:`LlamaForCausalLM` (:mod:`.modeling`): an ``nn.Module`` whose ``state_dict()`` keys equal
  transformers'; the forward and the decode loop run in Rust (libtorch) on the module's own
  parameters.
* :class:`Tokenizer` (:mod:`.tokenizer`): HF ``tokenizer.json`` (tokenizers crate).
* :mod:`.prompts`: the prompt templates the methods use, image placeholder tokens and
  :func:`splice_image_tokens` (put projected image tokens into text embeddings).
"""

from __future__ import annotations

from .config import LlamaConfig, PathLike
from .modeling import (
    CausalLMOutput,
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    LlamaRotaryEmbedding,
    RMSNorm,
)
from .prompts import (
    ALPACA,
    ALPACA_INPUT,
    LLAMA3_SYSTEM,
    VICUNA_SYSTEM,
    format_prompt,
    image_placeholder,
    splice_image_tokens,
)
from .tokenizer import Tokenizer

__all__ = [
    "LlamaConfig",
    "LlamaForCausalLM",
    "CausalLMOutput",
    "Tokenizer",
    "splice_image_tokens",
    "format_prompt",
    "image_placeholder",
    "PathLike",
    "RMSNorm",
    "LlamaAttention",
    "LlamaMLP",
    "LlamaDecoderLayer",
    "LlamaRotaryEmbedding",
    "LlamaModel",
    "ALPACA",
    "ALPACA_INPUT",
    "VICUNA_SYSTEM",
    "LLAMA3_SYSTEM",
]
