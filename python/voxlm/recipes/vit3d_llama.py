"""``recipe: vit3d_llama`` — ViT3D alignment of a LLaMA (M3D-LaMed; ViT3D-LLaMA3 on AMOS-MM).

Read top to bottom: :class:`Config` (paper / released-code defaults) -> parts (M3D's ViT3D,
the spatial pooling projector, the LLaMA with ``<im_patch>`` placeholders and LoRA) ->
:meth:`ViT3DLlama.forward` -> :meth:`ViT3DLlama.stages` -> data (:meth:`datasets`,
:class:`M3DPrompt` for voxlm.datasets.ReportCollator) -> :meth:`generate_text` /
:meth:`evaluate` -> save / load.

Sources (BAAI-DCAI/M3D, ``LaMed/src``, read with the fetch tool):

* ``model/multimodal_encoder/vit.py``: MONAI ViT, 1 channel, 32x256x256, patch 4x16x16,
  perceptron patch embedding, ``classification=True`` (a class token is prepended); ViT3DTower
  ``vision_select_feature="patch"`` drops it (``image_features[:, 1:]``): 2048 tokens.
  (Its ``select_layer < -1`` branch indexes ``hidden_states[self.select_feature]``, a bug;
  voxlm uses ``hidden_states[select_layer]``.)
* ``model/multimodal_projector/spatial_pooling_projector.py``: tokens -> (8, 16, 16) grid ->
  ``avg_pool3d(2)`` -> 256 tokens -> Linear -> GELU -> Linear.
* ``model/lamed_arch.py``: the image features replace the embeddings at positions
  ``1..256`` (right after BOS; voxlm replaces the ``<im_patch>`` positions, the same positions
  for M3D's prompts); ``initialize_vision_tokenizer``: ``resize_token_embeddings(len(tok))`` then
  the new input *and* output rows set to the mean of the old rows (``embedding_init="m3d"``);
  ``embedding_init="transformers"`` is transformers' own ``resize_token_embeddings``
  (transcribed: in the installed transformers 5 a sample of N(mean, 1e-9 * covariance) when that
  covariance is positive definite, else the mean).
* ``train/train.py``: tokens ``<im_patch> <bx_start> <bx_end>`` (special) and ``[SEG]``; LoRA r16,
  alpha 32, dropout 0.05 on every ``nn.Linear`` outside vision tower / projector / embeddings / head
  (``find_all_linear_names``). Stage 1 (``tune_mm_mlp_adapter``): ``model.requires_grad_(False)``,
  the projector and the input embeddings train (``initialize_vision_tokenizer``). Stage 2
  (``lora_enable``): LoRA, and *every* parameter named ``vision_tower``, ``mm_projector``,
  ``embed_tokens``, ``lm_head`` trains — the released code fine-tunes the ViT in stage 2.
  ``script/pretrain_llama3.sh`` / ``finetune_lora_llama3.sh``: lr 1e-4 / 5e-5, 3 epochs each,
  cosine, warmup 3 %, weight decay 0.
* ``dataset/multi_dataset.py``: caption prompt ``"<im_patch>"*256 + template`` (a random one of
  ``Caption_templates``), input ``question + " " + answer`` + EOS, labels masked over the question;
  close-ended VQA ``"<im_patch>"*256 + " " + question + " Choices: A. .. B. .. C. .. D. .."``,
  answer ``"{letter}. {text}"``; open-ended: the answer text.
* ``Bench/eval/eval_caption.py``, ``eval_vqa.py``: greedy, 256 new tokens; close-ended accuracy
  ``answer_choice + "." in generated`` (reported as ``accuracy_m3d`` next to voxlm's
  :func:`~voxlm.metrics.vqa_accuracy`).

``train_vision``: True trains the ViT in stage 2 — what the released M3D code does (above) and
what the ViT3D-LLaMA3 paper describes (the ViT is trained, not frozen); False keeps it frozen
(the frozen-encoder setting that DESIGN.md attributes to M3D; not what its released code does).
AMOS-MM per-region prompts are voxlm's wording (the challenge defines the regions, not a prompt).
"""

from __future__ import annotations

import copy
import json
import math
import os
import pathlib
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters import LoraConfig, add_lora, load_adapter, save_adapter
from ..exceptions import CheckpointError, ConfigError, DataError, ShapeError, VoxlmTypeError
from ..llm import LlamaForCausalLM, splice_image_tokens
from ..vision import SpatialPoolingProjector, ViT3D
from .base import (
    Recipe,
    build_llm,
    check_numbers,
    check_saved_recipe,
    config_from_dict,
    ensure_synth_data,
    jsonable,
    read_json,
    tokenizer_file,
    write_eval_outputs,
)
from .registry import register_recipe

PathLike = str | os.PathLike[str]

#: ``LaMed/src/dataset/prompt_templates.py: Caption_templates`` (M3D's report prompts).
CAPTION_TEMPLATES: tuple[str, ...] = (
    "Can you provide a caption consists of findings for this medical image?",
    "Describe the findings of the medical image you see.",
    "Please caption this medical scan with findings.",
    "What is the findings of this image?",
    "Describe this medical scan with findings.",
    "Please write a caption consists of findings for this image.",
    "Can you summarize with findings the images presented?",
    "Please caption this scan with findings.",
    "Please provide a caption consists of findings for this medical image.",
    "Can you provide a summary consists of findings of this radiograph?",
    "What are the findings presented in this medical scan?",
    "Please write a caption consists of findings for this scan.",
    "Can you provide a description consists of findings of this medical scan?",
    "Please caption this medical scan with findings.",
    "Can you provide a caption consists of findings for this medical scan?",
    "Please generate a medical report based on this image.",
    "Can you generate a diagnose report from this image.",
    "Could you analyze and provide a caption for the findings in this medical image?",
    "Please describe the observations depicted in this medical scan.",
    "Can you summarize the findings of this image in a caption?",
    "What are the significant findings in this medical image?",
    "Please provide a detailed caption outlining the findings of this image.",
    "Could you interpret and describe the findings shown in this medical scan?",
    "What conclusions can you draw from the observations in this image?",
    "Please write a descriptive caption based on the findings in this scan.",
    "What key findings can you identify from examining this medical image?",
    "Could you generate a detailed report based on the observations in this image?",
    "Can you provide a diagnosis based on the findings in this image?",
    "Please generate a comprehensive report summarizing the findings in this image.",
    "Caption the findings in this medical image?",
    "Describe the findings you see.",
    "Caption this medical scan's findings.",
    "What are the findings here?",
    "Describe these findings.",
    "Summarize the findings in these images.",
    "Caption this scan's findings.",
    "Provide a caption for this medical image's findings.",
    "Summarize the findings of this radiograph.",
    "What findings are presented in this scan?",
    "Describe this scan's findings.",
    "Generate a medical report based on this image.",
    "Can you provide a diagnosis based on this image?",
)

#: voxlm's AMOS-MM per-region instruction (the challenge names the regions, not a prompt).
REGION_PROMPT = "Please generate the findings of the {region} region in this CT scan."
REGIONS = ("chest", "abdomen", "pelvis")
TASKS = ("auto", "report", "vqa-close", "vqa-open")


