"""LLaVA-style two-stage tuning for chest X-ray report generation (RRG24, Gla-AI4BioMed).

Method: the Gla-AI4BioMed entry to the BioNLP 2024 RRG24 shared task — LLaVA-1.5 with a CLIP
vision tower, a 2-layer GELU projector and a Vicuna/LLaMA decoder; stage 1 trains the projector,
stage 2 LoRA; the (up to four) images of a study stitched side by side with a 10 px gap; separate
Findings and Impression adapters; beam search 2, 256 new tokens.

What follows LLaVA's released code (haotian-liu/LLaVA; files named):

* Vision (``llava/model/multimodal_encoder/clip_encoder.py``): frozen ``CLIPVisionModel``,
  ``hidden_states[mm_vision_select_layer = -2]``, ``select_feature="patch"`` drops CLS ->
  ``(image_size / 14)^2`` tokens (576 at 336 px). voxlm's :class:`~voxlm.vision.CLIPVision`
  (transformers' names, Rust forward).
* Projector (``multimodal_projector/builder.py``): ``mlp2x_gelu`` = ``nn.Sequential(Linear,
  GELU, Linear)`` named ``mm_projector.0`` / ``mm_projector.2`` here, so LLaVA's stage-1
  ``mm_projector.bin`` (keys ``model.mm_projector.{0,2}.{weight,bias}``) loads with
  :meth:`LlavaRRG.load_projector`; forward in Rust (``voxlm._core.mlp_project``).
* Images (``llava/train/train.py`` ``image_aspect_ratio == "pad"``, ``llava/mm_utils.py``):
  ``expand2square`` on a canvas of the processor's mean colour ``(122, 116, 104)``, then
  ``CLIPImageProcessor`` (clip-vit-large-patch14-336: shortest side 336 bicubic, center crop 336,
  rescale 1/255, CLIP mean/std) — :func:`voxlm.image.clip_preprocess` (Rust; :func:`clip_preprocess`
  here is the Pillow version, used with an older extension); the study's images first go through
  :func:`voxlm.transforms.stitch_images` (10 px gap, filled with 0).
* Templates (``llava/conversation.py``): stage 1 ``conv_llava_plain`` (``preprocess_plain``:
  ``<image>`` + report + ``"\\n"``, loss on the report); stage 2 ``conv_vicuna_v1`` (separators
  ``" "`` and ``"</s>"``): :func:`vicuna_v1_prompt` is byte-identical to
  ``Conversation.get_prompt``. Note: ``voxlm.llm.format_prompt("vicuna")`` uses FastChat's older
  "curious human" system sentence, not LLaVA's "curious user"; this module has its own.
* Labels (``preprocess_v1``): loss on the answer and its ``</s>``; the prompt through
  ``ASSISTANT:`` is masked. voxlm tokenises prompt and answer separately (so the training prompt's
  tokens equal the generation prompt's), instead of LLaVA's length arithmetic on the joint string.
* LoRA (``scripts/v1_5/finetune_lora.sh``, ``find_all_linear_names``): r 128, alpha 256, dropout
  0.05 on every linear of the LLM; lr 2e-4 cosine, warmup 3 %; stage 1 lr 1e-3. Two adapters,
  ``findings`` and ``impression``, on one base model (:func:`voxlm.adapters.set_adapter` switches).
  The projector is frozen in stage 2 (``stage2_train_projector`` opts into LLaVA-1.5's
  ``mm_projector_lr``, which would give the two adapters different projectors: off by default).

Evaluation: BLEU-4 and ROUGE-L per section (:func:`voxlm.metrics.report_scores`, pycocoevalcap's
definitions) and any scorer callables the user passes (BERTScore, F1-CheXbert, F1-RadGraph:
``fn(references, hypotheses) -> float | dict``, as ``evaluate(scorers=...)`` or by import path in
``recipe.scorers``, so also from the CLI; voxlm downloads no weights). ``eval.json`` says which
metrics were computed and which of RRG24's were not (``metrics.not_computed``).
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _core
from ..exceptions import CheckpointError, ConfigError, DataError, ShapeError
from .base import (
    PathLike,
    Recipe,
    build_llm,
    build_tokenizer,
    check_kwargs,
    check_numbers,
    check_path_spec,
    check_saved_recipe,
    config_from_dict,
    ensure_synth_data,
)
from .picg import check_config_types, check_data_keys
from .registry import register_recipe

#: ``conv_vicuna_v1.system`` in llava/conversation.py
LLAVA_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_TOKEN = "<image>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SECTIONS = ("findings", "impression")
#: the RRG24 shared task's metrics; voxlm computes the first two, the others need a scorer
#: (``recipe.scorers`` or ``evaluate(scorers=...)``) under exactly these names
RRG24_METRICS = ("BLEU-4", "ROUGE-L", "BERTScore", "F1-CheXbert", "F1-RadGraph")


def scorer_paths(spec: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """``recipe.scorers`` as ``{name: "module:function"}`` (a list's names: the function names)."""
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    return {str(p).rpartition(":")[2]: str(p) for p in spec}


def import_scorers(spec: Mapping[str, str] | Sequence[str]) -> dict[str, Callable[..., Any]]:
    """Import ``recipe.scorers``: ``{name: callable}``; ``ConfigError`` naming a path that does
    not import or is not callable."""
    import importlib

    out = {}
    for name, path in scorer_paths(spec).items():
        mod, _, fn = path.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ConfigError(
                f"recipe.scorers: {path!r} does not import ({type(e).__name__}: {e})"
            ) from e
        if not callable(obj):
            raise ConfigError(
                f"recipe.scorers: {path!r} is a {type(obj).__name__}, expected a function"
            )
        out[name] = obj
    return out


def vicuna_v1_prompt(
    question: str, answer: str | None = None, system: str = LLAVA_VICUNA_SYSTEM
) -> str:
    """``conv_vicuna_v1`` (``SeparatorStyle.TWO``, sep ``" "``, sep2 ``"</s>"``) with one round:
    ``system + " " + "USER: " + question + " " + "ASSISTANT:" (+ " " + answer + "</s>")``."""
    ret = system + " " + "USER: " + question + " "
    return ret + ("ASSISTANT:" if answer is None else "ASSISTANT: " + answer + "</s>")


# ---------------------------------------------------------------------------------------------
# images


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a dependency of the image path
        raise ConfigError(
            "llava_rrg: reading and resizing images needs Pillow (pip install pillow)"
        ) from e
    return Image


def read_image(path: str) -> np.ndarray:
    """A 2D image (PNG, JPEG, DICOM, ... through :func:`voxlm.load_image`) as ``[H, W]`` (grey) or
    ``[H, W, C]``; an unreadable file raises voxlm's ``VolumeFormatError`` / ``VoxlmIOError``."""
    from ..volume import load_image

    a = np.asarray(load_image(path).data)
    if a.ndim == 3 and a.shape[-1] == 1:
        return a[..., 0]
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4)):
        return a
    raise DataError(
        f"{path}: expected a 2D image ([H, W] or [H, W, 1|3|4]), got an array of shape "
        f"{list(a.shape)}"
    )


