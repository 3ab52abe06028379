"""Dia-LLaMA: CT report generation with diagnostic text prompts (``recipe: dia_llama``).

Read from the released code (zhi-xuan-chen/Dia-LLaMA; facts in ``../shared/DESIGN.md``):

* ``src/Model/DiaLLaMA/multimodality_model.py`` (``MultiLLaMAForCausalLM``): LLaMA-2-7B-chat with
  PEFT LoRA ``r=8, lora_alpha=32, lora_dropout=0.1`` on PEFT's default LLaMA targets
  (``q_proj``, ``v_proj``); loss ``output.loss + ctr_loss * 4``; ``generate`` predicts the labels
  from the prototypes, writes the diagnostic prompt and calls ``lang_model.generate(inputs_embeds,
  max_new_tokens=300, top_k=50)`` with the base model's generation config.
* ``src/Model/DiaLLaMA/my_embedding_layer.py`` (``MyEmbedding``): RadFM ``vit_3d`` (512 / 512 /
  patch 32 / frame patch 4 / 768 / 12 x 8 heads / mlp 2048 / dropout 0.1) -> perceiver
  (``helpers.py``, 32 latents, depth 6) -> ``fc`` Linear(768, 4096); disease-aware attention
  (``prototype`` [14, 1024] softmaxed over the 1024 tokens); prototype memory bank (``proj``,
  ``pos_sample_memory``, ``neg_sample_memory`` [14, 1, 768], ``temp`` 0.07); the image tokens
  ``<image0>`` .. ``<image31>`` (ids past the LLM vocabulary) take the 32 perceiver outputs and
  ``<image>`` / ``</image>`` two learned embeddings (``figure_token_weight``).
* ``src/Dataset/my_dataset/CTRG_dataset.py``: SimpleITK array, slices resized, nearest zoom to
  3 x 512 x 512 x 64, global min-max to [0, 1]; labels: CSV code 1 = positive, everything else
  negative; the prompt ``The "{disease}" is positive|negative. `` x 14 followed by the fixed
  instruction :data:`INSTRUCTION`; the report's bullets ``•`` are removed
  (``dataset_train.py``). ``src/train.py`` (``DataCollator``): one volume per batch is
  interpolated (nearest) to 256 x 256 x 64 -> 8 x 8 x 16 = 1024 ViT tokens.
* ``dataset_train.py``: text = ``<image><image0>..<image31></image>`` + prompt + instruction +
  ``' '`` + report, EOS appended; labels -100 on the question, padding and image tokens.
  ``dataset_test.py`` / ``test.py``: the question is the image tokens + the *predicted* prompt +
  instruction; the report is what the model generates after it.
* ``scripts/train.sh``: lr 5e-5, ``constant_with_warmup`` with 20 warmup steps, gradient
  accumulation 8, batch 1, 50 epochs, weight decay 0, bf16, DeepSpeed ZeRO-2.
* ``utils/metrics_clinical.py``: clinical efficacy from CheXbert labels of generated and reference
  reports (code 1 = positive), ``tp / (tp + fp + 1e-6)`` ...; ``utils/metrics_nlg.py``:
  pycocoevalcap BLEU-1..4, METEOR, ROUGE-L, CIDEr.

What trains (one stage, ``"finetune"``, as the released code: nothing of ``MyEmbedding`` is frozen,
the LLM is PEFT-wrapped): the vision encoder (``freeze_vision=True`` freezes it), the perceiver,
the projector and the two figure-token embeddings, the disease attention, the prototype bank, the
LoRA matrices. The base LLM (and its token embeddings) stay frozen.

Where the paper and the code differ (default = released code):

* loss: ``loss_weighting="released"``: ``L_LM + dp_weight * L_DP`` with ``dp_weight=4`` (the code);
  ``"paper"``: Eq. 7, ``L = L_DP + lambda * L_LM`` (``lm_weight`` = lambda; the paper gives no
  value in its text we could read, so the default 1.0 is voxlm's, not the paper's).
* labels at inference: the released ``generate`` classifies from ``MyEmbedding.forward(mode=
  'cls')``, which sums the disease-weighted tokens over the diseases instead of over the tokens
  (its own comment expects the pooled ``b, 14, 768``), so disease ``i`` is judged from token
  ``i``. The default (``inference_features="released"``) reproduces that computation exactly
  (tested against a transcription), as every paper/code difference here defaults to the code;
  ``"pooled"`` classifies from the pooled features the prototypes were trained on (the paper's
  description, and what voxlm's demo and fidelity experiments use).
* the released ``MyEmbedding`` also builds ``group_cls_head`` (14 x Linear(768, 2)) whose logits
  no loss uses. voxlm builds it only for the ``use_prototypes=False`` ablation, where it *replaces*
  the prototype bank as the label predictor (cross-entropy, same weight as ``L_DP``).

Ablation switches (bench/fidelity.py): ``use_prototypes`` (False: the linear head above),
``use_disease_attention`` (False: every disease pools the mean of the tokens), and
``use_diagnostic_prompts`` (False: the prompt is the instruction alone; the label loss still
trains the shared features when a predictor is on).

voxlm's differences, all documented where they act: the image placeholders are ids
``V .. V+33`` (``V`` = the LLM vocabulary size) instead of added tokenizer tokens, so any
``tokenizer.json`` works unchanged; the prompt and the report are encoded separately and
concatenated (the released code encodes ``question + ' ' + answer`` together and masks the first
``len(tokenize(question))`` tokens, which differ only where a BPE merge would cross the boundary);
volumes use voxlm's channel-first ``[C, D, H, W]`` and are permuted to RadFM's ``[C, H, W, D]``
inside :meth:`DiaLlama.vision_tokens`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..datasets.ctrg_chest import GUIDE
from ..exceptions import CheckpointError, ConfigError, DataError, DTypeError, ShapeError
from ..metrics import CHEXBERT_CONDITIONS, diagnostic_prompt
from .base import (
    PathLike,
    Recipe,
    check_batch_items,
    check_numbers,
    check_saved_recipe,
    config_from_dict,
    ensure_synth_data,
    generate_kwargs,
    generation_settings,
    jsonable,
    model_parts,
    recipe_train_args,
    tokenizer_file,
    write_eval_outputs,
)
from .registry import register_recipe

#: The instruction after the diagnostic prompt, verbatim from Dia-LLaMA's ``CTRG_dataset.py``
#: (``guide``), trailing space included (one copy: :data:`voxlm.datasets.ctrg_chest.GUIDE`).
INSTRUCTION = GUIDE

# ---------------------------------------------------------------------------------------------
# config


@dataclass
class DiaLlamaConfig:
    """Dia-LLaMA's settings, defaults from the released code (module docstring).

    Sizes are voxlm-ordered ``(D, H, W)``: ``image_size`` (64, 256, 256) is Dia-LLaMA's 256 x 256 x
    64; ``vision_patch_size`` (4, 32, 32) is RadFM's 32 x 32 x 4; ``vision_max_size`` (512, 512,
    512) the extent RadFM's position tables cover.
    """

    # data / preprocessing (CTRG_dataset.py, train.py DataCollator)
    image_size: list[int] = field(default_factory=lambda: [64, 256, 256])
    in_channels: int = 3
    resize_mode: str = "nearest"
    conditions: list[str] = field(default_factory=lambda: list(CHEXBERT_CONDITIONS))
    max_length: int = 2048
    # vision: "radfm" (RadFM vit_3d, RadFM key names) or "vit3d" (voxlm.vision.ViT3D, MONAI names)
    vision: str = "radfm"
    vision_patch_size: list[int] = field(default_factory=lambda: [4, 32, 32])
    vision_max_size: list[int] = field(default_factory=lambda: [512, 512, 512])
    vision_dim: int = 768
    vision_depth: int = 12
    vision_heads: int = 8
    vision_dim_head: int = 64
    vision_mlp_dim: int = 2048
    vision_dropout: float = 0.1
    vision_emb_dropout: float = 0.1
    freeze_vision: bool = False
    gradient_checkpointing: bool = False
    # perceiver -> LLM width
    num_image_tokens: int = 32
    perceiver_depth: int = 6
    perceiver_heads: int = 8
    perceiver_dim_head: int = 64
    perceiver_ff_mult: int = 4
    # disease-aware attention + prototype memory bank
    prototype_dim: int = 768
    temperature_init: float = 0.07
    use_prototypes: bool = True
    use_disease_attention: bool = True
    use_diagnostic_prompts: bool = True
    # which features classify at inference: "released" (what the released generate's mode='cls'
    # computes; see DiaLlama.inference_features) or "pooled" (the disease-aware pooled features,
    # as in training and the paper)
    inference_features: str = "released"
    # loss
    loss_weighting: str = "released"
    dp_weight: float = 4.0
    lm_weight: float = 1.0
    # prompt
    instruction: str = INSTRUCTION
    # LoRA (PEFT defaults for LLaMA in peft's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
    lora_r: int = 8
    lora_alpha: float = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # training (scripts/train.sh)
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_steps: float = 20
    gradient_accumulation_steps: int = 8
    num_train_epochs: float = 50
    weight_decay: float = 0.0
    per_device_train_batch_size: int = 1
    # generation: multimodality_model.generate (max_new_tokens 300, top_k 50) with LLaMA-2-7b-chat's
    # generation_config.json (do_sample true, temperature 0.6, top_p 0.9)
    max_new_tokens: int = 300
    do_sample: bool = True
    temperature: float = 0.6
    top_k: int = 50
    top_p: float = 0.9
    num_beams: int = 1
    repetition_penalty: float = 1.0
    seed: int | None = 0
    eval_batch_size: int = 4
    # dtype of every part ("float32", "bfloat16", "float16")
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_volume_fields(self)
        if self.loss_weighting not in ("released", "paper"):
            raise ConfigError(
                "recipe.loss_weighting: expected 'released' or 'paper', got "
                f"{self.loss_weighting!r}"
            )
        if self.inference_features not in ("pooled", "released"):
            raise ConfigError(
                "recipe.inference_features: expected 'pooled' or 'released', got "
                f"{self.inference_features!r}"
            )
        check_generation_fields(self)
        check_numbers(self, positive_ints=("num_image_tokens",))
        if self.num_image_tokens <= 0:
            raise ConfigError(f"recipe.num_image_tokens: expected > 0, got {self.num_image_tokens}")
        if self.max_length <= self.num_image_tokens + 3:
            raise ConfigError(
                f"recipe.max_length {self.max_length} leaves no room after the image tokens"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], section: str = "recipe") -> DiaLlamaConfig:
        return config_from_dict(cls, d, section)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_volume_fields(c: Any) -> None:
    """The volume, label and part fields :class:`DiaLlamaConfig` and RAD3D-Prefix's Config share:
    ``image_size``, ``vision_patch_size``, ``vision_max_size`` (3 positive sizes ``(D, H, W)``,
    made ints), ``conditions`` (a list of label names or a :func:`named_conditions` name, made a
    list of str), ``vision`` ("radfm" | "vit3d"), ``resize_mode`` ("nearest" | "trilinear") and
    ``dtype`` (a key of ``_DTYPES``); a ``ConfigError`` names the field and its value."""
    for name in ("image_size", "vision_patch_size", "vision_max_size"):
        v = getattr(c, name)
        if not isinstance(v, (list, tuple)) or len(v) != 3 or any(int(x) <= 0 for x in v):
            raise ConfigError(f"recipe.{name}: expected 3 positive sizes (D, H, W), got {v!r}")
        setattr(c, name, [int(x) for x in v])
    if isinstance(c.conditions, str):
        c.conditions = list(named_conditions(c.conditions))
    c.conditions = [str(x) for x in c.conditions]
    if not c.conditions:
        raise ConfigError("recipe.conditions: expected at least one label name")
    if c.vision not in ("radfm", "vit3d"):
        raise ConfigError(f"recipe.vision: expected 'radfm' or 'vit3d', got {c.vision!r}")
    if c.resize_mode not in ("nearest", "trilinear"):
        raise ConfigError(
            f"recipe.resize_mode: expected 'nearest' or 'trilinear', got {c.resize_mode!r}"
        )
    if c.dtype not in _DTYPES:
        raise ConfigError(f"recipe.dtype: expected one of {sorted(_DTYPES)}, got {c.dtype!r}")
    for name in ("vision_dropout", "vision_emb_dropout"):
        v = getattr(c, name, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ConfigError(f"recipe.{name}: expected a probability in [0, 1), got {v!r}")


def check_generation_fields(c: Any) -> None:
    """``ConfigError`` naming the field and value unless the Config's generation settings
    (:data:`GEN_FIELDS`, ``eval_batch_size``, ``max_length``) have their types: integers > 0,
    ``top_k`` an integer >= 0, numbers, ``do_sample`` a bool, ``seed`` an integer or null."""
    check_numbers(
        c,
        positive_ints=("max_new_tokens", "num_beams", "eval_batch_size", "max_length"),
        floats=("temperature", "top_p", "repetition_penalty"),
        optional_ints=("seed",),
        ints=("top_k",),
    )
    if c.top_k < 0:
        raise ConfigError(f"recipe.top_k: expected an integer >= 0, got {c.top_k!r}")
    if not isinstance(c.do_sample, bool):
        raise ConfigError(f"recipe.do_sample: expected true or false, got {c.do_sample!r}")
    # the ranges generate refuses, checked before training rather than at the evaluation after it
    for name in ("temperature", "repetition_penalty"):
        v = getattr(c, name)
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"recipe.{name}: expected a finite number > 0, got {v!r}")
    if c.do_sample and not (math.isfinite(c.top_p) and 0 < c.top_p <= 1):
        raise ConfigError(f"recipe.top_p: expected a value in (0, 1] for sampling, got {c.top_p!r}")


def named_conditions(name: str) -> tuple[str, ...]:
    """Label sets by name: ``"chexbert"`` (CTRG-Chest, Dia-LLaMA's 14) or ``"ct-rate"`` (18)."""
    if name == "chexbert":
        return CHEXBERT_CONDITIONS
    if name == "ct-rate":
        from ..datasets import ct_rate

        names = getattr(ct_rate, "ABNORMALITIES", None) or getattr(ct_rate, "LABELS", None)
        if names is None:  # pragma: no cover - depends on the reader module
            raise ConfigError("recipe.conditions: the ct-rate reader does not name its labels")
        return tuple(names)
    raise ConfigError(
        f"recipe.conditions: expected a list of label names, 'chexbert' or 'ct-rate', got {name!r}"
    )


# ---------------------------------------------------------------------------------------------
# preprocessing


class DiaLlamaTransform:
    """Dia-LLaMA's volume preprocessing: ``[C, D, H, W]`` float32 in [0, 1] with ``channels``
    channels and spatial size ``size`` (D, H, W).

    A :class:`voxlm.Volume` (``[x, y, z]``) is first laid out as SimpleITK's array ``[z, y, x]``
    (what ``CTRG_dataset.py`` reads), so ``D`` is the slice axis; an array/tensor is taken as
    ``[C, D, H, W]`` (or ``[D, H, W]``). Then: resize (``mode``: the released pipeline's last step
    is a nearest ``F.interpolate``), global min-max to [0, 1] (a constant volume becomes 0), the
    channel repeated ``channels`` times (the released code stacks the grey volume 3 times)."""

    def __init__(self, size: Sequence[int], channels: int = 3, mode: str = "nearest") -> None:
        self.size, self.channels, self.mode = [int(s) for s in size], int(channels), mode

    def __call__(self, x: Any) -> torch.Tensor:
        from ..volume import Volume

        if isinstance(x, Volume):
            a = torch.from_numpy(
                np.ascontiguousarray(np.asarray(x.data, dtype=np.float32).transpose(2, 1, 0))
            )
            if a.dim() == 3:
                a = a[None]
        else:
            a = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(
                torch.float32
            )
            if a.dim() == 3:
                a = a[None]
        if a.dim() != 4:
            raise ShapeError(
                "Dia-LLaMA preprocessing: expected a volume [C, D, H, W] or [D, H, W], got "
                f"{tuple(a.shape)}"
            )
        if list(a.shape[1:]) != self.size:
            kw = {} if self.mode == "nearest" else {"align_corners": False}
            a = F.interpolate(a[None], size=self.size, mode=self.mode, **kw)[0]
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) if hi > lo else torch.zeros_like(a)
        if a.shape[0] == 1 and self.channels != 1:
            a = a.expand(self.channels, -1, -1, -1)
        elif a.shape[0] != self.channels:
            raise ShapeError(
                f"Dia-LLaMA preprocessing: {a.shape[0]} channels, the encoder takes {self.channels}"
            )
        return a.contiguous()