@dataclass
class Config:
    """ViT3D-LLaMA3 / M3D-LaMed settings; defaults are M3D's released code (sources in the
    module docstring).

    Vision (M3D ``ViT3DTower``): ``in_channels``, ``img_size`` (D, H, W), ``patch_size``,
    ``vision_hidden_size``, ``vision_mlp_dim``, ``vision_layers``, ``vision_heads``,
    ``vision_proj_type`` (M3D: ``"perceptron"``), ``classification`` (M3D: True, a class token),
    ``vision_select_layer`` (-1: the final-normed output; ``< -1``: that block's output),
    ``vision_select_feature`` (``"patch"`` drops the class token, ``"cls_patch"`` keeps it — then
    the spatial projector cannot pool it and refuses).
    Projector (``spp``): ``proj_layer_type`` mlp|linear, ``proj_layer_num``, ``proj_pooling_type``
    spatial|sequence, ``proj_pooling_size``.
    Tokens: ``image_token``; ``extra_tokens`` M3D adds too (``<bx_start>``, ``<bx_end>`` special,
    ``[SEG]`` plain); ``add_image_token`` (False: the tokenizer must have it already);
    ``embedding_init`` ``"m3d"`` (exact mean of the old rows) | ``"transformers"``.
    LoRA: ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``.
    Stages: ``stage1_*`` / ``stage2_*`` learning rate, epochs, scheduler, warmup ratio (None:
    keep the ``train`` section's value); ``stage1_train_embeddings`` (released code: the input
    embeddings train in stage 1), ``stage2_train_embeddings`` (released code: input embeddings and
    head train in stage 2), ``train_vision`` (stage 2; see the module docstring), ``stage2_lora``
    (True, the paper: LoRA on the LLM in stage 2; False: the LLM stays frozen, the LoRA-vs-frozen
    ablation of bench/fidelity.py).
    Task: ``task`` auto|report|vqa-close|vqa-open (auto: VQA when records have a question);
    ``per_region`` (AMOS-MM: one sample per non-empty chest/abdomen/pelvis section);
    ``eval_prompt`` (the report prompt at evaluation; training draws from M3D's templates).
    Generation (M3D Bench: greedy, 256 new tokens): ``max_new_tokens``, ``num_beams``,
    ``do_sample``, ``repetition_penalty``, ``length_penalty``, ``eval_batch_size``.
    ``max_length``: training sequence length (M3D ``model_max_length`` 512).
    ``meteor``: METEOR 1.5 (Java) in evaluate: True require, False skip, None when Java is there.
    ``green_judge``: a local GREEN model folder; when set, evaluate adds the GREEN score.
    """

    in_channels: int = 1
    img_size: tuple[int, int, int] = (32, 256, 256)
    patch_size: tuple[int, int, int] = (4, 16, 16)
    vision_hidden_size: int = 768
    vision_mlp_dim: int = 3072
    vision_layers: int = 12
    vision_heads: int = 12
    vision_proj_type: str = "perceptron"
    classification: bool = True
    qkv_bias: bool = False
    vision_select_layer: int = -1
    vision_select_feature: str = "patch"
    proj_layer_type: str = "mlp"
    proj_layer_num: int = 2
    proj_pooling_type: str = "spatial"
    proj_pooling_size: int = 2
    image_token: str = "<im_patch>"
    extra_tokens: tuple[str, ...] = ("<bx_start>", "<bx_end>")
    extra_plain_tokens: tuple[str, ...] = ("[SEG]",)
    add_image_token: bool = True
    embedding_init: str = "m3d"
    lora_r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    lora_target_modules: Any = "all-linear"
    stage1_learning_rate: float | None = 1e-4
    stage1_epochs: float | None = 3
    stage2_learning_rate: float | None = 5e-5
    stage2_epochs: float | None = 3
    lr_scheduler_type: str | None = "cosine"
    warmup_ratio: float | None = 0.03
    stage1_train_embeddings: bool = True
    stage2_train_embeddings: bool = True
    train_vision: bool = True
    stage2_lora: bool = True
    task: str = "auto"
    per_region: bool = True
    eval_prompt: str = "Please generate a medical report based on this image."
    max_length: int = 512
    max_new_tokens: int = 256
    num_beams: int = 1
    do_sample: bool = False
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    eval_batch_size: int = 4
    meteor: bool | None = None
    green_judge: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for k in ("img_size", "patch_size"):
            v = getattr(self, k)
            if isinstance(v, int):
                v = (v, v, v)
            if (
                not isinstance(v, (list, tuple))
                or len(v) != 3
                or not all(isinstance(x, int) and x > 0 for x in v)
            ):
                raise ConfigError(f"recipe.{k}: expected 3 positive integers (D, H, W), got {v!r}")
            setattr(self, k, tuple(v))
        for k in ("extra_tokens", "extra_plain_tokens"):
            setattr(self, k, tuple(getattr(self, k) or ()))
        bad = [f"{i}/{p}" for i, p in zip(self.img_size, self.patch_size) if i % p]
        if bad:
            raise ShapeError(
                f"recipe.img_size {self.img_size}: the encoder cannot patch it with patch_size "
                f"{self.patch_size} (not divisible: {', '.join(bad)})"
            )
        grid = [i // p for i, p in zip(self.img_size, self.patch_size)]
        if self.proj_pooling_size < 1:
            raise ConfigError(
                f"recipe.proj_pooling_size: expected an integer >= 1, got {self.proj_pooling_size}"
            )
        pooled = [g // self.proj_pooling_size for g in grid]
        if self.proj_pooling_size < 1 or min(pooled) < 1:
            raise ShapeError(
                f"recipe.proj_pooling_size {self.proj_pooling_size}: larger than the patch grid "
                f"{grid}"
            )
        choices = {
            "vision_select_feature": ("patch", "cls_patch"),
            "vision_proj_type": ("perceptron", "conv"),
            "proj_layer_type": ("mlp", "linear"),
            "proj_pooling_type": ("spatial", "sequence"),
            "embedding_init": ("m3d", "transformers"),
            "task": TASKS,
        }
        for k, ok in choices.items():
            if getattr(self, k) not in ok:
                raise ConfigError(
                    f"recipe.{k}: expected one of {list(ok)}, got {getattr(self, k)!r}"
                )
        if (
            self.vision_select_feature == "cls_patch"
            and self.classification
            and self.proj_pooling_type == "spatial"
        ):
            raise ShapeError(
                "recipe.vision_select_feature 'cls_patch' keeps the class token, which the spatial "
                f"pooling projector cannot place on the {grid} grid; use 'patch'"
            )
        if self.vision_select_layer >= 0 or self.vision_select_layer < -self.vision_layers - 1:
            raise ConfigError(
                f"recipe.vision_select_layer: expected -1 or a negative block index >= "
                f"{-self.vision_layers}, got {self.vision_select_layer}"
            )
        check_numbers(
            self,
            positive_ints=("num_beams", "max_new_tokens", "eval_batch_size", "max_length"),
            floats=("repetition_penalty", "length_penalty"),
            ints=("seed",),
        )
        if not isinstance(self.do_sample, bool):
            raise ConfigError(f"recipe.do_sample: expected true or false, got {self.do_sample!r}")
        if self.max_length < 2:
            raise ConfigError(f"recipe.max_length: expected >= 2, got {self.max_length}")

    @property
    def grid(self) -> tuple[int, int, int]:
        g = [i // p for i, p in zip(self.img_size, self.patch_size)]
        return (g[0], g[1], g[2])

    @property
    def num_image_tokens(self) -> int:
        """256 for M3D (2048 patch tokens pooled by 2 in each axis)."""
        if self.proj_pooling_type == "sequence":
            return math.prod(self.grid) // self.proj_pooling_size**3
        return math.prod(g // self.proj_pooling_size for g in self.grid)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], section: str = "recipe") -> Config:
        return config_from_dict(cls, d, section)


# ---------------------------------------------------------------------------------------------
# parts: tokenizer with the image token, embedding resize, M3D-CLIP vision weights


_tokenizer_file = tokenizer_file
_read_json = read_json


def _vocab_len(tj: Mapping[str, Any]) -> int:
    """``len(tokenizer)`` of a tokenizer.json: model vocabulary plus added tokens."""
    vocab = tj.get("model", {}).get("vocab", {})
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [int(t["id"]) for t in tj.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0


def add_tokens_to_tokenizer_json(
    tj: dict[str, Any], special: Sequence[str] = (), plain: Sequence[str] = ()
) -> list[str]:
    """Append tokens to a ``tokenizer.json`` dict as transformers' ``add_special_tokens`` /
    ``add_tokens`` do (new ids from ``len(tokenizer)`` on, special tokens not normalized, plain
    ones normalized); tokens already present are skipped. Returns the tokens added."""
    present = {t["content"] for t in tj.get("added_tokens", [])}
    vocab = tj.get("model", {}).get("vocab", {})
    if isinstance(vocab, dict):
        present |= set(vocab)
    added = []
    for tok, is_special in [(t, True) for t in special] + [(t, False) for t in plain]:
        if tok in present:
            continue
        tj.setdefault("added_tokens", []).append(
            {
                "id": _vocab_len(tj),
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": not is_special,
                "special": is_special,
            }
        )
        present.add(tok)
        added.append(tok)
    return added


def _mean_resize_rows(old: torch.Tensor, added: int) -> torch.Tensor:
    """transformers' ``_init_added_embeddings_weights_with_mean`` (modeling_utils.py, v5): the
    mean of the old rows plus a sample of N(0, 1e-9 * covariance) if that is positive definite."""
    from torch.distributions import constraints
    from torch.distributions.multivariate_normal import MultivariateNormal

    w = old.detach().to(torch.float32)
    mean = torch.mean(w, dim=0)
    centered = w - mean
    cov = centered.T @ centered / w.shape[0]
    eps = 1e-9
    if constraints.positive_definite.check(eps * cov).all():
        return (
            MultivariateNormal(mean, covariance_matrix=eps * cov)
            .sample(sample_shape=(added,))
            .to(old.dtype)
        )
    return mean[None, :].repeat(added, 1).to(old.dtype)


def resize_token_embeddings(llm: LlamaForCausalLM, new_num_tokens: int, init: str = "m3d") -> int:
    """Resize the input embeddings and the LM head of a voxlm LLaMA to ``new_num_tokens`` rows.

    ``init="transformers"``: transformers' ``resize_token_embeddings(n)`` with its default
    ``mean_resizing=True`` (``_get_resized_embeddings`` / ``_get_resized_lm_head``), including its
    use of the global RNG (a fresh ``nn.Embedding`` / ``nn.Linear`` is initialised before the old
    rows are copied in), so the same seed gives the same matrices. ``init="m3d"``: M3D's
    ``initialize_vision_tokenizer``: the new input and output rows are exactly the mean of the old
    rows. Returns the number of rows added (rows are dropped when shrinking)."""
    emb = llm.model.embed_tokens.weight
    old_n, dim = emb.shape
    if new_num_tokens == old_n:
        return 0
    if new_num_tokens < 1:
        raise ConfigError(f"new_num_tokens: expected >= 1, got {new_num_tokens}")
    added = new_num_tokens - old_n
    tied = llm.config.tie_word_embeddings
    with torch.no_grad():
        if init == "transformers":
            new_emb = torch.empty(new_num_tokens, dim, dtype=emb.dtype, device=emb.device)
            nn.init.normal_(new_emb)  # nn.Embedding.reset_parameters
            if added > 0:
                new_emb[-added:] = _mean_resize_rows(emb, added)
        elif init == "m3d":
            new_emb = torch.empty(new_num_tokens, dim, dtype=emb.dtype, device=emb.device)
            if added > 0:
                new_emb[-added:] = emb.detach().mean(0, keepdim=True)
        else:
            raise ConfigError(f"embedding_init: expected 'm3d' or 'transformers', got {init!r}")
        n = min(old_n, new_num_tokens)
        new_emb[:n] = emb.detach()[:n]
        new_head = None
        if not tied:
            head = llm.lm_head.weight
            new_head = torch.empty(new_num_tokens, dim, dtype=head.dtype, device=head.device)
            if init == "transformers":
                nn.init.kaiming_uniform_(new_head, a=math.sqrt(5))  # nn.Linear.reset_parameters
                if added > 0:
                    new_head[-added:] = _mean_resize_rows(head, added)
            elif added > 0:
                new_head[-added:] = head.detach().mean(0, keepdim=True)
            new_head[:n] = head.detach()[:n]
    rg = emb.requires_grad
    llm.model.embed_tokens.weight = nn.Parameter(new_emb, requires_grad=rg)
    llm.model.embed_tokens.num_embeddings = new_num_tokens
    if tied:
        llm.lm_head.weight = llm.model.embed_tokens.weight
    else:
        assert new_head is not None
        llm.lm_head.weight = nn.Parameter(new_head, requires_grad=llm.lm_head.weight.requires_grad)
    llm.lm_head.out_features = new_num_tokens
    llm.config.vocab_size = new_num_tokens
    llm.rebind()
    return added


#: prefixes under which M3D checkpoints hold the ViT: M3D-CLIP (``vision_encoder.``) and LaMed
#: (``model.vision_tower.vision_tower.``).
VISION_PREFIXES = (
    "vision_encoder.",
    "model.vision_tower.vision_tower.",
    "vision_tower.vision_tower.",
)


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or folder (``model.safetensors`` / shards), or a torch
    ``.bin`` / ``.pt`` (``torch.load(weights_only=True)``: no pickled code runs)."""
    from .. import _core

    p = pathlib.Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    if p.is_dir():
        if any(p.glob("*.safetensors")):
            return _core.load_safetensors(os.fspath(p), None, "cpu")
        bins = sorted(p.glob("*.bin"))
        if not bins:
            raise CheckpointError(f"{p}: no .safetensors or .bin weights in the folder")
        out: dict[str, torch.Tensor] = {}
        for b in bins:
            out.update(read_state_dict(b))
        return out
    if p.suffix == ".safetensors":
        return _core.load_safetensors(os.fspath(p), None, "cpu")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of a corrupt or non-torch file
        raise CheckpointError(f"{p}: not a torch state dict ({type(e).__name__}: {e})") from e
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p}: expected a dict of tensors")
    return dict(sd)


def m3d_vision_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MONAI ViT keys of an M3D checkpoint: un-prefixed (``pretrained_ViT.bin``) or under a
    prefix of :data:`VISION_PREFIXES` (the full M3D-CLIP / LaMed model)."""
    for pre in VISION_PREFIXES:
        sub = {k[len(pre) :]: v for k, v in sd.items() if k.startswith(pre)}
        if sub:
            return sub
    return {k: v for k, v in sd.items() if not k.startswith("classification_head")}


def load_vision_weights(vision: ViT3D, path: PathLike) -> None:
    """Load M3D-CLIP's ViT weights into ``vision`` (strict; a ``CheckpointError`` names the
    missing / unexpected / mis-shaped keys)."""
    sd = m3d_vision_state_dict(read_state_dict(path))
    sd = {
        k: v
        for k, v in sd.items()
        if ".norm_cross_attn." not in k and not k.startswith("classification_head")
    }
    own = vision.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(
                "shape mismatch (checkpoint vs recipe.img_size/patch_size/width) "
                f"{'; '.join(shapes[:3])}"
            )
        raise CheckpointError(
            f"{path}: M3D ViT weights do not fit the configured ViT3D: " + "; ".join(parts)
        )
    vision.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


class _TokenizerFiles:
    """The recipe's tokenizer: the ``tokenizer.json`` dict (with the added tokens) and its
    special-token settings, materialised as a voxlm :class:`~voxlm.llm.Tokenizer`."""

    def __init__(self, tj: dict[str, Any], settings: dict[str, Any]) -> None:
        from ..llm import Tokenizer

        self.json, self.settings = tj, dict(settings)
        with tempfile.TemporaryDirectory() as d:
            f = pathlib.Path(d) / "tokenizer.json"
            f.write_text(json.dumps(tj))
            self.tokenizer = Tokenizer(
                f,
                bos_token=settings.get("bos_token"),
                eos_token=settings.get("eos_token"),
                pad_token=settings.get("pad_token") or settings.get("eos_token"),
                add_bos_token=bool(settings.get("add_bos_token", True)),
                add_eos_token=False,
            )

    def save(self, out: pathlib.Path) -> None:
        (out / "tokenizer.json").write_text(json.dumps(self.json, ensure_ascii=False))
        cfg = {k: self.settings.get(k) for k in ("bos_token", "eos_token", "pad_token")}
        cfg["pad_token"] = cfg["pad_token"] or cfg["eos_token"]
        cfg["add_bos_token"] = bool(self.settings.get("add_bos_token", True))
        cfg["add_eos_token"] = False
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


# ---------------------------------------------------------------------------------------------
# data


class CTPreprocess:
    """CT preprocessing to the encoder input ``[C, D, H, W]`` in [0, 1], on what
    :func:`voxlm.load_image` returns: a NIfTI :class:`~voxlm.Volume` (nibabel ``x, y, z`` axes,
    turned to ``z, y, x`` = D, H, W; a 4-D file's first volume), M3D's ``.npy`` (``[D, H, W]``
    after load_image's squeeze, kept) or a channel-first array. Then the HU ``window`` (clipped
    ScaleIntensityRange to [0, 1], e.g. -160..240) or ``percentiles`` (e.g. 0.5..99.5), the
    foreground crop (> 0, as M3D's ``CropForeground``) and a trilinear resize to ``img_size``.
    ``window=None`` and ``percentiles=None``: intensities as stored (M3D's npy are in [0, 1])."""

    def __init__(
        self,
        img_size: Sequence[int],
        window: Sequence[float] | None = (-160.0, 240.0),
        percentiles: Sequence[float] | None = None,
        crop_foreground: bool = True,
    ) -> None:
        from .. import transforms as T

        steps: list[Any] = []
        if percentiles is not None:
            lo, hi = percentiles
            steps.append(
                T.ScaleIntensityRangePercentiles(float(lo), float(hi), 0.0, 1.0, clip=True)
            )
        elif window is not None:
            lo, hi = window
            steps.append(T.ScaleIntensityRange(float(lo), float(hi), 0.0, 1.0, clip=True))
        if crop_foreground:
            steps.append(T.CropForeground())
        steps.append(T.Resize(tuple(int(s) for s in img_size)))
        self.img_size = tuple(int(s) for s in img_size)
        self.compose = T.Compose(steps)

    @staticmethod
    def to_array(x: Any) -> np.ndarray:
        """``[C, D, H, W]`` float32 of a loaded image (see the class docstring)."""
        from ..volume import Volume

        if isinstance(x, Volume):
            a = np.asarray(x.data, dtype=np.float32)
            if x.meta.get("format") == "npy":
                if x.meta.get("channels_last"):
                    return np.ascontiguousarray(np.moveaxis(a, -1, 0))
                return a[None] if a.ndim == 3 else a
            if a.ndim == 4:
                a = a[..., 0]
            if a.ndim != 3:
                raise ShapeError(f"image: expected a 3D volume, got shape {a.shape}")
            return np.ascontiguousarray(a.transpose(2, 1, 0))[None]
        a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
        return a[None] if a.ndim == 3 else a

    def __call__(self, x: Any) -> np.ndarray:
        a = self.to_array(x)
        if a.ndim != 4:
            raise ShapeError(f"image: expected [C, D, H, W], got shape {a.shape}")
        out = self.compose(a)
        if out.shape[1] == 0:  # no foreground: CropForeground returned an empty box
            raise ShapeError(
                "image: CropForeground found no voxel > 0 after intensity scaling (check "
                "data.window)"
            )
        return np.ascontiguousarray(out, dtype=np.float32)


def _vqa_close_prompt(question: str, choices: Mapping[str, str]) -> str:
    opts = " ".join(f"{k}. {choices[k]}" for k in sorted(choices))
    return f"{question} Choices: {opts}"


def expand_records(
    records: Sequence[Mapping[str, Any]], task: str, per_region: bool = True
) -> list[dict[str, Any]]:
    """One sample per (record, target), with ``task``, ``prompt`` (without image tokens; None =
    a caption template) and ``target`` added.

    ``report``: the ``report`` (M3D-Cap, CT-RATE, CTRG-Chest), or with ``per_region`` and
    chest/abdomen/pelvis ``sections`` (AMOS-MM) one sample per non-empty region (``region`` set).
    ``vqa-close``: M3D-VQA's ``question + " Choices: A. .. B. .. C. .. D. .."`` and
    ``"{letter}. {text}"``; ``vqa-open``: the question and the answer text."""
    if task not in TASKS[1:]:
        raise ConfigError(f"task: expected one of {list(TASKS[1:])}, got {task!r}")
    out: list[dict[str, Any]] = []
    for r in records:
        base = {**r, "task": task, "region": ""}
        if task == "report":
            if r.get("region") in REGIONS and isinstance(
                r.get("report"), str
            ):  # a reader's one-region record
                if r["report"].strip():
                    out.append(
                        {
                            **base,
                            "region": r["region"],
                            "prompt": REGION_PROMPT.format(region=r["region"]),
                            "target": r["report"].strip(),
                        }
                    )
                continue
            secs = r.get("sections") or {}
            regions = [k for k in REGIONS if isinstance(secs.get(k), str) and secs[k].strip()]
            if per_region and regions:
                for k in regions:
                    out.append(
                        {
                            **base,
                            "region": k,
                            "prompt": REGION_PROMPT.format(region=k),
                            "target": secs[k].strip(),
                        }
                    )
            elif isinstance(r.get("report"), str) and r["report"].strip():
                out.append({**base, "prompt": None, "target": r["report"].strip()})
        elif task == "vqa-close":
            ch = r.get("choices") or {}
            letter = str(r.get("answer", "")).strip().upper()
            if r.get("question") and ch and letter in ch:
                text = r.get("answer_text") if r.get("answer_text") is not None else ch[letter]
                out.append(
                    {
                        **base,
                        "prompt": _vqa_close_prompt(r["question"], ch),
                        "target": f"{letter}. {text}",
                    }
                )
        else:
            ans = r.get("answer_text", r.get("answer"))
            if r.get("question") and ans is not None:
                out.append({**base, "prompt": r["question"], "target": str(ans)})
    return out


class M3DPrompt:
    """The text after the image tokens, as M3D's ``multi_dataset.py`` builds it: a caption
    template (a random one of :data:`CAPTION_TEMPLATES` in training, ``eval_prompt`` in
    generation) directly after the image tokens, or ``" " + question`` for VQA and AMOS-MM's
    region instructions. Used as :class:`voxlm.datasets.ReportCollator`'s ``prompt``."""

    def __init__(self, generation: bool, eval_prompt: str, seed: int = 0) -> None:
        self.generation, self.eval_prompt, self.rng = generation, eval_prompt, random.Random(seed)

    def __call__(self, record: Mapping[str, Any]) -> str:
        p = record.get("prompt")
        if p is None:
            return self.eval_prompt if self.generation else self.rng.choice(CAPTION_TEMPLATES)
        return " " + str(p)


def _m3d_target(record: Mapping[str, Any]) -> str:
    """M3D joins ``question + " " + answer``; the answer is encoded separately with its space."""
    return " " + str(record["target"])


# ---------------------------------------------------------------------------------------------
# the model


@register_recipe("vit3d_llama")
class ViT3DLlama(Recipe):
    """ViT3D -> spatial pooling projector -> ``<im_patch>`` positions of a LLaMA prompt.

    ``forward(images [B, C, D, H, W], input_ids [B, T], attention_mask, labels)`` -> the LLaMA's
    output (``.loss`` with labels); each prompt holds ``num_image_tokens`` image tokens."""

    Config = Config

    def __init__(
        self,
        vision: ViT3D,
        llm: LlamaForCausalLM,
        image_token_id: int,
        config: Config | None = None,
        tokenizer: Any = None,
        pooling_size: int | None = None,
    ) -> None:
        super().__init__()
        if config is None:  # built from parts: the config follows the parts
            config = Config(
                in_channels=vision.in_channels,
                img_size=vision.img_size,
                patch_size=vision.patch_size,
                vision_hidden_size=vision.hidden_size,
                vision_mlp_dim=vision.mlp_dim,
                vision_layers=vision.num_layers,
                vision_heads=vision.num_heads,
                vision_proj_type=vision.proj_type,
                classification=hasattr(vision, "cls_token"),
                proj_pooling_size=pooling_size or 2,
            )
        self.config = config
        self.vision, self.llm, self.image_token_id = vision, llm, int(image_token_id)
        self.projector = SpatialPoolingProjector(
            vision.img_size,
            vision.patch_size,
            vision.hidden_size,
            llm.config.hidden_size,
            layer_type=config.proj_layer_type,
            layer_num=config.proj_layer_num,
            pooling_type=config.proj_pooling_type,
            pooling_size=config.proj_pooling_size,
        )
        self.num_image_tokens = config.num_image_tokens
        self._tok: _TokenizerFiles | None = (
            tokenizer if isinstance(tokenizer, _TokenizerFiles) else None
        )
        self.tokenizer = (
            tokenizer.tokenizer if isinstance(tokenizer, _TokenizerFiles) else tokenizer
        )
        self._llm_source: dict[str, Any] = {}
        self._base_vocab = llm.config.vocab_size
        self._embeddings_trained = False

    # -- building -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], model: Mapping[str, Any]) -> ViT3DLlama:
        """``recipe``: Config fields; ``model``: ``llm`` (HF folder or LlamaConfig fields),
        ``tokenizer`` (path or ``bundled:ctrg-bpe``), ``vision`` (optional M3D-CLIP weights:
        ``pretrained_ViT.bin``, a safetensors file or the CLIP model folder)."""
        cfg = Config.from_dict(recipe)
        model = dict(model)
        unknown = sorted(set(model) - {"llm", "tokenizer", "vision", "dtype"})
        if unknown:
            raise ConfigError(
                f"model: unknown field(s) {unknown}; known: ['dtype', 'llm', 'tokenizer', 'vision']"
            )
        if "llm" not in model or "tokenizer" not in model:
            raise ConfigError("model: 'llm' and 'tokenizer' are required")
        torch.manual_seed(cfg.seed)
        tj_path, settings = _tokenizer_file(model["tokenizer"])
        tj = _read_json(tj_path, ConfigError, "model.tokenizer")
        base_len = _vocab_len(tj)
        has_image = any(t["content"] == cfg.image_token for t in tj.get("added_tokens", [])) or (
            isinstance(tj.get("model", {}).get("vocab"), dict)
            and cfg.image_token in tj["model"]["vocab"]
        )
        if not has_image and not cfg.add_image_token:
            raise ConfigError(
                f"model.tokenizer: {tj_path} has no {cfg.image_token!r} token and "
                "recipe.add_image_token "
                "is false (set it true to add the token and resize the embeddings)"
            )
        if cfg.add_image_token:
            add_tokens_to_tokenizer_json(
                tj, (cfg.image_token, *cfg.extra_tokens), cfg.extra_plain_tokens
            )
        tok = _TokenizerFiles(tj, settings)
        t = tok.tokenizer
        spec = model["llm"]
        dtype = getattr(torch, model["dtype"]) if isinstance(model.get("dtype"), str) else None
        overrides = {
            "vocab_size": base_len,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
            "pad_token_id": t.pad_token_id,
        }
        llm = build_llm(spec, dtype=dtype, **overrides)
        if llm.config.vocab_size < base_len:
            raise ConfigError(
                f"model.llm: vocabulary {llm.config.vocab_size} is smaller than the tokenizer's "
                f"{base_len}"
            )
        vision = cls.build_vision(cfg)
        if model.get("vision"):
            load_vision_weights(vision, model["vision"])
        image_id = t.token_to_id(cfg.image_token)
        assert image_id is not None
        base_vocab = llm.config.vocab_size
        resize_token_embeddings(llm, max(_vocab_len(tj), base_vocab), cfg.embedding_init)
        m = cls(vision, llm, image_id, cfg, tok)
        m._base_vocab = base_vocab
        m._llm_source = (
            {"path": os.path.abspath(spec)}
            if isinstance(spec, (str, os.PathLike))
            else {"spec": dict(spec)}
        )
        if model.get("vision"):
            m._llm_source["vision"] = os.path.abspath(model["vision"])
        return m

    @staticmethod
    def build_vision(cfg: Config) -> ViT3D:
        """M3D's ViT3D (MONAI ViT names) from the config."""
        return ViT3D(
            in_channels=cfg.in_channels,
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            hidden_size=cfg.vision_hidden_size,
            mlp_dim=cfg.vision_mlp_dim,
            num_layers=cfg.vision_layers,
            num_heads=cfg.vision_heads,
            proj_type=cfg.vision_proj_type,
            classification=cfg.classification,
            qkv_bias=cfg.qkv_bias,
        )

    # -- forward --------------------------------------------------------------------------

    def check_images(self, images: Any) -> None:
        """``ShapeError`` unless ``images`` is ``[B, in_channels, *img_size]``."""
        want = (self.config.in_channels, *self.config.img_size)
        if not isinstance(images, torch.Tensor):
            raise VoxlmTypeError(
                f"images: expected a tensor [B, {', '.join(map(str, want))}], got "
                f"{type(images).__name__}"
            )
        if images.dim() != 5 or tuple(images.shape[1:]) != want:
            raise ShapeError(
                f"images: expected [B, {', '.join(map(str, want))}] (channels, D, H, W the encoder "
                f"patches with {self.config.patch_size}), got {tuple(images.shape)}"
            )

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, D, H, W] -> [B, num_image_tokens, llm hidden]``: ViT3D, M3D's feature
        selection (``patch`` drops the class token), spatial pooling projector."""
        self.check_images(images)
        last, hidden = self.vision(images.to(self.vision.norm.weight.dtype))
        feats = (
            last
            if self.config.vision_select_layer == -1
            else hidden[self.config.vision_select_layer]
        )
        if self.config.vision_select_feature == "patch" and hasattr(self.vision, "cls_token"):
            feats = feats[:, 1:]
        return self.projector(feats)

    def embed(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings with the image tokens at the ``<im_patch>`` positions."""
        mask = input_ids == self.image_token_id
        counts = mask.sum(1)
        if bool((counts != self.num_image_tokens).any()):
            raise ShapeError(
                f"input_ids: every prompt needs {self.num_image_tokens} {self.config.image_token} "
                "tokens, "
                f"got {counts.tolist()}"
            )
        image = self.encode_images(images)
        text = self.llm.get_input_embeddings()(input_ids)
        return splice_image_tokens(text, image, mask)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        return self.llm(
            inputs_embeds=self.embed(images, input_ids),
            attention_mask=attention_mask,
            labels=labels,
        )

    # -- stages ---------------------------------------------------------------------------

    def _lora_config(self) -> LoraConfig:
        c = self.config
        tm = c.lora_target_modules
        return LoraConfig(
            r=c.lora_r,
            lora_alpha=c.lora_alpha,
            lora_dropout=c.lora_dropout,
            target_modules=list(tm) if isinstance(tm, (list, tuple)) else tm,
            base_model_name_or_path=self._llm_source.get("path"),
        )

    def has_lora(self) -> bool:
        return any(".lora_" in k for k, _ in self.llm.named_parameters())

    def set_stage(self, n: int, lora: LoraConfig | None = None) -> None:
        """What trains in each stage (released M3D code). Stage 1: the projector (+ the input
        embeddings with ``stage1_train_embeddings``). Stage 2: LoRA on the LLM, the projector, the
        ViT with ``train_vision``, input embeddings and head with ``stage2_train_embeddings``."""
        if n not in (1, 2):
            raise ConfigError(f"stage: expected 1 or 2, got {n}")
        c = self.config
        if n == 2 and c.stage2_lora and not self.has_lora():
            add_lora(self.llm, lora or self._lora_config())
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.projector.parameters():
            p.requires_grad_(True)
        emb = self.llm.get_input_embeddings().weight
        if n == 1:
            if c.stage1_train_embeddings:
                emb.requires_grad_(True)
                self._embeddings_trained = True
            return
        for k, p in self.llm.named_parameters():
            if ".lora_A." in k or ".lora_B." in k:
                p.requires_grad_(True)
        if c.train_vision:
            for p in self.vision.parameters():
                p.requires_grad_(True)
        if c.stage2_train_embeddings:
            emb.requires_grad_(True)
            self.llm.lm_head.weight.requires_grad_(True)
            self._embeddings_trained = True

    def stage(self, n: int, lora: LoraConfig | None = None) -> None:
        """Backward-compatible stage switch of the parts-level wrapper: stage 1 trains only the
        projector, stage 2 the projector and LoRA (no ViT, no embeddings)."""
        c = copy.copy(self.config)
        saved = self.config
        self.config = Config(
            **{
                **asdict(c),
                "stage1_train_embeddings": False,
                "stage2_train_embeddings": False,
                "train_vision": False,
            }
        )
        try:
            self.set_stage(n, lora)
        finally:
            self.config = saved

    def stages(self, args: Any) -> list[Any]:
        """``[Stage("stage1-projector"), Stage("stage2-lora")]``: each stage's learning rate,
        epochs, scheduler and warmup from the config (None keeps ``args``' value)."""
        from ..train import Stage

        c = self.config

        def derive(lr: float | None, epochs: float | None) -> Any:
            ch: dict[str, Any] = {}
            if lr is not None:
                ch["learning_rate"] = float(lr)
            if epochs is not None:
                ch["num_train_epochs"] = float(epochs)
            if c.lr_scheduler_type is not None:
                ch["lr_scheduler_type"] = c.lr_scheduler_type
            if c.warmup_ratio is not None:
                ch["warmup_ratio"] = float(c.warmup_ratio)
            return args.replace(**ch)

        return [
            Stage(
                "stage1-projector",
                derive(c.stage1_learning_rate, c.stage1_epochs),
                lambda m: m.set_stage(1),
            ),
            Stage(
                "stage2-lora",
                derive(c.stage2_learning_rate, c.stage2_epochs),
                lambda m: m.set_stage(2),
            ),
        ]

    # -- data -----------------------------------------------------------------------------

    def _task_for(self, records: Sequence[Mapping[str, Any]]) -> str:
        if self.config.task != "auto":
            return self.config.task
        if records and records[0].get("question"):
            return "vqa-close" if records[0].get("choices") else "vqa-open"
        return "report"

    def transform(self, data: Mapping[str, Any] | None = None) -> CTPreprocess:
        """The CT preprocessing for ``data`` (``window``, ``percentiles``, ``crop_foreground``;
        M3D's own npy formats default to no window and no crop: they are preprocessed)."""
        data = dict(data or {})
        m3d = data.get("format") in ("m3d-cap", "m3d-vqa")
        return CTPreprocess(
            self.config.img_size,
            data.get("window", None if m3d else (-160.0, 240.0)),
            data.get("percentiles"),
            bool(data.get("crop_foreground", not m3d)),
        )

    def samples(self, records: Sequence[Mapping[str, Any]], transform: Any = None) -> Any:
        """A :class:`voxlm.datasets.ReportDataset` of the task's samples of ``records``."""
        from ..datasets import ReportDataset

        samples = expand_records(records, self._task_for(records), self.config.per_region)
        return ReportDataset(
            samples, transform=transform if transform is not None else self.transform()
        )

    def datasets(self, data: Mapping[str, Any]) -> tuple[Any, Any]:
        """``(train, eval)`` :class:`voxlm.datasets.ReportDataset` of the task's samples from
        ``data``: ``format`` and ``root`` (a voxlm.datasets reader), ``synth``
        (``voxlm.synth.ensure``: generate the miniature dataset unless it is there), ``train_split``
        / ``eval_split`` (train / validation; null for none), ``max_train`` / ``max_eval`` (first
        samples), preprocessing ``window`` ([lo, hi] HU or null), ``percentiles`` ([0.5, 99.5]
        instead of a window), ``crop_foreground``, ``spatial_size`` (must equal
        ``recipe.img_size``); ``options``: passed to the reader."""
        data = dict(data)
        known = {
            "format",
            "root",
            "synth",
            "train_split",
            "eval_split",
            "max_train",
            "max_eval",
            "window",
            "percentiles",
            "crop_foreground",
            "spatial_size",
            "options",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"data: unknown field(s) {unknown}; known: {sorted(known)}")
        for k in ("format", "root"):
            if k not in data:
                raise ConfigError(f"data.{k}: required")
        size = tuple(data.get("spatial_size") or self.config.img_size)
        if size != tuple(self.config.img_size):
            raise ShapeError(
                f"data.spatial_size {list(size)}: the encoder patches exactly recipe.img_size "
                f"{list(self.config.img_size)} with patch {list(self.config.patch_size)}"
            )
        root = pathlib.Path(data["root"])
        ensure_synth_data(data)  # generate the miniature dataset (reused when already there)
        from ..datasets import ReportDataset, read_records

        transform = self.transform(data)
        opts = dict(data.get("options") or {})
        out: list[Any] = []
        for split, cap in (
            (data.get("train_split", "train"), data.get("max_train")),
            (data.get("eval_split", "validation"), data.get("max_eval")),
        ):
            if split is None:
                out.append(None)
                continue
            recs = read_records(data["format"], root, split=split, **opts)
            samples = expand_records(recs, self._task_for(recs), self.config.per_region)
            if cap is not None:
                samples = samples[: int(cap)]
            out.append(ReportDataset(samples, transform=transform) if samples else None)
        return out[0], out[1]

    def collator(self, generation: bool = False) -> Any:
        """:class:`voxlm.datasets.ReportCollator` with M3D's prompts (:class:`M3DPrompt`): BOS +
        ``image_token * num_image_tokens`` + prompt [+ " " + answer + EOS]; labels -100 on the
        prompt and padding; right padding for training, left for generation (``generation``)."""
        from ..datasets import ReportCollator

        if self.tokenizer is None:
            raise ConfigError(
                "collator: the recipe has no tokenizer (build it with from_config / "
                "from_pretrained)"
            )
        return ReportCollator(
            self.tokenizer,
            self.num_image_tokens,
            self.config.max_length,
            prompt=M3DPrompt(generation, self.config.eval_prompt, self.config.seed),
            image_token=self.config.image_token,
            target_key=_m3d_target,
            mode="generate" if generation else "train",
        )

    # -- generation -----------------------------------------------------------------------

    def _gen_kwargs(self, **over: Any) -> dict[str, Any]:
        c = self.config
        t = self.tokenizer
        eos = t.eos_token_id if t is not None else None
        pad = t.pad_token_id if t is not None and t.pad_token_id is not None else eos
        kw: dict[str, Any] = dict(
            max_new_tokens=c.max_new_tokens,
            num_beams=c.num_beams,
            do_sample=c.do_sample,
            repetition_penalty=c.repetition_penalty,
            length_penalty=c.length_penalty,
        )
        if eos is not None:
            kw["eos_token_id"] = eos
        if pad is not None:
            kw["pad_token_id"] = pad
        kw.update(over)
        return kw

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kw: Any,
    ) -> torch.Tensor:
        """New tokens ``[B, n]`` after left-padded prompts (voxlm's Rust generate on
        ``inputs_embeds``, batched, beams as configured); unset settings come from the config."""
        return self.llm.generate(
            inputs_embeds=self.embed(images, input_ids),
            attention_mask=attention_mask,
            **self._gen_kwargs(**kw),
        )

    def _decode(self, new: torch.Tensor) -> list[str]:
        return [s.strip() for s in self.tokenizer.batch_decode(new.cpu())]

    @torch.no_grad()
    def generate_text(
        self, images: torch.Tensor, prompts: Sequence[str | None] | None = None, **kw: Any
    ) -> list[str]:
        """Generated texts for ``images [B, C, D, H, W]`` (preprocessed) and per-sample prompts
        (None: the report prompt ``eval_prompt``; else a question / instruction as
        :func:`expand_records` writes them, without image tokens)."""
        prompts = list(prompts) if prompts is not None else [None] * len(images)
        b = self.collator(generation=True)(
            [{"image": im, "prompt": p, "target": ""} for im, p in zip(images, prompts)]
        )
        dev = next(self.llm.parameters()).device
        return self._decode(
            self.generate(
                b["images"].to(dev), b["input_ids"].to(dev), b["attention_mask"].to(dev), **kw
            )
        )

    def prompt(self, question: str = "Write the findings of this chest CT.") -> str:
        """The image placeholders followed by an instruction (parts-level helper)."""
        return self.config.image_token * self.num_image_tokens + f"\n{question}\n"

    # -- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self, dataset: Any, batch_size: int | None = None, **kw: Any
    ) -> list[dict[str, Any]]:
        """Generate for every sample of ``dataset`` (items of :meth:`samples` / :meth:`datasets`):
        rows with ``id``, ``task``, ``region``, ``question``, ``reference``, ``prediction`` (+ VQA
        fields)."""
        was = self.training
        self.eval()
        coll = self.collator(generation=True)
        bs = batch_size or self.config.eval_batch_size
        rows: list[dict[str, Any]] = []
        dev = next(self.llm.parameters()).device
        try:
            for s in range(0, len(dataset), bs):
                items = [dataset[i] for i in range(s, min(s + bs, len(dataset)))]
                b = coll(items)
                new = self.generate(
                    b["images"].to(dev), b["input_ids"].to(dev), b["attention_mask"].to(dev), **kw
                )
                for i, (it, text) in enumerate(zip(items, self._decode(new))):
                    rows.append(
                        {
                            "id": str(it.get("id", s + i)),
                            "task": it.get("task", "report"),
                            "region": it.get("region", ""),
                            "question": it.get("prompt") or self.config.eval_prompt,
                            "reference": it.get("target", ""),
                            "prediction": text,
                            "answer": it.get("answer", ""),
                            "choices": it.get("choices"),
                            "question_type": it.get("question_type", ""),
                        }
                    )
        finally:
            self.train(was)
        return rows

    def _score(self, task: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The metrics of ``rows`` of one ``task`` (per-sample scores are added to the rows)."""
        from ..metrics import parse_choice, report_scores, vqa_accuracy

        metrics: dict[str, Any] = {}
        if task == "vqa-close":
            answers = [str(r["answer"]).strip().upper() for r in rows]
            metrics["accuracy"] = vqa_accuracy(
                [r["prediction"] for r in rows], answers, [r["choices"] for r in rows]
            )
            for r, a in zip(rows, answers):
                r["parsed"] = parse_choice(r["prediction"], r["choices"]) or ""
                r["correct"] = int(r["parsed"] == a)
                r["correct_m3d"] = int(a + "." in r["prediction"])
            metrics["accuracy_m3d"] = float(np.mean([r["correct_m3d"] for r in rows]))
            types = sorted({str(r["question_type"]) for r in rows if str(r["question_type"])})
            metrics["accuracy_per_type"] = {
                t: float(np.mean([r["correct"] for r in rows if str(r["question_type"]) == t]))
                for t in types
            }
        else:
            hyps = [r["prediction"] for r in rows]
            refs = [r["reference"] for r in rows]
            sc = report_scores(refs, hyps, per_sample=True, meteor=self.config.meteor)
            per = sc.pop("per_sample")
            metrics.update({k: float(v) for k, v in sc.items()})
            for k, v in per.items():
                for r, x in zip(rows, v):
                    r[k] = float(x)
            regions = sorted({r["region"] for r in rows if r["region"]})
            if regions:
                metrics["per_region"] = {}
                for g in regions:
                    sel = [r for r in rows if r["region"] == g]
                    s2 = report_scores(
                        [r["reference"] for r in sel],
                        [r["prediction"] for r in sel],
                        meteor=self.config.meteor,
                    )
                    metrics["per_region"][g] = {k: float(v) for k, v in s2.items()}
            if self.config.green_judge:
                from ..green import green

                gr = green(refs, hyps, judge=self.config.green_judge)
                metrics["GREEN"] = gr["green"]
                for r, x in zip(rows, gr["scores"]):
                    r["GREEN"] = x
        return metrics

    def evaluate(
        self, dataset: Any, output_dir: PathLike | None = None, **generate_kwargs: Any
    ) -> dict[str, Any]:
        """Generate and score with the papers' metrics: reports and open-ended VQA with BLEU-1..4,
        ROUGE-L, CIDEr (``voxlm.metrics.report_scores``; METEOR when Java is present; GREEN with
        ``green_judge``), per AMOS-MM region too; close-ended VQA with accuracy
        (``voxlm.metrics.vqa_accuracy`` / ``parse_choice``) and M3D's rule (``accuracy_m3d``:
        ``letter + "."`` in the answer, Bench/eval/eval_vqa.py), per question type. With
        ``output_dir``: ``eval.json`` and ``predictions.csv`` (one row per sample). A dataset
        mixing tasks (e.g. reports and VQA) is scored per task: ``{"task": "mixed", "per_task":
        {task: {"n": ..., metrics}}}``."""
        if dataset is None or len(dataset) == 0:
            raise DataError("evaluate: the dataset is empty (expected at least one sample)")
        rows = self.predict(dataset, **generate_kwargs)
        tasks = list(dict.fromkeys(str(r["task"]) for r in rows))  # in order of appearance
        if len(tasks) == 1:
            metrics: dict[str, Any] = {
                "task": tasks[0],
                "n": len(rows),
                **self._score(tasks[0], rows),
            }
        else:  # a mixed dataset (e.g. reports + VQA): each task scored with its own metrics
            metrics = {
                "task": "mixed",
                "n": len(rows),
                "per_task": {
                    t: {"n": len(sel), **self._score(t, sel)}
                    for t in tasks
                    for sel in [[r for r in rows if str(r["task"]) == t]]
                },
            }
        if output_dir is not None:
            cols = ["id", "task", "region", "question", "reference", "prediction"]
            if "vqa-close" in tasks:
                cols += ["answer", "question_type"]
            extra = list(
                dict.fromkeys(
                    k
                    for r in rows
                    for k in r
                    if k not in cols and k not in ("choices", "answer", "question_type")
                )
            )
            write_eval_outputs(output_dir, metrics, rows, cols + extra)
        return metrics

    # -- persistence ----------------------------------------------------------------------

    def save_pretrained(self, path: PathLike) -> None:
        """``config.json`` (``"recipe": "vit3d_llama"``, the Config, the base LLM's path),
        ``vision.safetensors``, ``projector.safetensors``, ``adapter/`` (PEFT LoRA folder),
        ``embeddings.safetensors`` (the added rows, or the whole input/output matrices when a
        stage trained them), ``tokenizer.json`` + ``tokenizer_config.json``. A base LLM given as
        a dict of LlamaConfig fields (random) has no path: its weights go to ``llm/``."""
        from .. import _core

        out = pathlib.Path(path)
        out.mkdir(parents=True, exist_ok=True)
        src = dict(self._llm_source)
        if "path" not in src:
            self._save_base_llm(out / "llm")
            src = {**src, "path": "llm"}
        emb = self.llm.get_input_embeddings().weight.detach()
        head = self.llm.lm_head.weight.detach()
        n0 = self._base_vocab
        full = self._embeddings_trained
        tensors = {
            "embed_tokens": emb if full else emb[n0:],
            "lm_head": head if full else head[n0:],
        }
        if tensors["embed_tokens"].shape[0] or full:
            _core.save_safetensors(
                {k: v.contiguous() for k, v in tensors.items()},
                os.fspath(out / "embeddings.safetensors"),
            )
        _core.save_safetensors(
            {k: v.detach().contiguous() for k, v in self.vision.state_dict().items()},
            os.fspath(out / "vision.safetensors"),
        )
        _core.save_safetensors(
            {k: v.detach().contiguous() for k, v in self.projector.state_dict().items()},
            os.fspath(out / "projector.safetensors"),
        )
        if self.has_lora():
            save_adapter(self.llm, out / "adapter")
        if self._tok is not None:
            self._tok.save(out)
        cfg = {
            "recipe": self.name,
            "config": jsonable(asdict(self.config)),
            "llm": src,
            "base_vocab_size": n0,
            "vocab_size": self.llm.config.vocab_size,
            "image_token_id": self.image_token_id,
            "embeddings": "full" if full else "rows",
            "lora": self.has_lora(),
        }
        (out / "config.json").write_text(json.dumps(cfg, indent=2))

    def _save_base_llm(self, out: pathlib.Path) -> None:
        """The LLM without LoRA and with the base vocabulary, as a HF checkpoint."""
        from .. import _core
        from ..llm import LlamaConfig

        out.mkdir(parents=True, exist_ok=True)
        sd = {}
        for k, v in self.llm.state_dict().items():
            if ".lora_" in k or k.endswith("rotary_emb.inv_freq"):
                continue
            k = k.replace(".base_layer.", ".")
            if k in ("model.embed_tokens.weight", "lm_head.weight"):
                v = v[: self._base_vocab]
            sd[k] = v.detach().contiguous()
        if self.llm.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        c = LlamaConfig.from_dict({**self.llm.config.to_dict(), "vocab_size": self._base_vocab})
        (out / "config.json").write_text(json.dumps(c.to_dict(), indent=2))
        _core.save_safetensors(sd, os.fspath(out / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: PathLike) -> ViT3DLlama:
        """Reload what :meth:`save_pretrained` wrote (the base LLM from its recorded path)."""
        from .. import _core

        p = pathlib.Path(path)
        meta = check_saved_recipe(p, "vit3d_llama")
        cfg = Config.from_dict(meta["config"], section=f"{p}/config.json")
        llm_path = pathlib.Path(meta["llm"]["path"])
        if not llm_path.is_absolute():
            llm_path = p / llm_path
        if not (llm_path / "config.json").is_file():
            raise CheckpointError(
                f"{p}: the base LLM {llm_path} is missing (config.json records it by path)"
            )
        llm = LlamaForCausalLM.from_pretrained(llm_path)
        if llm.config.vocab_size != meta["base_vocab_size"]:
            raise CheckpointError(
                f"{p}: base LLM {llm_path} has {llm.config.vocab_size} tokens, the recipe was "
                f"trained on one with {meta['base_vocab_size']}"
            )
        resize_token_embeddings(llm, meta["vocab_size"], "m3d")
        ef = p / "embeddings.safetensors"
        if ef.is_file():
            e = _core.load_safetensors(os.fspath(ef), None, "cpu")
            with torch.no_grad():
                if meta["embeddings"] == "full":
                    llm.get_input_embeddings().weight.copy_(e["embed_tokens"])
                    if not llm.config.tie_word_embeddings:
                        llm.lm_head.weight.copy_(e["lm_head"])
                else:
                    n0 = meta["base_vocab_size"]
                    llm.get_input_embeddings().weight[n0:] = e["embed_tokens"]
                    if not llm.config.tie_word_embeddings:
                        llm.lm_head.weight[n0:] = e["lm_head"]
        if meta.get("lora"):
            load_adapter(llm, p / "adapter")
        vision = cls.build_vision(cfg)
        vision.load_state_dict(
            _core.load_safetensors(os.fspath(p / "vision.safetensors"), None, "cpu")
        )
        tok = None
        if (p / "tokenizer.json").is_file():
            tc = p / "tokenizer_config.json"
            settings = _read_json(tc, CheckpointError, "from_pretrained") if tc.is_file() else {}
            tok = _TokenizerFiles(
                _read_json(p / "tokenizer.json", CheckpointError, "from_pretrained"), settings
            )
        m = cls(vision, llm, meta["image_token_id"], cfg, tok)
        m.projector.load_state_dict(
            _core.load_safetensors(os.fspath(p / "projector.safetensors"), None, "cpu")
        )
        m._base_vocab = meta["base_vocab_size"]
        m._llm_source = dict(meta["llm"], path=os.fspath(llm_path.resolve()))
        m._embeddings_trained = meta["embeddings"] == "full"
        m.eval()
        return m


__all__ = [
    "Config",
    "ViT3DLlama",
    "M3DPrompt",
    "CTPreprocess",
    "expand_records",
    "resize_token_embeddings",
    "add_tokens_to_tokenizer_json",
    "load_vision_weights",
    "read_state_dict",
    "m3d_vision_state_dict",
    "CAPTION_TEMPLATES",
    "REGION_PROMPT",
]
