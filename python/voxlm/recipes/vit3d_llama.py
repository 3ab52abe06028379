"""ViT3D alignment of a LLaMA (M3D / AMOS-MM recipe): a 3D ViT over the volume, M3D's spatial
pooling projector to the LLM width, the projected image tokens spliced into the prompt at
``<im_patch>`` placeholders, and a LLaMA (frozen, with LoRA in stage 2) that writes the report.

Stage 1 trains the projector only; stage 2 adds LoRA (r16/a32 on every linear, dropout 0.05 in
the paper) — :meth:`ViT3DLlama.stage` switches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adapters import LoraConfig, add_lora
from ..llm import LlamaForCausalLM, splice_image_tokens
from ..vision import SpatialPoolingProjector, ViT3D


class ViT3DLlama(nn.Module):
    """``forward(volumes [B, 1, D, H, W], input_ids [B, T], labels)`` -> LM output, where each
    prompt holds ``num_image_tokens`` ``<im_patch>`` placeholders."""

    def __init__(self, vision: ViT3D, llm: LlamaForCausalLM, image_token_id: int, pooling_size: int = 2) -> None:
        super().__init__()
        self.vision, self.llm, self.image_token_id = vision, llm, image_token_id
        self.projector = SpatialPoolingProjector(vision.img_size, vision.patch_size, vision.hidden_size,
                                                 llm.config.hidden_size, pooling_size=pooling_size)
        g = [s // pooling_size for s in vision.grid]
        self.num_image_tokens = g[0] * g[1] * g[2]

    def stage(self, n: int, lora: LoraConfig | None = None) -> None:
        """Stage 1: only the projector trains. Stage 2: the projector and LoRA on the LLM."""
        for p in self.parameters():
            p.requires_grad_(False)
        if n == 2:
            if not any(".lora_" in k for k, _ in self.llm.named_parameters()):
                add_lora(self.llm, lora or LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
            for k, p in self.llm.named_parameters():
                p.requires_grad_(".lora_" in k)
        for p in self.projector.parameters():
            p.requires_grad_(True)

    def embed(self, volumes: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vision(volumes)
        image = self.projector(tokens)
        text = self.llm.get_input_embeddings()(input_ids)
        return splice_image_tokens(text, image, input_ids == self.image_token_id)

    def forward(self, volumes: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> Any:
        return self.llm(inputs_embeds=self.embed(volumes, input_ids), attention_mask=attention_mask, labels=labels)

    @torch.no_grad()
    def generate(self, volumes: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kw: Any) -> torch.Tensor:
        return self.llm.generate(inputs_embeds=self.embed(volumes, input_ids), attention_mask=attention_mask, **kw)

    def prompt(self, question: str = "Write the findings of this chest CT.") -> str:
        """The image placeholders followed by the instruction."""
        return "<im_patch>" * self.num_image_tokens + f"\n{question}\n"