def stitch_study(images: Sequence[np.ndarray], gap: int = 10, max_images: int = 4) -> np.ndarray:
    """Up to ``max_images`` views side by side (``voxlm.transforms.stitch_images``); the views of
    a study must have the same number of channels (a ``ShapeError`` names them)."""
    from ..transforms import stitch_images

    imgs = [np.asarray(i) for i in images[:max_images]]
    if not imgs:
        raise ShapeError("images: a study needs at least one image")
    chans = [1 if i.ndim == 2 else i.shape[-1] for i in imgs]
    if len(set(chans)) != 1 or any(i.ndim not in (2, 3) for i in imgs):
        raise ShapeError(
            f"images: the views of a study have different channel counts {chans} "
            f"(shapes {[tuple(i.shape) for i in imgs]}); convert them to one mode first"
        )
    return stitch_images(imgs, gap=gap, value=0)


def expand2square(img: Any, background_color: tuple[int, int, int] = (122, 116, 104)) -> Any:
    """``llava/mm_utils.py`` ``expand2square`` (PIL image in, PIL image out)."""
    Image = _pil()
    width, height = img.size
    if width == height:
        return img
    if width > height:
        result = Image.new(img.mode, (width, width), background_color)
        result.paste(img, (0, (width - height) // 2))
        return result
    result = Image.new(img.mode, (height, height), background_color)
    result.paste(img, ((height - width) // 2, 0))
    return result


def clip_preprocess(
    img: Any, size: int = 336, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """``CLIPImageProcessor`` of clip-vit-large-patch14-336: shortest side ``size`` (bicubic),
    center crop ``size``, rescale 1/255, normalise -> ``[3, size, size]`` float32."""
    Image = _pil()
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    img = img.resize((nw, nh), Image.BICUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    img = img.crop((left, top, left + size, top + size))
    a = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    a = (a - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def study_pixels(
    paths: Sequence[str],
    size: int = 336,
    gap: int = 10,
    max_images: int = 4,
    mean: Sequence[float] = CLIP_MEAN,
) -> torch.Tensor:
    """A study's images -> LLaVA-1.5 ``pixel_values`` ``[3, size, size]``: stitch, pad to square
    with the mean colour, CLIP preprocessing."""
    a = stitch_study([read_image(p) for p in paths], gap=gap, max_images=max_images)
    if a.dtype != np.uint8:
        lo, hi = float(a.min()), float(a.max())
        a = np.clip((a - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    background = tuple(int(x * 255) for x in mean)
    try:  # voxlm's Rust CLIP preprocessing (voxlm.image: Pillow's bicubic, bit-exact)
        from ..image import clip_preprocess as rust_clip_preprocess

        return rust_clip_preprocess(
            a, size=size, crop_size=size, pad_to_square=True, background=background
        )[0]
    except (ImportError, AttributeError):  # an extension built before voxlm.image landed
        Image = _pil()
        img = expand2square(Image.fromarray(a).convert("RGB"), background)
        return clip_preprocess(img, size)


# ---------------------------------------------------------------------------------------------
# config


@dataclass
class LlavaRRGConfig:
    """LLaVA-1.5 / RRG24 settings (see the module docstring for the sources)."""

    select_layer: int = -2
    select_feature: str = "patch"
    gap: int = 10
    max_images: int = 4
    findings_question: str = "Describe the findings of the chest X-ray."
    impression_question: str = "Write the impression of the chest X-ray."
    image_first: bool = True  # LLaVA's "<image>\n{question}"
    lora_r: int = 128
    lora_alpha: float = 256
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )
    stage1_lr: float = 1e-3
    stage1_epochs: float = 1
    stage2_lr: float = 2e-4
    stage2_epochs: float = 1
    warmup_ratio: float = 0.03
    stage2_train_projector: bool = False
    sections: tuple[str, ...] = SECTIONS
    max_length: int = 2048
    num_beams: int = 2
    max_new_tokens: int = 256
    #: extra report scorers ``fn(references, hypotheses) -> float | dict`` by import path
    #: ``"module:function"`` (a list: named by the function; a mapping: ``{name: path}``), e.g.
    #: ``{BERTScore: my_metrics:bertscore}``; :meth:`LlavaRRG.evaluate` calls them per section.
    scorers: dict[str, str] | list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_config_types(self)
        check_numbers(self, positive_ints=("lora_r", "max_length", "num_beams", "max_new_tokens"))
        bad_paths = [
            p
            for p in scorer_paths(self.scorers).values()
            if p.count(":") != 1 or not all(p.split(":"))
        ]
        if bad_paths:
            raise ConfigError(
                f"recipe.scorers: expected import paths 'module:function', got {bad_paths}"
            )
        self.sections = tuple(self.sections)
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad or not self.sections:
            raise ConfigError(
                f"recipe.sections: expected a subset of {list(SECTIONS)}, got {list(self.sections)}"
            )
        if self.select_feature not in ("patch", "cls_patch"):
            raise ConfigError(
                "recipe.select_feature: expected 'patch' or 'cls_patch', got "
                f"{self.select_feature!r}"
            )
        if not 1 <= self.max_images <= 4:
            raise ConfigError(f"recipe.max_images: expected 1..4, got {self.max_images}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], section: str = "recipe") -> LlavaRRGConfig:
        return config_from_dict(cls, d, section)


# ---------------------------------------------------------------------------------------------
# data


class StudyDataset(torch.utils.data.Dataset):
    """One item per study: ``{"id", "pixel_values" [3, S, S], "findings", "impression"}``."""

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        size: int,
        cfg: LlavaRRGConfig,
        require: Sequence[str] = SECTIONS,
    ) -> None:
        keep = []
        for i, r in enumerate(records):
            imgs = r.get("images") or ([r["image"]] if r.get("image") else None)
            if not imgs:
                raise DataError(f"record {i} ({r.get('id')!r}): no images")
            sec = r.get("sections") or {}
            if all((sec.get(s) or "").strip() for s in require):
                keep.append(r)
        self.records = keep
        self.size, self.cfg = size, cfg

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        r = self.records[idx]
        imgs = r.get("images") or [r["image"]]
        sec = r.get("sections") or {}
        return {
            "id": str(r["id"]),
            "pixel_values": study_pixels(imgs, self.size, self.cfg.gap, self.cfg.max_images),
            "findings": (sec.get("findings") or "").strip(),
            "impression": (sec.get("impression") or "").strip(),
        }


class LlavaCollator:
    """Stage 1 (``task == "align"``): ``conv_llava_plain``; stage 2: ``conv_vicuna_v1`` with the
    section's question. Image placeholders (``num_image_tokens`` positions, marked in
    ``image_mask``) take the projected image tokens in the forward."""

    def __init__(self, recipe: LlavaRRG) -> None:
        self.recipe = recipe

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        rec = self.recipe
        rows = [rec.encode(it[rec.section], rec.section, rec.task) for it in items]
        batch = rec.pad(rows, side="right")
        batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        batch["ids"] = [it["id"] for it in items]
        return batch


# ---------------------------------------------------------------------------------------------
# the recipe


@dataclass
class LlavaOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


@register_recipe("llava_rrg")
class LlavaRRG(Recipe):
    """CLIP (frozen) -> ``mm_projector`` (mlp2x_gelu) -> LLaMA with a Findings and an Impression
    LoRA adapter."""

    Config = LlavaRRGConfig

    def __init__(
        self,
        cfg: LlavaRRGConfig,
        llm: nn.Module,
        tokenizer: Any,
        vision: nn.Module,
        specs: Mapping[str, Any] | None = None,
        add_adapters: bool = True,
    ) -> None:
        super().__init__()
        from ..adapters import LoraConfig, add_lora

        self.cfg = cfg
        self.specs = dict(specs or {})
        self.tokenizer = tokenizer
        self.vision = vision
        for p in self.vision.parameters():
            p.requires_grad_(False)
        vc = vision.config
        d, h = vc["hidden_size"], llm.config.hidden_size
        self.mm_projector = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, h))
        self.llm = llm
        self.image_size = int(vc["image_size"])
        patch = vc["patch_size"] if isinstance(vc["patch_size"], int) else vc["patch_size"][-1]
        self.num_image_tokens = (self.image_size // patch) ** 2 + (
            1 if cfg.select_feature == "cls_patch" else 0
        )
        if abs(cfg.select_layer) > vc["num_hidden_layers"] + 1:
            raise ConfigError(
                f"recipe.select_layer {cfg.select_layer}: the tower has {vc['num_hidden_layers']} "
                "layers"
            )
        self.lora_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
        )
        if add_adapters:
            for s in cfg.sections:
                add_lora(self.llm, self.lora_config, adapter_name=s)
        self.section = cfg.sections[0]
        self.task = "align"
        if self.tokenizer.eos_token_id is None:
            raise ConfigError(
                "model.tokenizer: llava_rrg needs an EOS token ('</s>' ends each answer)"
            )

    # -- building -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, recipe: Mapping[str, Any], model: Mapping[str, Any]) -> LlavaRRG:
        from ..vision import CLIPVision

        cfg = LlavaRRGConfig.from_dict(recipe)
        tok_spec = model.get("tokenizer", "bundled:ctrg-bpe")
        tokenizer = build_tokenizer(tok_spec)
        if model.get("llm") is None:
            raise ConfigError(
                "model.llm: expected a HF LLaMA/Vicuna folder or a dict of LlamaConfig fields"
            )
        llm = build_llm(model["llm"], vocab_size=tokenizer.vocab_size)
        vis = model.get("vision")
        if vis is not None:
            check_path_spec(
                vis, "model.vision", "a CLIP checkpoint path or a dict of CLIP vision config fields"
            )
        if isinstance(vis, Mapping):
            vision = CLIPVision(**check_kwargs(CLIPVision, vis, "model.vision"))
        elif vis is None:
            raise ConfigError(
                "model.vision: expected a HF CLIP folder (e.g. clip-vit-large-patch14-336), an "
                "OpenAI/open_clip checkpoint, or a dict of CLIP vision config fields"
            )
        elif (pathlib.Path(vis) / "config.json").is_file():
            vision = CLIPVision.from_pretrained(vis)
        else:
            from ..clip_openai import load_openai_clip_vision

            vision = load_openai_clip_vision(vis)
        self = cls(
            cfg,
            llm,
            tokenizer,
            vision,
            specs={"tokenizer": tok_spec, "llm": model["llm"], "vision": vis},
        )
        if model.get("mm_projector"):
            self.load_projector(model["mm_projector"])
        return self

    def load_projector(self, source: PathLike | Mapping[str, torch.Tensor]) -> None:
        """LLaVA's ``mm_projector.bin`` (stage-1 output: ``model.mm_projector.{0,2}.*``) or a
        safetensors file with those keys."""
        if isinstance(source, (str, os.PathLike)):
            p = pathlib.Path(source)
            if p.suffix == ".safetensors":
                sd = dict(_core.load_safetensors(os.fspath(p), None, "cpu"))
            else:
                sd = torch.load(p, map_location="cpu", weights_only=True)
        else:
            sd = dict(source)
        sd = {k.split("mm_projector.", 1)[1]: v for k, v in sd.items() if "mm_projector." in k}
        want = self.mm_projector.state_dict()
        if set(sd) != set(want):
            raise CheckpointError(
                f"mm_projector: expected keys {sorted('model.mm_projector.' + k for k in want)}, "
                f"got {sorted(sd)}"
            )
        for k, v in sd.items():
            if tuple(v.shape) != tuple(want[k].shape):
                raise CheckpointError(
                    f"mm_projector.{k}: shape {tuple(v.shape)}, expected {tuple(want[k].shape)} "
                    f"(mm_hidden_size {self.vision.config['hidden_size']} -> hidden "
                    f"{self.llm.config.hidden_size})"
                )
        self.mm_projector.load_state_dict({k: v.to(want[k].dtype) for k, v in sd.items()})

    # -- tokens ---------------------------------------------------------------------------

    def question(self, section: str) -> str:
        q = self.cfg.findings_question if section == "findings" else self.cfg.impression_question
        return f"{IMAGE_TOKEN}\n{q}" if self.cfg.image_first else f"{q}\n{IMAGE_TOKEN}"

    def encode(
        self, answer: str | None, section: str, task: str = "report"
    ) -> dict[str, list[Any]]:
        """Token ids, image mask and labels of one sample. ``task="align"``: LLaVA's plain
        template (``<image>`` + answer + ``"\\n"``); otherwise vicuna_v1; ``answer=None``: the
        generation prompt."""
        tok = self.tokenizer
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        n = self.num_image_tokens
        ph = tok.pad_token_id if tok.pad_token_id is not None else 0
        if task == "align":
            pre, post = "", ""
            ans = [] if answer is None else tok.encode(answer + "\n", add_special_tokens=False)
            ids = bos + [ph] * n
            img = [False] * len(bos) + [True] * n
            labels = [-100] * len(ids) + ans
            ids = ids + ans
            img = img + [False] * len(ans)
            return {"input_ids": ids, "image_mask": img, "labels": labels}
        text = vicuna_v1_prompt(self.question(section))
        pre, post = text.split(IMAGE_TOKEN, 1)
        a = tok.encode(pre, add_special_tokens=False)
        b = tok.encode(post, add_special_tokens=False)
        ids = bos + a + [ph] * n + b
        img = [False] * (len(bos) + len(a)) + [True] * n + [False] * len(b)
        labels = [-100] * len(ids)
        if answer is not None:
            ans = tok.encode(" " + answer, add_special_tokens=False) + [tok.eos_token_id]
            ids, labels, img = ids + ans, labels + ans, img + [False] * len(ans)
        if len(ids) > self.cfg.max_length:
            raise ConfigError(
                f"recipe.max_length: a {section} sample has {len(ids)} tokens > "
                f"{self.cfg.max_length}"
            )
        return {"input_ids": ids, "image_mask": img, "labels": labels}

    def pad(
        self, rows: Sequence[Mapping[str, list[Any]]], side: str = "right"
    ) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        n = max(len(r["input_ids"]) for r in rows)
        out = {
            "input_ids": torch.full((len(rows), n), pad, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), n), dtype=torch.long),
            "labels": torch.full((len(rows), n), -100, dtype=torch.long),
            "image_mask": torch.zeros((len(rows), n), dtype=torch.bool),
        }
        for i, r in enumerate(rows):
            m = len(r["input_ids"])
            sl = slice(0, m) if side == "right" else slice(n - m, n)
            out["input_ids"][i, sl] = torch.tensor(r["input_ids"])
            out["attention_mask"][i, sl] = 1
            out["labels"][i, sl] = torch.tensor(r["labels"])
            out["image_mask"][i, sl] = torch.tensor(r["image_mask"])
        return out

    # -- forward --------------------------------------------------------------------------

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``clip_encoder.py`` ``feature_select``: ``hidden_states[select_layer]`` without CLS
        (``"patch"``), under no_grad as LLaVA's frozen tower: ``[B, N, mm_hidden]``."""
        with torch.no_grad():
            # runs only the encoder layers up to select_layer (LLaVA's -2 skips the last one)
            f = self.vision.hidden_state(
                pixel_values.to(self.vision.vision_model.pre_layrnorm.weight.dtype),
                self.cfg.select_layer,
            )
        return f[:, 1:] if self.cfg.select_feature == "patch" else f

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """``mm_projector`` (Linear, GELU, Linear) in Rust."""
        ls = [self.mm_projector[0], self.mm_projector[2]]
        return _core.mlp_project(feats, [m.weight for m in ls], [m.bias for m in ls])

    def embed(
        self, input_ids: torch.Tensor, image_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        from ..llm import splice_image_tokens

        text = self.llm.get_input_embeddings()(input_ids)
        img = self.project(self.image_features(pixel_values))
        return splice_image_tokens(text, img.to(text.dtype), image_mask.bool())

    def forward(
        self,
        input_ids: torch.Tensor,
        image_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> LlavaOutput:
        out = self.llm(
            inputs_embeds=self.embed(input_ids, image_mask, pixel_values),
            attention_mask=attention_mask,
            labels=labels,
        )
        return LlavaOutput(loss=out.loss, logits=out.logits)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        section: str = "findings",
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Reports for a batch of studies with the ``section``'s adapter (beam 2, 256 tokens)."""
        from ..adapters import set_adapter

        if section not in self.cfg.sections:
            raise ConfigError(
                f"section: expected one of {list(self.cfg.sections)}, got {section!r}"
            )
        set_adapter(self.llm, section)
        rows = [self.encode(None, section, "report") for _ in range(pixel_values.shape[0])]
        b = self.pad(rows, side="left")
        emb = self.embed(b["input_ids"], b["image_mask"], pixel_values)
        tok = self.tokenizer
        new = self.llm.generate(
            inputs_embeds=emb,
            attention_mask=b["attention_mask"],
            num_beams=num_beams or self.cfg.num_beams,
            max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **kwargs,
        )
        return [t.strip() for t in tok.batch_decode(new)]

    # -- stages ---------------------------------------------------------------------------

    def set_stage(self, task: str, section: str | None = None) -> None:
        """``align``: the projector only (LLaVA pretrain, ``tune_mm_mlp_adapter``); ``report``:
        the section's LoRA adapter (+ the projector with ``stage2_train_projector``)."""
        from ..adapters import set_adapter

        self.task = task
        for p in self.parameters():
            p.requires_grad_(False)
        if task == "align":
            for p in self.mm_projector.parameters():
                p.requires_grad_(True)
            return
        assert section is not None
        self.section = section
        set_adapter(self.llm, section)
        for n, p in self.llm.named_parameters():
            if f".lora_A.{section}." in n or f".lora_B.{section}." in n:
                p.requires_grad_(True)
        if self.cfg.stage2_train_projector:
            for p in self.mm_projector.parameters():
                p.requires_grad_(True)

    def stages(self, args: Any) -> list[Any]:
        from ..train import Stage

        c = self.cfg

        def stage_args(lr: float, epochs: float) -> Any:  # LLaVA's scripts: cosine, no decay
            return args.replace(
                learning_rate=lr,
                num_train_epochs=epochs,
                warmup_ratio=c.warmup_ratio,
                lr_scheduler_type="cosine",
                weight_decay=0.0,
            )

        s1 = stage_args(c.stage1_lr, c.stage1_epochs)
        out = [Stage("stage1_projector", s1, lambda m: m.set_stage("align"))]
        for s in c.sections:
            a = stage_args(c.stage2_lr, c.stage2_epochs)
            out.append(
                Stage(f"stage2_{s}", a, (lambda sec: lambda m: m.set_stage("report", sec))(s))
            )
        return out

    DATA_KEYS = {"format", "root", "synth", "train_split", "eval_split", "test_split"}

    def _data(self, data: Mapping[str, Any]) -> tuple[str, Any, dict[str, Any]]:
        """``(format, root, reader options)`` of a ``data`` section; the synthetic set generated
        when ``synth`` is given."""
        fmt, root = data.get("format"), data.get("root")
        if fmt not in ("mimic-cxr", "manifest"):
            raise ConfigError(
                f"data.format: llava_rrg reads 'mimic-cxr' or 'manifest', got {fmt!r}"
            )
        if root is None:
            raise ConfigError("data.root: expected the dataset folder")
        opts = check_data_keys(data, self.DATA_KEYS, fmt, "llava_rrg")
        if fmt == "mimic-cxr":
            opts.setdefault("section", None)
        ensure_synth_data(data)  # checks the synth keys; generates once, re-uses a matching set
        return fmt, root, opts

    def datasets(self, data: Mapping[str, Any]) -> tuple[Any, Any]:
        """``(train, eval)`` from ``data``: ``format`` / ``root`` (a voxlm.datasets reader),
        ``synth`` (``voxlm.synth.ensure`` keys), ``train_split`` ("train"), ``eval_split``
        ("validation"; null for none); every other key is an option of the reader (checked
        against its signature)."""
        from ..datasets import read_records

        fmt, root, opts = self._data(data)
        train = read_records(fmt, root, split=data.get("train_split", "train"), **opts)
        split = data.get("eval_split", "validation")
        ev = read_records(fmt, root, split=split, **opts) if split else []
        return (
            StudyDataset(train, self.image_size, self.cfg, require=self.cfg.sections),
            StudyDataset(ev, self.image_size, self.cfg, require=()) if ev else None,
        )

    def dataset(self, data: Mapping[str, Any], split: str) -> StudyDataset:
        """One split (e.g. ``data.test_split``) of ``data`` for evaluation / generation."""
        from ..datasets import read_records

        fmt, root, opts = self._data(data)
        recs = read_records(fmt, root, split=split, **opts)
        if not recs:
            raise DataError(f"data: split {split!r} of {root} has no records")
        return StudyDataset(recs, self.image_size, self.cfg, require=())

    def collator(self) -> LlavaCollator:
        return LlavaCollator(self)

    # -- evaluation -----------------------------------------------------------------------

    def evaluate(
        self,
        dataset: Any,
        output_dir: PathLike | None = None,
        scorers: Mapping[str, Callable[[list[str], list[str]], Any]] | None = None,
        batch_size: int = 4,
        **generate_kwargs: Any,
    ) -> dict[str, Any]:
        """Generate each section with its adapter; BLEU-4 and ROUGE-L per section (pycocoevalcap
        definitions) + ``scorers`` (e.g. BERTScore, F1-RadGraph: ``fn(refs, hyps)``), over the
        studies that have the section's reference."""
        from ..metrics import report_scores

        if not isinstance(dataset, StudyDataset):
            dataset = StudyDataset(list(dataset), self.image_size, self.cfg, require=())
        scorers = dict(scorers) if scorers is not None else import_scorers(self.cfg.scorers)
        was = self.training
        self.eval()
        result: dict[str, Any] = {}
        rows: dict[str, dict[str, Any]] = {}
        try:
            for s in self.cfg.sections:
                idx = [
                    i
                    for i, r in enumerate(dataset.records)
                    if ((r.get("sections") or {}).get(s) or "").strip()
                ]
                refs, hyps = [], []
                for k in range(0, len(idx), batch_size):
                    items = [dataset[i] for i in idx[k : k + batch_size]]
                    gen = self.generate(
                        torch.stack([it["pixel_values"] for it in items]), s, **generate_kwargs
                    )
                    for it, g in zip(items, gen):
                        refs.append(it[s])
                        hyps.append(g)
                        row = rows.setdefault(it["id"], {"id": it["id"]})
                        row[f"{s}_reference"], row[f"{s}_generated"] = it[s], g
                sc: dict[str, Any] = {"n": len(refs)}
                if refs:
                    m = report_scores(refs, hyps, meteor=False)
                    sc["BLEU-4"], sc["ROUGE-L"] = float(m["BLEU-4"]), float(m["ROUGE-L"])
                    for name, fn in scorers.items():
                        v = fn(refs, hyps)
                        sc[name] = (
                            {k: float(x) for k, x in v.items()}
                            if isinstance(v, Mapping)
                            else float(v)
                        )
                result[s] = sc
        finally:
            self.train(was)
        computed = ["BLEU-4", "ROUGE-L", *scorers]
        # which of the paper's metrics this evaluation has, and which it lacks (no scorer given)
        result["metrics"] = {
            "computed": computed,
            "not_computed": [m for m in RRG24_METRICS if m not in computed],
        }
        if output_dir is not None:
            out = pathlib.Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "eval.json").write_text(json.dumps(result, indent=2))
            cols = list(dict.fromkeys(k for r in rows.values() for k in r))
            with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                w.writerows(rows.values())
        return result

    # -- persistence ----------------------------------------------------------------------

    def save_pretrained(self, path: PathLike) -> None:
        """``config.json``; ``mm_projector.safetensors`` (LLaVA's key names); one PEFT adapter
        folder per section under ``adapters/``; the base LLM (``llm/``, transformers layout) and
        the CLIP tower (``vision/``: HF ``config.json`` + safetensors) unless the config named
        pretrained folders; the tokenizer (bundled name or a copy)."""
        from ..adapters import save_adapter

        out = pathlib.Path(path)
        out.mkdir(parents=True, exist_ok=True)
        specs = dict(self.specs)
        tok = specs.get("tokenizer", "bundled:ctrg-bpe")
        if not (isinstance(tok, str) and tok.startswith("bundled:")):
            import shutil

            src = pathlib.Path(tok)
            shutil.copy(src / "tokenizer.json" if src.is_dir() else src, out / "tokenizer.json")
            for extra in ("tokenizer_config.json", "special_tokens_map.json"):
                if src.is_dir() and (src / extra).is_file():
                    shutil.copy(src / extra, out / extra)
            tok = "tokenizer.json"
        llm_spec = specs.get("llm")
        if not (
            isinstance(llm_spec, (str, os.PathLike))
            and (pathlib.Path(llm_spec) / "config.json").is_file()
        ):
            base = {k: v.detach() for k, v in self.llm.state_dict().items()}
            self._save_base_llm(out / "llm", base)
            llm_spec = "llm"
        vis_spec = specs.get("vision")
        if not (
            isinstance(vis_spec, (str, os.PathLike))
            and (pathlib.Path(vis_spec) / "config.json").is_file()
        ):
            vd = out / "vision"
            vd.mkdir(exist_ok=True)
            vc = dict(self.vision.config)
            (vd / "config.json").write_text(
                json.dumps({**vc, "hidden_act": "quick_gelu", "model_type": "clip_vision_model"})
            )
            sd = {
                k: v.detach().contiguous()
                for k, v in self.vision.state_dict().items()
                if k.startswith("vision_model.")
            }
            _core.save_safetensors(sd, os.fspath(vd / "model.safetensors"))
            vis_spec = "vision"
        proj = {
            f"model.mm_projector.{k}": v.detach().contiguous()
            for k, v in self.mm_projector.state_dict().items()
        }
        _core.save_safetensors(proj, os.fspath(out / "mm_projector.safetensors"))
        for s in self.cfg.sections:
            save_adapter(self.llm, out / "adapters", s)
        meta = {
            "recipe": self.name,
            "config": asdict(self.cfg),
            "tokenizer": tok,
            "llm": os.fspath(llm_spec),
            "vision": os.fspath(vis_spec),
        }
        (out / "config.json").write_text(json.dumps(meta, indent=2, default=list))

    def _save_base_llm(self, path: pathlib.Path, sd: Mapping[str, torch.Tensor]) -> None:
        """The base weights (LoRA layers unwrapped) in transformers' layout."""
        path.mkdir(parents=True, exist_ok=True)
        base = {
            k.replace(".base_layer.", "."): v.contiguous()
            for k, v in sd.items()
            if ".lora_" not in k and not k.endswith("inv_freq")
        }
        if self.llm.config.tie_word_embeddings:
            base.pop("lm_head.weight", None)
        cfg = self.llm.config.to_dict()
        cfg["torch_dtype"] = str(next(iter(base.values())).dtype).replace("torch.", "")
        (path / "config.json").write_text(json.dumps(cfg, indent=2))
        _core.save_safetensors(base, os.fspath(path / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: PathLike) -> LlavaRRG:
        from ..adapters import load_adapter
        from ..llm import LlamaForCausalLM
        from ..vision import CLIPVision

        p = pathlib.Path(path)
        meta = check_saved_recipe(p, "llava_rrg")
        cfg = LlavaRRGConfig.from_dict(meta["config"])

        def where(spec: str) -> pathlib.Path:
            q = pathlib.Path(spec)
            return q if q.is_absolute() else p / q

        tok = meta["tokenizer"]
        tokenizer = build_tokenizer(tok if tok.startswith("bundled:") else os.fspath(where(tok)))
        llm = LlamaForCausalLM.from_pretrained(where(meta["llm"]))
        vision = CLIPVision.from_pretrained(where(meta["vision"]))
        self = cls(
            cfg,
            llm,
            tokenizer,
            vision,
            specs={"tokenizer": tok, "llm": meta["llm"], "vision": meta["vision"]},
            add_adapters=False,
        )
        for s in cfg.sections:
            load_adapter(self.llm, p / "adapters" / s, s)
        self.load_projector(p / "mm_projector.safetensors")
        for q in self.vision.parameters():
            q.requires_grad_(False)
        return self


__all__ = [
    "LlavaRRG",
    "LlavaRRGConfig",
    "vicuna_v1_prompt",
    "expand2square",
    "clip_preprocess",
    "study_pixels",
    "stitch_study",
    "StudyDataset",
    "LlavaCollator",
    "LLAVA_VICUNA_SYSTEM",
]
