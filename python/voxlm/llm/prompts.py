"""Prompt templates of the methods, image placeholders and :func:`splice_image_tokens`."""

from __future__ import annotations

import torch

from ..exceptions import ConfigError, ShapeError

ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)
LLAMA3_SYSTEM = "You are a helpful assistant."


def image_placeholder(n: int, token: str = "<im_patch>") -> str:
    """``n`` image placeholder tokens (M3D/ViT3D: 256 x ``<im_patch>``)."""
    if n < 0:
        raise ConfigError(f"n: expected >= 0 image tokens, got {n}")
    return token * n


def format_prompt(
    template: str,
    instruction: str,
    input: str | None = None,
    system: str | None = None,
    image: str = "",
) -> str:
    """A prompt in one of the methods' templates.

    ``template``: ``"alpaca"`` (PICG), ``"vicuna"`` (LLaVA v1 / RRG24: ``USER: ... ASSISTANT:``),
    ``"llama3"`` (Llama-3 chat header format). ``image`` (e.g. :func:`image_placeholder`) goes
    before the instruction, on its own line.
    """
    body = f"{image}\n{instruction}" if image else instruction
    if template == "alpaca":
        return (
            ALPACA_INPUT.format(instruction=body, input=input)
            if input
            else ALPACA.format(instruction=body)
        )
    if template == "vicuna":
        return f"{system or VICUNA_SYSTEM} USER: {body} ASSISTANT:"
    if template == "llama3":
        return (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            f"{system or LLAMA3_SYSTEM}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
            f"{body}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    raise ConfigError(f"template: expected 'alpaca', 'vicuna' or 'llama3', got {template!r}")


def splice_image_tokens(
    text_embeds: torch.Tensor, image_tokens: torch.Tensor, placeholder_mask: torch.Tensor
) -> torch.Tensor:
    """Replace the embeddings at placeholder positions by image tokens (differentiable).

    Args:
        text_embeds: ``[B, T, H]``.
        image_tokens: ``[B, N, H]`` or ``[M, H]``: as many rows as placeholders, in order.
        placeholder_mask: ``[B, T]`` bool, True at image placeholder positions.
    """
    if text_embeds.dim() != 3:
        raise ShapeError(f"text_embeds: expected [B, T, H], got shape {tuple(text_embeds.shape)}")
    if placeholder_mask.shape != text_embeds.shape[:2]:
        raise ShapeError(
            f"placeholder_mask: expected shape {tuple(text_embeds.shape[:2])}, "
            f"got {tuple(placeholder_mask.shape)}"
        )
    if image_tokens.shape[-1] != text_embeds.shape[-1]:
        raise ShapeError(
            f"image_tokens: expected last dimension {text_embeds.shape[-1]} (hidden size), "
            f"got {tuple(image_tokens.shape)}"
        )
    n = int(placeholder_mask.sum())
    flat = image_tokens.reshape(-1, image_tokens.shape[-1])
    if flat.shape[0] != n:
        raise ShapeError(f"image_tokens: {n} placeholders but {flat.shape[0]} image tokens")
    return text_embeds.masked_scatter(
        placeholder_mask.bool().unsqueeze(-1), flat.to(text_embeds.dtype)
    )


__all__ = [
    "ALPACA",
    "ALPACA_INPUT",
    "VICUNA_SYSTEM",
    "LLAMA3_SYSTEM",
    "image_placeholder",
    "format_prompt",
    "splice_image_tokens",
]
