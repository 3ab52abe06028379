"""RAD3D-Prefix: 3D radiology report generation with an anomaly-aware prefix for a frozen LLM
(``recipe: rad3d_prefix``).

What the method is (``../shared/DESIGN.md``): a frozen LLM (LLaMA-3.2-1B class), a frozen 3D
encoder, a multi-label diagnostic head on the encoder's features, and an *anomaly-aware prefix*:
a small transformer projector over ``[image embedding tokens ; embedded label logits]`` that
produces a fixed-length prefix for the LLM. Only the head and the projector train.

The paper has no public code, so every detail below is voxlm's choice; each is a Config field:

* **encoder** (``vision``): ``"vit3d"`` (:class:`voxlm.vision.ViT3D`, MONAI key names, M3D's
  32 x 256 x 256 / 4 x 16 x 16 by default, so M3D-CLIP's encoder loads via ``model.vision``) or
  ``"radfm"`` (:class:`voxlm.vision_radfm.RadFMViT3D`). Frozen and run under ``no_grad``; its
  patch tokens ``[B, N, D_v]`` are the features.
* **diagnostic head**: mean of the tokens -> LayerNorm -> Linear(D_v, L) -> logits; BCE with the
  dataset's labels (code 1 = positive), weight ``bce_weight``. ``detach_logits=True`` (default)
  keeps the LM loss out of the head, so its logits stay diagnoses (the projector learns to read
  them rather than re-purposing them).
* **image embedding tokens**: the patch tokens average-pooled along the token axis to
  ``image_tokens`` (adaptive 1D pooling of the encoder's raster order), Linear(D_v, width), plus
  learned positions.
* **embedded label logits**: one token per label, ``label_embed[j] + sigmoid(logit_j) *
  anomaly_embed[j]`` (a learned identity for the disease plus a learned direction scaled by its
  predicted probability, bounded in [0, 1]).
* **prefix projector**: ``prefix_length`` learned queries concatenated with the image and label
  tokens (plus a learned type embedding per group) through ``projector_depth`` pre-norm
  ``nn.TransformerEncoderLayer`` s (``projector_width``, ``projector_heads``, GELU, 4x MLP); the
  query outputs -> LayerNorm -> Linear(width, LLM hidden) are the prefix ``[B, prefix_length, H]``.
* **prompt**: ``[prefix ; BOS instruction report EOS]`` (:func:`voxlm.adapters.prepend_prefix`;
  the loss ignores the prefix and the instruction). The prefix is an input-dependent soft prompt
  on the input embeddings, not PEFT prefix-tuning's per-layer key/values, so it is saved as
  ``projector.safetensors``, not as a PEFT folder.
* ``anomaly_aware=False`` (the ablation): no head, no label tokens, the projector sees the image
  tokens only (the plain prefix); loss L_LM.
* **stages**: ``"diagnosis"`` (only when ``diagnosis_max_steps > 0``: the head alone on BCE, the
  LLM not run) then ``"prefix"`` (head + projector on ``L_LM + bce_weight * L_BCE``).
* **LLM**: frozen, any LLaMA; ``model.llm`` defaults to the LLaMA-3.2-1B shape
  (:data:`LLAMA_3_2_1B`: hidden 2048, 16 layers, 32 heads, 8 KV heads, vocab 128256, llama3 RoPE)
  initialised at random when no checkpoint path is given.
* **generation**: greedy, 256 new tokens (voxlm's defaults; Config fields).
* **evaluation**: as Dia-LLaMA's (BLEU-1..4, METEOR, ROUGE-L, CIDEr; clinical efficacy from a
  labeler of generated vs reference reports, and of the head's predictions vs the dataset labels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._bind import check_budget
from ..exceptions import ConfigError, DataError, ShapeError
from ..metrics import CHEXBERT_CONDITIONS
from .base import (
    PathLike,
    Recipe,
    check_numbers,
    config_from_dict,
    generate_kwargs,
    generation_settings,
    model_parts,
    recipe_train_args,
)
from .dia_llama import (
    _DTYPES,
    DiaLlamaTransform,
    Generation,
    _check_data_section,
    _decode,
    _labels_of,
    _load_part,
    _read_state_dict,
    check_generation_fields,
    check_volume_fields,
    evaluate_reports,
    labelled_records,
    load_recipe,
    save_recipe,
)
from .registry import register_recipe

#: LLaMA-3.2-1B's shape (``meta-llama/Llama-3.2-1B`` config.json), the default frozen LLM.
LLAMA_3_2_1B: dict[str, Any] = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
)

INSTRUCTION = "Write the findings of this CT scan."


@dataclass
class Rad3dPrefixConfig:
    """RAD3D-Prefix settings (every choice is voxlm's; see the module docstring). Sizes
    ``(D, H, W)``."""

    # data / preprocessing (resize + global min-max to [0, 1], as the Dia-LLaMA recipe)
    image_size: list[int] = field(default_factory=lambda: [32, 256, 256])
    in_channels: int = 1
    resize_mode: str = "trilinear"
    conditions: list[str] = field(default_factory=lambda: list(CHEXBERT_CONDITIONS))
    max_length: int = 1024
    instruction: str = INSTRUCTION
    # frozen encoder
    vision: str = "vit3d"
    vision_patch_size: list[int] = field(default_factory=lambda: [4, 16, 16])
    vision_max_size: list[int] = field(default_factory=lambda: [32, 256, 256])
    vision_dim: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    vision_dim_head: int = 64
    vision_mlp_dim: int = 3072
    vision_dropout: float = 0.0
    vision_emb_dropout: float = 0.0
    # anomaly-aware prefix
    anomaly_aware: bool = True
    detach_logits: bool = True
    image_tokens: int = 32
    prefix_length: int = 32
    projector_width: int = 512
    projector_depth: int = 2
    projector_heads: int = 8
    projector_dropout: float = 0.1
    bce_weight: float = 1.0
    diagnosis_max_steps: int = 0
    threshold: float = 0.5
    # training (voxlm's defaults)
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.03
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 10
    weight_decay: float = 0.01
    per_device_train_batch_size: int = 4
    # generation
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    num_beams: int = 1
    repetition_penalty: float = 1.0
    seed: int | None = 0
    eval_batch_size: int = 4
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_volume_fields(self)
        check_generation_fields(self)
        check_numbers(
            self,
            positive_ints=("image_tokens", "prefix_length", "projector_width", "projector_heads"),
        )
        for name in ("image_tokens", "prefix_length", "projector_width", "projector_heads"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"recipe.{name}: expected > 0, got {getattr(self, name)}")
        check_numbers(self, ints=("projector_depth",))
        p = self.projector_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ConfigError(
                f"recipe.projector_dropout: expected a probability in [0, 1), got {p!r}"
            )
        if self.projector_depth < 0:
            raise ConfigError(
                f"recipe.projector_depth: expected an integer >= 0, got {self.projector_depth}"
            )
        check_budget(
            "recipe.projector_depth x projector_width",
            self.projector_depth * 12 * self.projector_width**2,
        )
        if self.projector_width % self.projector_heads:
            raise ConfigError(
                f"recipe.projector_width {self.projector_width} must be divisible by "
                "projector_heads "
                f"{self.projector_heads}"
            )
        if self.diagnosis_max_steps and not self.anomaly_aware:
            raise ConfigError(
                "recipe.diagnosis_max_steps: the diagnosis stage needs anomaly_aware=True (a head)"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], section: str = "recipe") -> Rad3dPrefixConfig:
        return config_from_dict(cls, d, section)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# parts


class DiagnosticHead(nn.Module):
    """``[B, N, D] -> [B, L]`` logits: token mean -> LayerNorm -> Linear."""

    def __init__(self, dim: int, num_labels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_labels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(tokens.mean(1)))


class AnomalyAwarePrefixProjector(nn.Module):
    """``(tokens [B, N, D_v], logits [B, L] or None) -> prefix [B, prefix_length, hidden]``: a
    small transformer over ``[queries ; image tokens ; label tokens]`` (module docstring)."""

    def __init__(
        self,
        vision_dim: int,
        hidden_size: int,
        num_labels: int,
        image_tokens: int = 32,
        prefix_length: int = 32,
        width: int = 512,
        depth: int = 2,
        heads: int = 8,
        dropout: float = 0.1,
        anomaly_aware: bool = True,
    ) -> None:
        super().__init__()
        self.image_tokens, self.prefix_length, self.anomaly_aware = (
            image_tokens,
            prefix_length,
            anomaly_aware,
        )
        self.num_labels = num_labels
        self.image_proj = nn.Linear(vision_dim, width)
        self.image_pos = nn.Parameter(torch.zeros(image_tokens, width))
        self.queries = nn.Parameter(torch.randn(prefix_length, width) * 0.02)
        self.type_embed = nn.Parameter(torch.zeros(3, width))  # query, image, label
        if anomaly_aware:
            self.label_embed = nn.Parameter(torch.randn(num_labels, width) * 0.02)
            self.anomaly_embed = nn.Parameter(torch.randn(num_labels, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = (
            nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            if depth
            else nn.Identity()
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, hidden_size)
        nn.init.trunc_normal_(self.image_pos, std=0.02)

    def label_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, L] -> [B, L, width]``: ``label_embed + sigmoid(logit) * anomaly_embed``."""
        return self.label_embed + torch.sigmoid(logits)[..., None] * self.anomaly_embed

    def forward(self, tokens: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        b = tokens.shape[0]
        img = F.adaptive_avg_pool1d(tokens.transpose(1, 2), self.image_tokens).transpose(1, 2)
        parts = [
            self.queries.expand(b, -1, -1) + self.type_embed[0],
            self.image_proj(img) + self.image_pos + self.type_embed[1],
        ]
        if self.anomaly_aware:
            if logits is None or logits.shape != (b, self.num_labels):
                got = None if logits is None else tuple(logits.shape)
                raise ShapeError(
                    f"prefix projector: expected label logits [{b}, {self.num_labels}], got {got}"
                )
            parts.append(self.label_tokens(logits) + self.type_embed[2])
        x = self.blocks(torch.cat(parts, 1))
        return self.out(self.norm(x[:, : self.prefix_length]))


@dataclass
class Rad3dPrefixOutput:
    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None = None
    bce_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    label_logits: torch.Tensor | None = None


class Rad3dPrefixCollator:
    """``images`` [B, C, D, H, W], ``input_ids`` / ``attention_mask`` / ``labels`` [B, T] (``BOS
    instruction ' ' report EOS``, right padding, -100 on BOS + instruction + padding),
    ``cls_labels`` [B, L], ``ids``."""

    def __init__(self, model: Rad3dPrefix) -> None:
        self.tokenizer, self.config = model.tokenizer, model.config
        self.prompt = model.prompt_ids()
        self.eos, self.pad = model.eos_id, model.pad_id

    def images(self, items: Any) -> torch.Tensor:
        want = [self.config.in_channels, *self.config.image_size]
        for it in items:
            img = it.get("image")
            if not isinstance(img, torch.Tensor) or list(img.shape) != want:
                got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise ShapeError(
                    f"RAD3D-Prefix collator: record {it.get('id', '?')!r} image {got}, expected "
                    f"{tuple(want)} (recipe.in_channels, recipe.image_size)"
                )
        return torch.stack([it["image"].to(torch.float32) for it in items])

    def __call__(self, items: Any) -> dict[str, Any]:
        c = self.config
        seqs = []
        for it in items:
            if "report" not in it:
                raise DataError(
                    f"RAD3D-Prefix collator: record {it.get('id', '?')!r} has no 'report'"
                )
            ans = self.tokenizer.encode(" " + str(it["report"]), add_special_tokens=False)
            ans = ans[: c.max_length - len(self.prompt) - 1] + [self.eos]
            seqs.append(self.prompt + ans)
        t = max(len(s) for s in seqs)
        b = len(items)
        ids = torch.full((b, t), self.pad, dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.long)
        labels = torch.full((b, t), -100, dtype=torch.long)
        n = len(self.prompt)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            labels[i, n : len(s)] = torch.tensor(s[n:])
        out = {
            "images": self.images(items),
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "ids": [str(it.get("id", i)) for i, it in enumerate(items)],
        }
        if c.anomaly_aware:
            out["cls_labels"] = torch.stack(
                [_labels_of(it, len(c.conditions), "RAD3D-Prefix collator") for it in items]
            )
        return out


# ---------------------------------------------------------------------------------------------
# recipe


def _stage_setter(stage: str) -> Callable[[nn.Module], None]:
    def set_trainable(model: nn.Module) -> None:
        assert isinstance(model, Rad3dPrefix)
        model.set_trainable(stage)

    return set_trainable


class Rad3dPrefix(Recipe):
    """RAD3D-Prefix (module docstring). Parts: ``vision`` (frozen) -> ``head`` (diagnostic
    logits) -> ``projector`` (anomaly-aware prefix) -> ``llm`` (frozen)."""

    Config = Rad3dPrefixConfig
    llm: Any
    vision: Any
    head: Any
    projector: Any

    def __init__(
        self,
        config: Rad3dPrefixConfig,
        llm: Any,
        tokenizer: Any,
        model_spec: Mapping[str, Any] | None = None,
        add_adapter: bool = False,
    ) -> None:
        super().__init__()
        c = self.config = config
        self.model_spec = dict(model_spec or {})
        self.tokenizer = tokenizer
        if tokenizer.vocab_size > int(llm.config.vocab_size):
            raise ConfigError(
                f"model.tokenizer has {tokenizer.vocab_size} tokens, the LLM's vocabulary "
                f"{llm.config.vocab_size}"
            )
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ConfigError(
                "model.tokenizer: the tokenizer has no eos_token (reports end with EOS)"
            )
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_id
        self.vision = self._build_vision(c)
        L = len(c.conditions)
        self.head = DiagnosticHead(c.vision_dim, L) if c.anomaly_aware else None
        self.projector = AnomalyAwarePrefixProjector(
            c.vision_dim,
            int(llm.config.hidden_size),
            L,
            c.image_tokens,
            c.prefix_length,
            c.projector_width,
            c.projector_depth,
            c.projector_heads,
            c.projector_dropout,
            c.anomaly_aware,
        )
        self.llm = llm
        dtype = _DTYPES[c.dtype]
        for m in (self.vision, self.head, self.projector):
            if m is not None:
                m.to(dtype)
        self._rebind_parts()
        self._stage = "prefix"
        self.set_trainable()

    @staticmethod
    def _build_vision(c: Rad3dPrefixConfig) -> nn.Module:
        from .dia_llama import DiaLlama

        return DiaLlama._build_vision(c)  # type: ignore[arg-type]  # same fields, same two encoders

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], model: Mapping[str, Any]) -> Rad3dPrefix:
        """``model``: ``llm`` (HF folder or LlamaConfig dict; default :data:`LLAMA_3_2_1B`, random),
        ``tokenizer`` (default ``bundled:ctrg-bpe``), optional ``vision`` weights."""
        config = cls.Config.from_dict(recipe)
        llm, tok, spec, model = model_parts(model, _DTYPES[config.dtype], LLAMA_3_2_1B)
        self = cls(config, llm, tok, spec)
        if model.get("vision"):
            self.load_vision_weights(model["vision"])
            self.model_spec["vision"] = str(model["vision"])
        return self

    def load_vision_weights(self, path: PathLike) -> None:
        """Pretrained encoder weights: MONAI ViT keys (bare or under ``vision_encoder.``, e.g.
        M3D-CLIP) for ``vit3d``; RadFM ``vit_3d`` keys (bare or under
        ``embedding_layer.vision_encoder.``) for ``radfm``."""
        from ..vision_radfm import RADFM_PREFIX

        sd = _read_state_dict(path)
        pre = RADFM_PREFIX if self.config.vision == "radfm" else "vision_encoder."
        if any(k.startswith(pre) for k in sd):
            sd = {k[len(pre) :]: v for k, v in sd.items() if k.startswith(pre)}
        sd = {
            k: v
            for k, v in sd.items()
            if not k.startswith("classification_head") and ".norm_cross_attn." not in k
        }
        _load_part(self.vision, sd, f"{path} (vision)")
        self._rebind_parts()

    # -- training ---------------------------------------------------------------------------

    def set_trainable(self, stage: str | None = None) -> None:
        """``"prefix"``: head + projector; ``"diagnosis"``: head only. Encoder and LLM frozen."""
        if stage is not None:
            self._stage = stage
        for n, p in self.named_parameters():
            if n.startswith("head."):
                p.requires_grad_(True)
            elif n.startswith("projector."):
                p.requires_grad_(self._stage == "prefix")
            else:
                p.requires_grad_(False)

    def stages(self, args: Any) -> list[Any]:
        """``"diagnosis"`` (if ``diagnosis_max_steps > 0``: the head on BCE for that many steps)
        and ``"prefix"`` (head + projector). Hyper-parameters as :meth:`DiaLlama.stages`: the
        recipe's :data:`TRAIN_FIELDS` fill what ``train`` leaves at TrainingArguments' defaults."""
        from ..train import Stage

        a = recipe_train_args(self.config, args)
        out = []
        if self.config.diagnosis_max_steps > 0:
            out.append(
                Stage(
                    "diagnosis",
                    a.replace(max_steps=int(self.config.diagnosis_max_steps)),
                    _stage_setter("diagnosis"),
                )
            )
        out.append(Stage("prefix", a, _stage_setter("prefix")))
        return out

    def transform(self) -> DiaLlamaTransform:
        c = self.config
        return DiaLlamaTransform(c.image_size, c.in_channels, c.resize_mode)

    def datasets(self, data: Mapping[str, Any]) -> tuple[Any, Any]:
        d = _check_data_section(data)
        ev = d.get("eval_split", "validation")
        return self.dataset(d, d.get("train_split", "train")), (self.dataset(d, ev) if ev else None)

    def dataset(self, data: Mapping[str, Any], split: str) -> Any:
        from ..datasets import ReportDataset

        c = self.config
        needs = "the diagnostic head" if c.anomaly_aware else None
        records = labelled_records(data, split, c.conditions, needs)
        return ReportDataset(records, transform=self.transform())

    def collator(self) -> Rad3dPrefixCollator:
        return Rad3dPrefixCollator(self)

    # -- forward ----------------------------------------------------------------------------

    def prompt_ids(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + self.tokenizer.encode(
            self.config.instruction, add_special_tokens=False
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen encoder: ``[B, C, D, H, W] -> [B, N, D_v]`` (no grad)."""
        c = self.config
        want = [c.in_channels, *c.image_size]
        if images.dim() != 5 or list(images.shape[1:]) != want:
            raise ShapeError(
                f"RAD3D-Prefix: images {tuple(images.shape)}, expected [B, "
                f"{', '.join(map(str, want))}]"
            )
        images = images.to(self.projector.out.weight.dtype)
        with torch.no_grad():
            if c.vision == "radfm":
                tokens, _ = self.vision(images.permute(0, 1, 3, 4, 2))
            else:
                tokens, _ = self.vision(images)
        return tokens

    def label_logits(self, tokens: torch.Tensor) -> torch.Tensor | None:
        return None if self.head is None else self.head(tokens)

    @property
    def has_label_predictor(self) -> bool:
        return self.head is not None

    def prefix(self, tokens: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        if logits is not None and self.config.detach_logits:
            logits = logits.detach()
        return self.projector(tokens, logits)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cls_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Rad3dPrefixOutput:
        """``L_LM + bce_weight * L_BCE`` (``"prefix"`` stage) or ``L_BCE`` (``"diagnosis"``)."""
        from ..adapters import prepend_prefix

        tokens = self.encode(images)
        logits = self.label_logits(tokens)
        bce = None
        if logits is not None and cls_labels is not None:
            bce = F.binary_cross_entropy_with_logits(logits.float(), cls_labels.float())
        elif logits is not None and labels is not None:
            raise DataError(
                "RAD3D-Prefix: training batches need cls_labels for the diagnostic head"
            )
        if self._stage == "diagnosis" and self.training:
            return Rad3dPrefixOutput(loss=bce, bce_loss=bce, label_logits=logits)
        if input_ids is None:
            raise ShapeError("RAD3D-Prefix: forward needs input_ids in the prefix stage")
        emb = self.llm.get_input_embeddings()(input_ids)
        emb, mask, lab = prepend_prefix(self.prefix(tokens, logits), emb, attention_mask, labels)
        out = self.llm(inputs_embeds=emb, attention_mask=mask, labels=lab)
        lm = out.loss
        if lm is None:
            loss = bce
        elif bce is None:
            loss = lm
        else:
            loss = lm + self.config.bce_weight * bce
        return Rad3dPrefixOutput(
            loss=loss, lm_loss=lm, bce_loss=bce, logits=out.logits, label_logits=logits
        )

    # -- generation -------------------------------------------------------------------------

    def generation_settings(self, **overrides: Any) -> dict[str, Any]:
        return generation_settings(self.config, overrides)

    @torch.no_grad()
    def predict_labels(self, images: torch.Tensor) -> np.ndarray:
        """``[B, L]`` 0/1: ``sigmoid(logits) >= threshold``."""
        logits = self.label_logits(self.encode(images))
        if logits is None:
            raise ConfigError("RAD3D-Prefix: anomaly_aware=False has no diagnostic head")
        return (torch.sigmoid(logits.float()) >= self.config.threshold).long().cpu().numpy()

    @torch.no_grad()
    def generate(
        self, images: torch.Tensor, return_dict: bool = False, **overrides: Any
    ) -> list[str] | Generation:
        """Reports for ``images`` [B, C, D, H, W] (every sample has the same instruction, so the
        batch needs no padding between prefix and prompt)."""
        from ..adapters import prepend_prefix

        g = self.generation_settings(**overrides)
        was = self.training
        self.eval()
        try:
            dev = self.projector.out.weight.device
            tokens = self.encode(images.to(dev))
            logits = self.label_logits(tokens)
            b = images.shape[0]
            ids = torch.tensor([self.prompt_ids()] * b, dtype=torch.long, device=dev)
            emb, mask, _ = prepend_prefix(
                self.prefix(tokens, logits), self.llm.get_input_embeddings()(ids)
            )
            new = self.llm.generate(
                inputs_embeds=emb,
                attention_mask=mask,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                **generate_kwargs(g),
            )
            reports = [_decode(self.tokenizer, row, self.eos_id) for row in new.cpu()]
            if logits is None:
                lab = np.zeros((b, len(self.config.conditions)), dtype=np.int64)
            else:
                lab = (torch.sigmoid(logits.float()) >= self.config.threshold).long().cpu().numpy()
        finally:
            self.train(was)
        if return_dict:
            return Generation(
                reports=reports, labels=lab, prompts=[self.config.instruction] * b, tokens=new.cpu()
            )
        return reports

    def evaluate(
        self,
        dataset: Any,
        output_dir: PathLike | None = None,
        labeler: Callable[[list[str]], Any] | None = None,
        batch_size: int | None = None,
        meteor: bool | None = None,
        **generate_kwargs: Any,
    ) -> dict[str, Any]:
        """As :meth:`voxlm.recipes.dia_llama.DiaLlama.evaluate`; ``prompt_labels`` scores the
        diagnostic head's predictions against the dataset labels. Without ``labeler`` the scores
        of the built-in keyword labeler go under ``clinical_efficacy_keyword`` (``labeler: "keyword
        (voxlm.synth templates)"``); CheXbert-style clinical efficacy of real reports needs a
        ``labeler=`` callable (``reports -> [N, L]`` CheXbert codes)."""
        return evaluate_reports(
            self,
            dataset,
            output_dir,
            labeler=labeler,
            batch_size=batch_size,
            meteor=meteor,
            **generate_kwargs,
        )

    # -- persistence ------------------------------------------------------------------------

    def _parts(self) -> dict[str, nn.Module | None]:
        return {"vision": self.vision, "head": self.head, "projector": self.projector}

    def save_pretrained(self, path: PathLike) -> None:
        """``config.json`` (``"recipe": "rad3d_prefix"``), ``vision.safetensors`` (the frozen
        encoder), ``head.safetensors``, ``projector.safetensors``, ``tokenizer/``; the frozen base
        LLM is referenced by path (saved under ``llm/`` only when it was randomly initialised)."""
        save_recipe(self, path, self._parts())

    @classmethod
    def from_pretrained(cls, path: PathLike) -> Rad3dPrefix:
        return load_recipe(cls, path)


register_recipe("rad3d_prefix")(Rad3dPrefix)

__all__ = [
    "Rad3dPrefix",
    "Rad3dPrefixConfig",
    "AnomalyAwarePrefixProjector",
    "DiagnosticHead",
    "LLAMA_3_2_1B",
    "INSTRUCTION",
]