# ---------------------------------------------------------------------------------------------
# text


class DiaLlamaPrompter:
    """Token sequences as Dia-LLaMA builds them (``dataset_train.py`` / ``dataset_test.py``):

    ``[BOS] <image> <image0> .. <image{n-1}> </image> enc(prompt + instruction)`` then, for
    training, ``enc(' ' + report) [EOS]``. The placeholder ids are ``vocab .. vocab + n + 1``
    (``vocab`` = the LLM's vocabulary size): ``vocab`` = ``<image>``, ``vocab + 1`` = ``</image>``,
    ``vocab + 2 + k`` = image token ``k``, as the released one-hot embedding orders them."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        num_image_tokens: int,
        conditions: Sequence[str],
        instruction: str,
        use_diagnostic_prompts: bool = True,
        max_length: int = 2048,
    ) -> None:
        self.tokenizer, self.vocab_size, self.n = tokenizer, int(vocab_size), int(num_image_tokens)
        self.conditions, self.instruction = list(conditions), instruction
        self.use_diagnostic_prompts, self.max_length = use_diagnostic_prompts, int(max_length)
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else (self.eos if self.eos is not None else 0)
        if self.eos is None:
            raise ConfigError(
                "model.tokenizer: Dia-LLaMA appends EOS to every report; the tokenizer has no "
                "eos_token"
            )

    @property
    def image_ids(self) -> list[int]:
        v = self.vocab_size
        return [v] + [v + 2 + k for k in range(self.n)] + [v + 1]

    def question(self, labels: Sequence[int] | None) -> str:
        """``The "{disease}" is positive|negative. `` per label, then the instruction."""
        if not self.use_diagnostic_prompts:
            return self.instruction
        if labels is None:
            raise ConfigError(
                "Dia-LLaMA: diagnostic prompts need labels (ground truth or predicted)"
            )
        return diagnostic_prompt([int(v) for v in labels], self.conditions) + self.instruction

    def prompt_ids(self, question: str) -> list[int]:
        head = ([self.bos] if self.bos is not None else []) + self.image_ids
        ids = head + self.tokenizer.encode(question, add_special_tokens=False)
        if len(ids) >= self.max_length:
            raise ConfigError(
                f"Dia-LLaMA: the prompt is {len(ids)} tokens, max_length is {self.max_length}"
            )
        return ids

    def train_ids(self, question: str, report: str) -> tuple[list[int], int]:
        """``(ids, n_prompt)``: the full sequence and how many leading tokens are prompt."""
        p = self.prompt_ids(question)
        answer = self.tokenizer.encode(" " + report.replace("•", ""), add_special_tokens=False)
        answer = answer[: self.max_length - len(p) - 1] + [self.eos]
        return p + answer, len(p)


def _labels_of(item: Mapping[str, Any], n: int, where: str) -> torch.Tensor:
    lab = item.get("labels")
    if lab is None:
        raise DataError(
            f"{where}: record {item.get('id', '?')!r} has no 'labels' (Dia-LLaMA trains the "
            "diagnostic prompts and prototypes on them)"
        )
    t = torch.as_tensor(np.asarray(lab)).long().reshape(-1)
    if t.numel() != n:
        raise ShapeError(
            f"{where}: record {item.get('id', '?')!r} has {t.numel()} labels, the recipe has {n} "
            "conditions"
        )
    return (t == 1).long()


class DiaLlamaCollator:
    """Training batches: ``images`` [B, C, D, H, W], ``input_ids`` / ``attention_mask`` / ``labels``
    [B, T] (right padding, -100 on prompt, image tokens and padding), ``cls_labels`` [B, L] (0/1,
    the ground truth in the prompts), ``ids``."""

    def __init__(
        self, prompter: DiaLlamaPrompter, image_size: Sequence[int], channels: int
    ) -> None:
        self.prompter, self.image_size, self.channels = prompter, list(image_size), int(channels)

    def images(self, items: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        want = [self.channels, *self.image_size]
        for it in items:
            img = it.get("image")
            if not isinstance(img, torch.Tensor):
                raise DataError(
                    f"Dia-LLaMA collator: record {it.get('id', '?')!r}: 'image' is not a loaded "
                    "tensor "
                    "(use the recipe's datasets() / ReportDataset)"
                )
            if list(img.shape) != want:
                raise ShapeError(
                    f"Dia-LLaMA collator: record {it.get('id', '?')!r} image {tuple(img.shape)}, "
                    f"expected {tuple(want)} (recipe.image_size with {self.channels} channels)"
                )
        return torch.stack([it["image"].to(torch.float32) for it in items])

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        check_batch_items(items, "Dia-LLaMA collator")
        p = self.prompter
        n_lab = len(p.conditions)
        cls = torch.stack([_labels_of(it, n_lab, "Dia-LLaMA collator") for it in items])
        seqs = []
        for it, lab in zip(items, cls):
            if "report" not in it:
                raise DataError(f"Dia-LLaMA collator: record {it.get('id', '?')!r} has no 'report'")
            ids, n_prompt = p.train_ids(p.question(lab.tolist()), str(it["report"]))
            seqs.append((ids, n_prompt))
        t = max(len(s) for s, _ in seqs)
        b = len(items)
        input_ids = torch.full((b, t), p.pad, dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.long)
        labels = torch.full((b, t), -100, dtype=torch.long)
        for i, (ids, n_prompt) in enumerate(seqs):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        return {
            "images": self.images(items),
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": labels,
            "cls_labels": cls,
            "ids": [str(it.get("id", i)) for i, it in enumerate(items)],
        }


# ---------------------------------------------------------------------------------------------
# keyword labeler (synthetic benchmark; CheXbert-style output codes)

_NEGATION = re.compile(r"\b(no|not|without|cannot|excluded|nor|absent)\b")
_CLAUSE = re.compile(r"[.;,:\n]")


#: What eval.json's ``labeler`` says when the built-in :func:`keyword_labeler` labelled the reports.
KEYWORD_LABELER = "keyword (voxlm.synth templates)"


def keyword_labeler(
    reports: Sequence[str],
    conditions: Sequence[str] = CHEXBERT_CONDITIONS,
    keywords: Mapping[str, str | re.Pattern[str]] | None = None,
) -> np.ndarray:
    """A rule-based CheXbert stand-in for voxlm's synthetic benchmark: ``reports -> [N, L]``
    int64 CheXbert-style codes (0 blank, 1 positive, 2 negative; only 1 counts as positive in
    clinical efficacy).

    The rules and the keyword patterns are those of the synthetic report templates
    (:mod:`voxlm.synth.reports`: ``KEYWORDS``, clauses split at ``. ; , :``, negation cues ``no,
    not, without, cannot, excluded, nor, absent``): a clause naming a condition is a negative
    mention when it holds a negation cue, else a positive one; positive wins across clauses;
    ``"no finding"`` is positive exactly when no other condition is. So ``codes == 1`` equals
    :func:`voxlm.synth.label_reports` on any text. It is a keyword matcher, not CheXbert: exact on
    the synthetic templates' vocabulary, approximate on real reports; ``keywords`` (condition ->
    regex) replaces or adds patterns, and a condition without one matches its own name."""
    from ..synth.reports import KEYWORDS as SYNTH_KEYWORDS

    table: dict[str, re.Pattern[str]] = dict(SYNTH_KEYWORDS)
    for k, v in dict(keywords or {}).items():
        table[k] = v if isinstance(v, re.Pattern) else re.compile(v)
    pats = [table.get(c) or re.compile(r"\b" + re.escape(c.lower()) + r"\b") for c in conditions]
    names = list(conditions)
    nf = names.index("no finding") if "no finding" in names else None
    out = np.zeros((len(reports), len(names)), dtype=np.int64)
    for i, text in enumerate(reports):
        for clause in _CLAUSE.split(str(text).lower()):
            neg = _NEGATION.search(clause) is not None
            for j, pat in enumerate(pats):
                if j == nf or not pat.search(clause):
                    continue
                if not neg:
                    out[i, j] = 1
                elif out[i, j] == 0:
                    out[i, j] = 2
        if nf is not None:
            others = [k for k in range(len(names)) if k != nf]
            out[i, nf] = 0 if (out[i, others] == 1).any() else 1
    return out


# ---------------------------------------------------------------------------------------------
# model


@dataclass
class DiaLlamaOutput:
    """``loss`` (the weighted sum), ``lm_loss``, ``dp_loss`` (prototype InfoNCE or the ablation's
    cross-entropy; None without a label predictor), ``logits`` [B, T, V]."""

    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None = None
    dp_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class Generation:
    """What :meth:`DiaLlama.generate` returns with ``return_dict=True``."""

    reports: list[str]
    labels: np.ndarray  # [B, L] labels written into the prompts (predicted or given)
    prompts: list[str]
    tokens: torch.Tensor


class DiaLlama(Recipe):
    """Dia-LLaMA (see the module docstring). Parts, in forward order: ``vision`` (RadFM ``vit_3d``
    or ViT3D) -> ``perceiver`` (32 latents) -> ``projector`` (Linear to the LLM width) -> image
    tokens in the prompt of ``llm`` (LLaMA + LoRA); ``vision`` tokens -> ``disease`` (disease-aware
    attention) -> ``prototypes`` (memory bank; or ``classifier`` in the ablation) -> labels ->
    diagnostic prompt."""

    Config = DiaLlamaConfig
    llm: Any
    vision: Any
    perceiver: Any
    disease: Any

    def __init__(
        self,
        config: DiaLlamaConfig,
        llm: Any,
        tokenizer: Any,
        model_spec: Mapping[str, Any] | None = None,
        add_adapter: bool = True,
    ) -> None:
        super().__init__()
        from ..adapters import LoraConfig, add_lora
        from ..losses import PrototypeBank
        from ..vision import DiseaseAwareAttention, PerceiverResampler

        c = self.config = config
        self.model_spec = dict(model_spec or {})
        self.tokenizer = tokenizer
        vocab = int(llm.config.vocab_size)
        if tokenizer.vocab_size > vocab:
            raise ConfigError(
                f"model.tokenizer has {tokenizer.vocab_size} tokens, the LLM's vocabulary {vocab}"
            )
        self.vision = self._build_vision(c)
        d, h, w = c.image_size
        self.num_vision_tokens = self._vision_num_tokens(d, h, w)
        hidden = int(llm.config.hidden_size)
        self.perceiver = PerceiverResampler(
            dim=c.vision_dim,
            depth=c.perceiver_depth,
            dim_head=c.perceiver_dim_head,
            heads=c.perceiver_heads,
            num_latents=c.num_image_tokens,
            ff_mult=c.perceiver_ff_mult,
        )
        self.projector = nn.Linear(c.vision_dim, hidden)
        self.figure_token_weight = nn.Parameter(torch.randn(2, hidden))
        L = len(c.conditions)
        self.disease = DiseaseAwareAttention(L, self.num_vision_tokens)
        self.prototypes: Any = None
        self.classifier: nn.ModuleList | None = None
        if c.use_prototypes:
            self.prototypes = PrototypeBank(
                L, c.vision_dim, proj_dim=c.prototype_dim, temperature_init=c.temperature_init
            )
        elif c.use_diagnostic_prompts:  # ablation: the released group_cls_head as the predictor
            self.classifier = nn.ModuleList([nn.Linear(c.vision_dim, 2) for _ in range(L)])
        self.llm = llm
        if c.gradient_checkpointing:
            self.vision.gradient_checkpointing_enable()
            llm.gradient_checkpointing_enable()
        self.lora_config = LoraConfig(
            r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
            target_modules=list(c.lora_target_modules),
            base_model_name_or_path=self._llm_path(),
        )
        if add_adapter:
            add_lora(self.llm, self.lora_config)
        self.prompter = DiaLlamaPrompter(
            tokenizer,
            vocab,
            c.num_image_tokens,
            c.conditions,
            c.instruction,
            c.use_diagnostic_prompts,
            c.max_length,
        )
        dtype = _DTYPES[c.dtype]
        for m in (
            self.vision,
            self.perceiver,
            self.projector,
            self.disease,
            self.prototypes,
            self.classifier,
        ):
            if m is not None:
                m.to(dtype)
        self.figure_token_weight.data = self.figure_token_weight.data.to(dtype)
        self._rebind_parts()
        self.set_trainable()

    # -- building ---------------------------------------------------------------------------

    @staticmethod
    def _build_vision(c: DiaLlamaConfig) -> nn.Module:
        pd_, ph, pw = c.vision_patch_size
        if c.vision == "radfm":
            from ..vision_radfm import RadFMViT3D

            md, mh, mw = c.vision_max_size
            return RadFMViT3D(
                image_size=(mh, mw),
                image_patch_size=(ph, pw),
                frames=md,
                frame_patch_size=pd_,
                dim=c.vision_dim,
                depth=c.vision_depth,
                heads=c.vision_heads,
                mlp_dim=c.vision_mlp_dim,
                channels=c.in_channels,
                dim_head=c.vision_dim_head,
                dropout=c.vision_dropout,
                emb_dropout=c.vision_emb_dropout,
            )
        from ..vision import ViT3D

        if c.vision_dim_head * c.vision_heads != c.vision_dim:
            raise ConfigError(
                f"recipe: vision 'vit3d' needs vision_heads x vision_dim_head == vision_dim, got "
                f"{c.vision_heads} x {c.vision_dim_head} != {c.vision_dim}"
            )
        d, h, w = c.image_size
        if d % pd_ or h % ph or w % pw:
            raise ShapeError(
                f"recipe.image_size {c.image_size} is not divisible by vision_patch_size "
                f"{c.vision_patch_size}"
            )
        return ViT3D(
            in_channels=c.in_channels,
            img_size=c.image_size,
            patch_size=c.vision_patch_size,
            hidden_size=c.vision_dim,
            mlp_dim=c.vision_mlp_dim,
            num_layers=c.vision_depth,
            num_heads=c.vision_heads,
            proj_type="conv",
            classification=False,
        )

    def _vision_num_tokens(self, d: int, h: int, w: int) -> int:
        if self.config.vision == "radfm":
            return int(self.vision.num_tokens(h, w, d))
        return int(self.vision.n_patches)

    def _llm_path(self) -> str | None:
        spec = self.model_spec.get("llm")
        return os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else None

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], model: Mapping[str, Any]) -> DiaLlama:
        """``recipe``: ``name`` + :class:`DiaLlamaConfig` fields; ``model``: ``llm`` (HF folder or
        LlamaConfig dict), ``tokenizer`` (path or ``bundled:ctrg-bpe``), optional ``vision``
        (pretrained weights, see :meth:`load_vision_weights`)."""
        config = cls.Config.from_dict(recipe)
        llm, tok, spec, model = model_parts(model, _DTYPES[config.dtype])
        self = cls(config, llm, tok, spec)
        if model.get("vision"):
            self.load_vision_weights(model["vision"])
            self.model_spec["vision"] = os.fspath(model["vision"])
        return self

    def load_vision_weights(self, path: PathLike) -> list[str]:
        """Load pretrained parts from a RadFM / Dia-LLaMA checkpoint (``pytorch_model.bin`` or
        safetensors, a file or a folder holding one): ``embedding_layer.vision_encoder.*`` (or bare
        ``vit_3d`` keys) into ``vision``, and when present ``embedding_layer.perceiver.*`` into
        ``perceiver`` and ``embedding_layer.fc.*`` into ``projector`` (only if its shape fits the
        LLM width: RadFM's fc maps to 5120). A ``vit3d`` encoder takes MONAI ViT keys (optionally
        under ``vision_encoder.``). Returns the part names loaded."""
        sd = _read_state_dict(path)
        loaded = []
        if self.config.vision == "radfm":
            from ..vision_radfm import RADFM_PREFIX

            pre = RADFM_PREFIX if any(k.startswith(RADFM_PREFIX) for k in sd) else ""
            sub = (
                {k[len(pre) :]: v for k, v in sd.items() if k.startswith(pre)} if pre else dict(sd)
            )
            if pre == "" and "to_patch_embedding.2.weight" not in sub:
                raise CheckpointError(
                    f"{path}: no RadFM vit_3d keys (to_patch_embedding.*, "
                    "embedding_layer.vision_encoder.*)"
                )
        else:
            pre = "vision_encoder." if any(k.startswith("vision_encoder.") for k in sd) else ""
            sub = {
                k[len(pre) :]: v
                for k, v in sd.items()
                if k.startswith(pre) and "classification_head" not in k
            }
        _load_part(
            self.vision,
            {k: v for k, v in sub.items() if k in self.vision.state_dict()},
            f"{path} (vision)",
        )
        loaded.append("vision")
        per = {
            k[len("embedding_layer.perceiver.") :]: v
            for k, v in sd.items()
            if k.startswith("embedding_layer.perceiver.")
        }
        if per:
            _load_part(self.perceiver, per, f"{path} (perceiver)")
            loaded.append("perceiver")
        fc = {
            k[len("embedding_layer.fc.") :]: v
            for k, v in sd.items()
            if k.startswith("embedding_layer.fc.")
        }
        if fc and tuple(fc["weight"].shape) == tuple(self.projector.weight.shape):
            _load_part(self.projector, fc, f"{path} (fc)")
            loaded.append("projector")
        self._rebind_parts()
        return loaded

    #: Released ``MultiLLaMAForCausalLM`` state-dict prefixes -> voxlm's parts.
    RELEASED_KEYS = (
        ("embedding_layer.vision_encoder.", "vision."),
        ("embedding_layer.perceiver.", "perceiver."),
        ("embedding_layer.fc.", "projector."),
        ("embedding_layer.figure_token_weight", "figure_token_weight"),
        ("embedding_layer.prototype", "disease.prototype"),
        ("embedding_layer.proj.", "prototypes.proj."),
        ("embedding_layer.pos_sample_memory", "prototypes.pos_sample_memory"),
        ("embedding_layer.neg_sample_memory", "prototypes.neg_sample_memory"),
        ("embedding_layer.temp", "prototypes.temp"),
        ("lang_model.base_model.model.", "llm."),
    )

    def load_released(self, checkpoint: PathLike | Mapping[str, torch.Tensor]) -> list[str]:
        """Load a checkpoint of the released ``MultiLLaMAForCausalLM`` (its ``pytorch_model.bin``
        or a state dict): ``embedding_layer.*`` into the parts (:data:`RELEASED_KEYS`) and the
        PEFT-wrapped ``lang_model.base_model.model.*`` (LoRA ``lora_A/B.default`` and the base
        weights, with or without PEFT's ``base_layer``) into ``llm``. Skipped, and returned:
        ``embedding_layer.weight`` (the LLM's own input embeddings, tied in the released model)
        and ``embedding_layer.group_cls_head.*`` (built but used by no loss in the released code;
        loaded into ``classifier`` in the ``use_prototypes=False`` ablation). Needs a recipe built
        with the released sizes (RadFM ViT, the checkpoint's LLM, LoRA on). CheckpointError names
        any key that does not fit."""
        sd = dict(checkpoint) if isinstance(checkpoint, Mapping) else _read_state_dict(checkpoint)
        own = self.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        skipped = []
        for k, v in sd.items():
            if k == "embedding_layer.weight":
                skipped.append(k)
                continue
            if k.startswith("embedding_layer.group_cls_head."):
                if self.classifier is not None:
                    mapped["classifier." + k[len("embedding_layer.group_cls_head.") :]] = v
                else:
                    skipped.append(k)
                continue
            for src, dst in self.RELEASED_KEYS:
                if k == src or (src.endswith(".") and k.startswith(src)):
                    name = dst + k[len(src) :]
                    break
            else:
                raise CheckpointError(
                    f"released checkpoint: unexpected key {k!r} (not a Dia-LLaMA key)"
                )
            if name not in own and name.endswith((".weight", ".bias")):
                head, leaf = name.rsplit(".", 1)
                base = f"{head}.base_layer.{leaf}"  # PEFT < 0.7 saved the wrapped weight in place
                if base in own:
                    name = base
            mapped[name] = v
        missing = sorted(set(own) - set(mapped))
        unexpected = sorted(set(mapped) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"released checkpoint does not fit this recipe: missing {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            )
        for k, v in mapped.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise CheckpointError(
                    f"released checkpoint: {k} has shape {tuple(v.shape)}, the recipe "
                    f"{tuple(own[k].shape)}"
                )
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=True)
        self._rebind_parts()
        return skipped

    # -- training ---------------------------------------------------------------------------

    def set_trainable(self) -> None:
        """What the released code trains: everything but the base LLM (LoRA only) — and the
        vision encoder when ``freeze_vision``."""
        for n, p in self.named_parameters():
            if n.startswith("llm."):
                p.requires_grad_(".lora_A." in n or ".lora_B." in n)
            elif n.startswith("vision."):
                p.requires_grad_(not self.config.freeze_vision)
            else:
                p.requires_grad_(True)

    def stages(self, args: Any) -> list[Any]:
        """One stage, ``"finetune"`` (Dia-LLaMA trains everything at once). Its arguments are
        ``args`` (the config's ``train`` section) with the method's hyper-parameters
        (:data:`TRAIN_FIELDS`: lr 5e-5, constant_with_warmup, 20 warmup steps, accumulation 8,
        batch 1, 50 epochs) from the recipe config wherever ``args`` leaves a field at
        ``TrainingArguments``' default — an explicit value in ``train`` wins."""
        from ..train import Stage

        stage_args = recipe_train_args(self.config, args)

        def set_trainable(model: nn.Module) -> None:
            assert isinstance(model, DiaLlama)
            model.set_trainable()

        return [Stage("finetune", stage_args, set_trainable)]

    def transform(self) -> DiaLlamaTransform:
        c = self.config
        return DiaLlamaTransform(c.image_size, c.in_channels, c.resize_mode)

    def datasets(self, data: Mapping[str, Any]) -> tuple[Any, Any]:
        """``(train, eval)`` from ``data``: ``format``, ``root``, optional ``synth``
        (``voxlm.synth.ensure``: generate the miniature dataset, or reuse the matching one at
        ``root``), ``train_split`` ("train"), ``eval_split`` ("validation"; null for none),
        ``options`` (reader keyword arguments)."""
        d = _check_data_section(data)
        train = self.dataset(d, d.get("train_split", "train"))
        ev = d.get("eval_split", "validation")
        return train, (self.dataset(d, ev) if ev else None)

    def dataset(self, data: Mapping[str, Any], split: str) -> Any:
        """One split as a ``ReportDataset`` with the recipe's preprocessing; checks that the
        records carry the recipe's labels (DataError / ConfigError otherwise)."""
        from ..datasets import ReportDataset

        records = labelled_records(data, split, self.config.conditions, "Dia-LLaMA")
        return ReportDataset(records, transform=self.transform())

    def collator(self) -> DiaLlamaCollator:
        return DiaLlamaCollator(self.prompter, self.config.image_size, self.config.in_channels)

    # -- forward ----------------------------------------------------------------------------

    def vision_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, D, H, W] -> [B, N, vision_dim]`` (RadFM's encoder sees ``[B, C, H, W, D]``)."""
        c = self.config
        want = [c.in_channels, *c.image_size]
        if images.dim() != 5 or list(images.shape[1:]) != want:
            raise ShapeError(
                f"Dia-LLaMA: images {tuple(images.shape)}, expected [B, "
                f"{', '.join(map(str, want))}] "
                "(recipe.in_channels, recipe.image_size)"
            )
        images = images.to(self.projector.weight.dtype)
        if c.vision == "radfm":
            tokens, _ = self.vision(images.permute(0, 1, 3, 4, 2))
        else:
            tokens, _ = self.vision(images)
        return tokens

    def disease_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, D] -> [B, L, D]``: disease-aware attention, or the token mean (ablation)."""
        if self.config.use_disease_attention:
            return self.disease(tokens)
        return tokens.mean(1, keepdim=True).expand(-1, len(self.config.conditions), -1)

    def inference_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, D] -> [B, L, D]``, the features the labels are predicted from.

        ``"pooled"``: :meth:`disease_features`, the features the prototypes are trained on
        (training path of ``my_embedding_layer.py``, and the paper). ``"released"`` (default):
        what the released ``generate`` computes in ``MyEmbedding.forward(mode='cls')``:
        ``group_vision_x.sum(dim=1)`` on the ``[B, 14, N, D]`` weighted tokens sums over the
        *diseases* (its comment expects ``b, 14, 768``; the result is ``[B, N, D]``), and disease
        ``i`` is then classified from token ``i`` scaled by ``sum_j softmax(prototype_j)[i]``.
        That contradicts the code's own training path and comment, but it is what the released
        results were generated with, so it is the default (reproduced exactly); choose
        ``"pooled"`` for the method as the paper describes it."""
        if self.config.inference_features == "pooled" or not self.config.use_disease_attention:
            return self.disease_features(tokens)
        L = len(self.config.conditions)
        w = torch.softmax(self.disease.prototype, -1).sum(0)  # [N]: summed over diseases
        return tokens[:, :L] * w[:L].to(tokens.dtype)[None, :, None]

    def label_loss(self, feats: torch.Tensor, cls_labels: torch.Tensor) -> torch.Tensor | None:
        if self.prototypes is not None:
            return self.prototypes.loss(feats, cls_labels)
        if self.classifier is not None:
            logits = self._classifier_logits(feats)
            return F.cross_entropy(logits.reshape(-1, 2), cls_labels.reshape(-1))
        return None

    def _classifier_logits(self, feats: torch.Tensor) -> torch.Tensor:
        assert self.classifier is not None
        return torch.stack(
            [head(feats[:, i]) for i, head in enumerate(self.classifier)], 1
        )  # [B, L, 2]

    @torch.no_grad()
    def predict_labels(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` 0/1: the nearer prototype (``multimodality_model.generate``), or the head."""
        if self.prototypes is not None:
            return self.prototypes.predict(feats)
        if self.classifier is not None:
            return self._classifier_logits(feats).argmax(-1)
        raise ConfigError(
            "Dia-LLaMA: no label predictor (use_prototypes=False and use_diagnostic_prompts=False)"
        )

    @property
    def has_label_predictor(self) -> bool:
        return self.prototypes is not None or self.classifier is not None

    def image_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, N, vision_dim] -> [B, num_image_tokens, hidden]`` (perceiver, then ``fc``)."""
        return self.projector(self.perceiver(tokens))

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Text embeddings with ``<image>`` / ``</image>`` and the image tokens put in (the
        released one-hot matmul over ``[vocab ; figure tokens ; image tokens]``)."""
        from ..llm import splice_image_tokens

        v = self.prompter.vocab_size
        emb_layer = self.llm.get_input_embeddings()
        text = emb_layer(input_ids.masked_fill(input_ids >= v, 0))
        fig = self.figure_token_weight.to(text.dtype)
        text = torch.where((input_ids == v)[..., None], fig[0], text)
        text = torch.where((input_ids == v + 1)[..., None], fig[1], text)
        img_mask = input_ids >= v + 2
        per_row = img_mask.sum(1)
        if bool((per_row != image_embeds.shape[1]).any()):
            raise ShapeError(
                f"Dia-LLaMA: every sequence needs {image_embeds.shape[1]} image tokens, got "
                f"{per_row.tolist()}"
            )
        return splice_image_tokens(text, image_embeds, img_mask)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cls_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> DiaLlamaOutput:
        """``L_LM + dp_weight * L_DP`` (released) or ``L_DP + lm_weight * L_LM`` (paper Eq. 7)."""
        c = self.config
        tokens = self.vision_tokens(images)
        out = self.llm(
            inputs_embeds=self.embed(input_ids, self.image_embeddings(tokens)),
            attention_mask=attention_mask,
            labels=labels,
        )
        lm = out.loss
        dp = None
        if cls_labels is not None:
            dp = self.label_loss(self.disease_features(tokens), cls_labels.long())
        elif labels is not None and self.has_label_predictor:
            raise DataError("Dia-LLaMA: training batches need cls_labels (the ground-truth labels)")
        if lm is None:
            loss = dp
        elif dp is None:
            loss = lm
        elif c.loss_weighting == "released":
            loss = lm + c.dp_weight * dp
        else:
            loss = dp + c.lm_weight * lm
        return DiaLlamaOutput(loss=loss, lm_loss=lm, dp_loss=dp, logits=out.logits)

    # -- generation -------------------------------------------------------------------------

    def generation_settings(self, **overrides: Any) -> dict[str, Any]:
        return generation_settings(self.config, overrides)

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | np.ndarray | None = None,
        return_dict: bool = False,
        **overrides: Any,
    ) -> list[str] | Generation:
        """Reports for ``images`` [B, C, D, H, W]: predict the labels from the prototypes, write
        the diagnostic prompt, generate (``multimodality_model.generate``). ``labels`` [B, L]
        puts given labels into the prompts instead (e.g. the ground truth: an oracle upper bound).
        ``overrides``: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
        ``num_beams``, ``repetition_penalty``, ``seed``."""
        g = self.generation_settings(**overrides)
        was = self.training
        self.eval()
        try:
            dev = self.projector.weight.device
            tokens = self.vision_tokens(images.to(dev))
            c = self.config
            if labels is not None:
                lab = _label_codes(labels)
                if tuple(lab.shape) != (images.shape[0], len(c.conditions)):
                    raise ShapeError(
                        f"labels: expected [{images.shape[0]}, {len(c.conditions)}], got "
                        f"{tuple(lab.shape)}"
                    )
                lab = (lab == 1).long()
            elif self.has_label_predictor:
                lab = self.predict_labels(self.inference_features(tokens)).cpu()
            else:
                lab = torch.zeros(images.shape[0], len(c.conditions), dtype=torch.long)
            questions = [self.prompter.question(row.tolist()) for row in lab]
            seqs = [self.prompter.prompt_ids(q) for q in questions]
            t = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), t), self.prompter.pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), t), dtype=torch.long)
            for i, s in enumerate(seqs):  # left padding
                ids[i, t - len(s) :] = torch.tensor(s)
                mask[i, t - len(s) :] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            emb = self.embed(ids, self.image_embeddings(tokens))
            new = self.llm.generate(
                inputs_embeds=emb,
                attention_mask=mask,
                eos_token_id=self.prompter.eos,
                pad_token_id=self.prompter.pad,
                **generate_kwargs(g),
            )
            reports = [_decode(self.tokenizer, row, self.prompter.eos) for row in new.cpu()]
        finally:
            self.train(was)
        if return_dict:
            return Generation(
                reports=reports, labels=lab.numpy(), prompts=questions, tokens=new.cpu()
            )
        return reports

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(
        self,
        dataset: Any,
        output_dir: PathLike | None = None,
        labeler: Callable[[list[str]], Any] | None = None,
        batch_size: int | None = None,
        meteor: bool | None = None,
        **generate_kwargs: Any,
    ) -> dict[str, Any]:
        """Generate for every item of ``dataset`` (ReportDataset items: ``image``, ``report``,
        ``labels``, ``id``) and score as the paper: BLEU-1..4, METEOR, ROUGE-L, CIDEr
        (:func:`voxlm.metrics.report_scores`); clinical efficacy (Dia-LLaMA's
        ``metrics_clinical.py`` convention) of the ``labeler``'s labels of generated vs reference
        reports, and of the predicted prompt labels vs the dataset's labels. With ``output_dir``:
        writes ``eval.json`` and ``predictions.csv``.

        Without ``labeler`` the built-in :func:`keyword_labeler` labels the reports (exact on
        voxlm's synthetic templates, approximate on real text): the scores go under
        ``clinical_efficacy_keyword`` with ``labeler: "keyword (voxlm.synth templates)"`` (and,
        for existing readers, also under ``clinical_efficacy``). The paper's clinical efficacy on
        real reports (CheXbert labels) needs ``labeler=``: a callable ``reports -> [N, L]``
        CheXbert codes, e.g. a wrapper of the user's CheXbert model; its scores go under
        ``clinical_efficacy``."""
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
        return {
            "vision": self.vision,
            "perceiver": self.perceiver,
            "projector": _ProjectorView(self),
            "disease": self.disease,
            "prototype": self.prototypes or self.classifier,
        }

    def save_pretrained(self, path: PathLike) -> None:
        """``config.json`` (``"recipe": "dia_llama"``, the Config, the model specs),
        ``{vision,perceiver,projector,disease,prototype}.safetensors``, the LoRA adapter as a
        PEFT folder ``adapter/`` (``base_model_name_or_path`` = the base LLM's path), the tokenizer
        under ``tokenizer/``; a randomly initialised base LLM (``model.llm`` given as a dict) is
        saved under ``llm/`` since no path holds it."""
        save_recipe(self, path, self._parts())

    @classmethod
    def from_pretrained(cls, path: PathLike) -> DiaLlama:
        return load_recipe(cls, path)


class _ProjectorView(nn.Module):
    """Saves ``projector`` (fc) and ``figure_token_weight`` together (``projector.safetensors``)."""

    def __init__(self, owner: DiaLlama) -> None:
        super().__init__()
        self.fc = owner.projector
        self.figure_token_weight = owner.figure_token_weight


# ---------------------------------------------------------------------------------------------
# shared by the report recipes (dia_llama, rad3d_prefix)


def _decode(tokenizer: Any, row: torch.Tensor, eos: int | None) -> str:
    ids = row.tolist()
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    from .. import _core

    p = pathlib.Path(path)
    if p.is_dir():
        cands = (
            sorted(p.glob("*.safetensors"))
            or sorted(p.glob("*.bin"))
            or sorted(p.glob("*.pth"))
            or sorted(p.glob("*.pt"))
        )
        if not cands:
            raise CheckpointError(f"{p}: no .safetensors / .bin / .pth weights in the folder")
        sd: dict[str, torch.Tensor] = {}
        for f in cands:
            sd.update(_read_state_dict(f))
        return sd
    if not p.is_file():
        raise CheckpointError(f"{p}: weights file does not exist")
    if p.suffix == ".safetensors":
        return dict(_core.load_safetensors(os.fspath(p), None, "cpu"))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle / zip errors of many kinds
        raise CheckpointError(
            f"{p}: not a readable torch checkpoint ({type(e).__name__}: {e})"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p}: expected a state dict, got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _load_part(module: nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not fit: missing "
            f"{missing[:3]}{' ...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}"
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


_DATA_KEYS = {"format", "root", "synth", "train_split", "eval_split", "test_split", "options"}


def _check_data_section(data: Mapping[str, Any]) -> dict[str, Any]:
    d = dict(data or {})
    unknown = sorted(set(d) - _DATA_KEYS)
    if unknown:
        raise ConfigError(
            f"data: unknown field(s) {unknown}; known: {', '.join(sorted(_DATA_KEYS))}"
        )
    for k in ("format", "root"):
        if k not in d:
            raise ConfigError(f"data.{k}: required")
    return d


def labelled_records(
    data: Mapping[str, Any], split: str, conditions: Sequence[str], needs: str | None
) -> list[dict[str, Any]]:
    """The records of ``split`` of the ``data`` section (the miniature set generated first when
    ``data.synth`` asks for it); ``DataError`` when there are none. With ``needs`` (who needs
    the labels, for the message), the dataset's label names must equal ``conditions``
    (``ConfigError`` naming both) and every record must carry labels (``DataError``)."""
    from ..datasets import read_records

    d = _check_data_section(data)
    _ensure_synth(d)
    records = read_records(d["format"], d["root"], split=split, **dict(d.get("options") or {}))
    if not records:
        raise DataError(f"data: split {split!r} of {d['root']} has no records")
    if needs is None:
        return records
    names = records[0].get("label_names")
    if names is not None and [str(n) for n in names] != list(conditions):
        raise ConfigError(
            f"recipe.conditions {list(conditions)} differ from the dataset's labels "
            f"{list(names)}; set recipe.conditions to the dataset's label names"
        )
    for r in records:
        if r.get("labels") is None:
            raise DataError(
                f"data: record {r.get('id')!r} of {d['root']} has no labels; {needs} needs them"
            )
    return records


def _ensure_synth(d: Mapping[str, Any]) -> None:
    ensure_synth_data(d)  # checks the synth keys; reuses a matching dataset at root


def _items(dataset: Any) -> Any:
    for i in range(len(dataset)):
        yield dataset[i]


_jsonable = jsonable


def clinical_scores(y_true: Any, y_pred: Any, conditions: Sequence[str]) -> dict[str, Any]:
    """:func:`voxlm.metrics.multilabel_scores` (Dia-LLaMA convention, positive = 1) with the
    per-label arrays keyed by condition name."""
    from ..metrics import multilabel_scores

    s = multilabel_scores(
        np.asarray(y_true), np.asarray(y_pred), pos_label=1, convention="dia_llama"
    )
    out: dict[str, Any] = {k: float(v) for k, v in s.items() if np.ndim(v) == 0}
    out["per_label"] = {
        c: {m: float(np.asarray(s[m])[j]) for m in ("precision", "recall", "f1", "support")}
        for j, c in enumerate(conditions)
    }
    return out


def evaluate_reports(
    model: Any,
    dataset: Any,
    output_dir: PathLike | None,
    labeler: Callable[[list[str]], Any] | None,
    batch_size: int | None,
    meteor: bool | None,
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """The evaluation loop of the report recipes (``model.generate(images, return_dict=True)``
    must return reports, labels, prompts)."""
    from ..metrics import report_scores

    conditions = list(model.config.conditions)
    lab_fn = labeler or (lambda reports: keyword_labeler(reports, conditions))
    bs = int(batch_size or model.config.eval_batch_size)
    ids: list[str] = []
    refs: list[str] = []
    hyps: list[str] = []
    prompts: list[str] = []
    pred_lab: list[Any] = []
    gt_lab: list[Any] = []
    collate = model.collator()
    batch: list[Mapping[str, Any]] = []

    def flush() -> None:
        if not batch:
            return
        for it in batch:  # before generating: evaluation needs the reference report of each
            if not isinstance(it.get("report"), str):
                raise DataError(
                    f"evaluate: record {it.get('id', len(ids))!r} has no reference 'report' "
                    f"(got {type(it.get('report')).__name__}); expected records with reports, "
                    "or use generate for records without them"
                )
        images = collate.images(batch)
        out = model.generate(images, return_dict=True, **generate_kwargs)
        hyps.extend(out.reports)
        prompts.extend(out.prompts)
        pred_lab.extend(np.asarray(out.labels).tolist())
        for it in batch:
            ids.append(str(it.get("id", len(ids))))
            refs.append(it["report"])
            lab = it.get("labels")
            gt_lab.append(
                None
                if lab is None
                else (np.asarray(lab).reshape(-1) == 1).astype(np.int64).tolist()
            )
        batch.clear()

    for it in _items(dataset):
        batch.append(it)
        if len(batch) == bs:
            flush()
    flush()
    if not hyps:
        raise DataError("evaluate: the dataset is empty")
    result: dict[str, Any] = {"n": len(hyps)}
    nlg = report_scores(refs, hyps, meteor=meteor)
    result.update({k: float(v) for k, v in nlg.items() if k != "per_sample"})
    ref_codes = np.asarray(lab_fn(refs))
    hyp_codes = np.asarray(lab_fn(hyps))
    if ref_codes.shape != (len(refs), len(conditions)) or hyp_codes.shape != ref_codes.shape:
        raise ShapeError(
            f"labeler: expected [{len(refs)}, {len(conditions)}] labels, got {ref_codes.shape} / "
            f"{hyp_codes.shape}"
        )
    # the keyword labeler's scores say so in their key; clinical_efficacy is kept for them too
    # (readers of earlier eval.json files), "labeler" names which labeler produced them
    ce_keys = (
        ["clinical_efficacy"] if labeler else ["clinical_efficacy_keyword", "clinical_efficacy"]
    )
    ce = clinical_scores(ref_codes, hyp_codes, conditions)
    for k in ce_keys:
        result[k] = ce
    if all(g is not None for g in gt_lab):
        gt = np.asarray(gt_lab, dtype=np.int64)
        ce_gt = clinical_scores(gt, hyp_codes, conditions)
        for k in ce_keys:
            result[k + "_vs_dataset_labels"] = ce_gt
        if getattr(model, "has_label_predictor", True):
            result["prompt_labels"] = clinical_scores(
                gt, np.asarray(pred_lab, dtype=np.int64), conditions
            )
    result["labeler"] = (
        getattr(labeler, "__name__", type(labeler).__name__) if labeler else KEYWORD_LABELER
    )
    result["generation"] = model.generation_settings(**generate_kwargs)
    if output_dir is not None:
        cols = [
            "id",
            "reference",
            "generated",
            "prompt",
            "predicted_labels",
            "dataset_labels",
            "reference_report_labels",
            "generated_report_labels",
        ]
        rows = [
            dict(
                zip(
                    cols,
                    [
                        ids[i],
                        refs[i],
                        hyps[i],
                        prompts[i],
                        json.dumps(pred_lab[i]),
                        "" if gt_lab[i] is None else json.dumps(gt_lab[i]),
                        json.dumps(ref_codes[i].tolist()),
                        json.dumps(hyp_codes[i].tolist()),
                    ],
                )
            )
            for i in range(len(hyps))
        ]
        write_eval_outputs(output_dir, result, rows, cols)
    return result


def _tokenizer_file(spec: Any) -> pathlib.Path:
    """The ``tokenizer.json`` of a ``model.tokenizer`` spec
    (:func:`voxlm.recipes.base.tokenizer_file`)."""
    return tokenizer_file(spec)[0]


def save_recipe(model: Any, path: PathLike, parts: Mapping[str, nn.Module | None]) -> None:
    """Shared ``save_pretrained`` of the report recipes."""
    from .. import _core
    from ..adapters import save_adapter

    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(model.model_spec)
    llm_spec = spec.get("llm")
    if isinstance(llm_spec, (str, os.PathLike)):
        llm_ref: dict[str, Any] = {"path": os.fspath(pathlib.Path(llm_spec).resolve())}
    else:  # randomly initialised base: nothing else holds it
        _save_base_llm(model.llm, out / "llm")
        llm_ref = {"saved": "llm", "spec": llm_spec}
    files = {}
    for name, part in parts.items():
        if part is None:
            continue
        sd = {k: v.detach().contiguous() for k, v in part.state_dict().items()}
        _core.save_safetensors(sd, os.fspath(out / f"{name}.safetensors"))
        files[name] = f"{name}.safetensors"
    has_lora = bool(getattr(model.llm, "_voxlm_lora_configs", None))
    if has_lora:
        save_adapter(model.llm, out / "adapter")
    tok_dir = out / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    shutil.copyfile(
        _tokenizer_file(spec.get("tokenizer", "bundled:ctrg-bpe")), tok_dir / "tokenizer.json"
    )
    t = model.tokenizer
    (tok_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": t.bos_token,
                "eos_token": t.eos_token,
                "pad_token": t.pad_token,
                "add_bos_token": bool(t.add_bos_token),
                "add_eos_token": bool(t.add_eos_token),
            },
            indent=2,
        )
    )
    cfg = {
        "recipe": model.name,
        "config": model.config.to_dict(),
        "llm": llm_ref,
        "tokenizer": "tokenizer",
        "parts": files,
        "adapter": "adapter" if has_lora else None,
        "vision_weights": spec.get("vision"),
    }
    (out / "config.json").write_text(json.dumps(_jsonable(cfg), indent=2))


def _save_base_llm(llm: Any, out: pathlib.Path) -> None:
    """The base weights only (LoRA layers' ``base_layer`` under their plain names)."""
    from .. import _core

    out.mkdir(parents=True, exist_ok=True)
    sd = {}
    for k, v in llm.state_dict().items():
        if ".lora_" in k or k.endswith("rotary_emb.inv_freq"):
            continue
        sd[k.replace(".base_layer.", ".")] = v.detach().contiguous()
    if llm.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    cfg = llm.config.to_dict()
    cfg["torch_dtype"] = str(llm.model.embed_tokens.weight.dtype).replace("torch.", "")
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    _core.save_safetensors(sd, os.fspath(out / "model.safetensors"))


def load_recipe(cls: Any, path: PathLike) -> Any:
    """Shared ``from_pretrained`` of the report recipes."""
    from ..adapters import load_adapter
    from ..llm import LlamaForCausalLM, Tokenizer

    p = pathlib.Path(path)
    saved = check_saved_recipe(p, cls.name)
    try:
        config = cls.Config.from_dict(saved["config"], section=f"{p}/config.json config")
        llm_ref = saved["llm"]
    except KeyError as e:
        raise CheckpointError(f"{p}/config.json: missing {e}") from None
    dtype = _DTYPES[config.dtype]
    if "path" in llm_ref:
        base = pathlib.Path(llm_ref["path"])
        if not (base / "config.json").is_file():
            raise CheckpointError(f"{p}: the base LLM {base} (referenced by path) is not there")
        llm = LlamaForCausalLM.from_pretrained(base, dtype=dtype)
        spec: dict[str, Any] = {"llm": os.fspath(base)}
    else:
        llm = LlamaForCausalLM.from_pretrained(p / llm_ref.get("saved", "llm"), dtype=dtype)
        spec = {"llm": llm_ref.get("spec")}
    tok = Tokenizer.from_pretrained(p / saved.get("tokenizer", "tokenizer"))
    spec["tokenizer"] = os.fspath(p / saved.get("tokenizer", "tokenizer"))
    if saved.get("vision_weights"):
        spec["vision"] = saved["vision_weights"]
    model = cls(config, llm, tok, spec, add_adapter=False)
    if saved.get("adapter"):
        load_adapter(model.llm, p / saved["adapter"])
    for name, part in model._parts().items():
        if part is None:
            continue
        f = p / saved.get("parts", {}).get(name, f"{name}.safetensors")
        if not f.is_file():
            raise CheckpointError(f"{p}: {f.name} is missing")
        _load_part(part, _read_state_dict(f), os.fspath(f))
    model._rebind_parts()
    model.set_trainable()
    model.eval()
    return model


def _label_codes(labels: Any) -> torch.Tensor:
    """``generate``'s ``labels`` as int64 codes (0/1, or CTRG's 0-3 where only 1 is positive):
    a tensor, array or nested list of bools or whole numbers; anything else is a DTypeError."""
    try:
        arr = labels.detach().cpu() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        lab = torch.as_tensor(arr)
    except (TypeError, ValueError, RuntimeError):
        raise DTypeError(
            f"labels: expected a [B, L] tensor or array of 0/1 label codes, got "
            f"{type(labels).__name__}"
        ) from None
    if lab.is_complex() or not (lab.dtype == torch.bool or lab.dtype in _REAL_DTYPES):
        raise DTypeError(f"labels: expected integer or bool label codes, got {lab.dtype}")
    if lab.dtype.is_floating_point and not bool(torch.all(lab == lab.round())):
        raise DTypeError(f"labels: expected whole-number label codes, got {lab.flatten()[:8]}")
    return lab.long()


_REAL_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)


register_recipe("dia_llama")(DiaLlama)

__all__ = [
    "DiaLlama",
    "DiaLlamaConfig",
    "DiaLlamaTransform",
    "DiaLlamaCollator",
    "DiaLlamaPrompter",
    "INSTRUCTION",
    "KEYWORD_LABELER",
    "keyword_labeler",
    "evaluate_reports",
    "clinical_scores",
    "check_generation_fields",
]
