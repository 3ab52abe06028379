"""CLIP vision towers from checkpoints in OpenAI's / open_clip's key layout.

OpenAI's ``clip`` package (``clip/model.py``, ``VisionTransformer``) and open_clip
(``open_clip/transformer.py``, ``VisionTransformer``) name the vision tower's tensors

==========================================  ========================================================
OpenAI / open_clip (``visual.`` prefix in      voxlm / transformers
the full model)                                ``CLIPVisionModelWithProjection``
==========================================  ========================================================
``conv1.weight``                               ``vision_model.embeddings.patch_embedding.weight``
``class_embedding``                            ``vision_model.embeddings.class_embedding``
``positional_embedding``                       ``vision_model.embeddings.position_embedding.weight``
``ln_pre.{weight,bias}``                       ``vision_model.pre_layrnorm.{weight,bias}``
``transformer.resblocks.N.ln_1``               ``vision_model.encoder.layers.N.layer_norm1``
``transformer.resblocks.N.attn.in_proj_*``     ``...layers.N.self_attn.{q,k,v}_proj``
                                               (rows split in thirds)
``transformer.resblocks.N.attn.out_proj``      ``...layers.N.self_attn.out_proj``
``transformer.resblocks.N.ln_2``               ``...layers.N.layer_norm2``
``transformer.resblocks.N.mlp.c_fc``           ``...layers.N.mlp.fc1``
``transformer.resblocks.N.mlp.c_proj``         ``...layers.N.mlp.fc2``
``ln_post.{weight,bias}``                      ``vision_model.post_layernorm.{weight,bias}``
``proj`` ``[width, embed]`` (``x @ proj``)     ``visual_projection.weight`` ``[embed, width]``
                                               (transposed)
==========================================  ========================================================

The number of heads is not stored in either layout: OpenAI's ViTs use ``width // 64``
(``clip/model.py``: ``vision_heads = vision_width // 64``), the default here. OpenAI's towers
use quick-GELU (open_clip: ``quick_gelu=True`` / the ``-quickgelu`` model names); voxlm's CLIP
forward is quick-GELU only.

:func:`load_openai_clip_vision` reads a ``state_dict`` (or a ``.pt``/``.pth``/``.bin`` file, an
OpenAI TorchScript archive, or ``.safetensors``) in either OpenAI/open_clip or transformers layout
and returns a :class:`CLIPVisionWithProjection` (a :class:`voxlm.vision.CLIPVision` plus the
output projection). A checkpoint in neither layout raises a ``CheckpointError`` naming the keys
each layout needs that are missing.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ._bind import check_int
from .exceptions import CheckpointError, ConfigError, VoxlmError, VoxlmTypeError
from .vision import CLIPVision

PathLike = str | os.PathLike[str]

#: keys (without the ``visual.`` prefix) every OpenAI/open_clip vision tower has.
OPENAI_REQUIRED = (
    "conv1.weight",
    "class_embedding",
    "positional_embedding",
    "ln_pre.weight",
    "ln_pre.bias",
    "ln_post.weight",
    "ln_post.bias",
)
#: keys every transformers CLIP vision tower has.
HF_REQUIRED = (
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.position_embedding.weight",
    "vision_model.pre_layrnorm.weight",
    "vision_model.post_layernorm.weight",
)

_BLOCK = {
    "ln_1": "layer_norm1",
    "attn.out_proj": "self_attn.out_proj",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


class CLIPVisionWithProjection(CLIPVision):
    """:class:`voxlm.vision.CLIPVision` plus ``visual_projection`` (no bias), the names of
    transformers' ``CLIPVisionModelWithProjection``. ``forward`` is CLIPVision's (Rust);
    :meth:`image_embeds` is CLIP's image feature (``post_layernorm(CLS) @ proj``) and
    :meth:`project_tokens` applies ``post_layernorm`` and the projection to every token (PICG)."""

    def __init__(self, projection_dim: int | None = None, **config: Any) -> None:
        import inspect

        known = set(inspect.signature(CLIPVision.__init__).parameters) - {"self"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(
                f"CLIPVisionWithProjection: unknown config field(s) {unknown}; known: "
                f"projection_dim, {', '.join(sorted(known))}"
            )
        if projection_dim is not None:
            check_int(projection_dim, "projection_dim")
        super().__init__(**config)
        d = self.config["hidden_size"]
        self.config["projection_dim"] = projection_dim
        self.visual_projection = (
            nn.Linear(d, projection_dim, bias=False) if projection_dim else None
        )

    def _make_core(self) -> Any:
        from . import _core

        params = {k: v for k, v in self.named_parameters() if k.startswith("vision_model.")}
        return _core.ClipVisionCore(
            params,
            self.config["num_hidden_layers"],
            self.config["num_attention_heads"],
            float(self.config["layer_norm_eps"]),
        )

    def project_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """``ln_post`` on every token then ``@ proj``: ``[B, N, width] -> [B, N, embed]``."""
        ln = self.vision_model.post_layernorm
        x = nn.functional.layer_norm(hidden, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        return x if self.visual_projection is None else self.visual_projection(x)

    def image_embeds(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's image features ``[B, embed]`` (open_clip ``encode_image``, not normalised)."""
        last, _, _ = self.forward(x)
        return self.project_tokens(last[:, :1])[:, 0]


def _read(path: PathLike) -> dict[str, torch.Tensor]:
    p = pathlib.Path(path)
    if p.is_dir():
        cands = sorted(
            [*p.glob("*.safetensors"), *p.glob("*.bin"), *p.glob("*.pt"), *p.glob("*.pth")]
        )
        if not cands:
            raise CheckpointError(f"{p}: no .safetensors/.bin/.pt/.pth checkpoint in the folder")
        p = cands[0]
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if p.suffix == ".safetensors":
        from . import _core

        return dict(_core.load_safetensors(os.fspath(p), None, "cpu"))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # OpenAI's released ViT-*.pt files are TorchScript archives
        try:
            obj = torch.jit.load(os.fspath(p), map_location="cpu").state_dict()
        except Exception as e:
            raise CheckpointError(
                f"{p}: neither a torch state_dict nor a TorchScript archive ({type(e).__name__})"
            ) from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p}: expected a state_dict, got {type(obj).__name__}")
    return {
        str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)
    }


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """``"openai"`` (OpenAI/open_clip names, with or without ``visual.``) or ``"hf"``
    (transformers); a ``CheckpointError`` names the missing keys of both otherwise."""
    if not isinstance(sd, Mapping):
        raise VoxlmTypeError(f"sd: expected a state dict (name -> tensor), got {type(sd).__name__}")
    visual = {
        k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")
    } or dict(sd)
    if all(k in visual for k in OPENAI_REQUIRED):
        return "openai"
    hf = {k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in sd.items()}
    if all(k in hf for k in HF_REQUIRED):
        return "hf"
    miss_o = [k for k in OPENAI_REQUIRED if k not in visual]
    miss_h = [k for k in HF_REQUIRED if k not in hf]
    some = ", ".join(sorted(sd)[:4]) or "no tensors"
    raise CheckpointError(
        "CLIP checkpoint in neither the OpenAI/open_clip layout (missing "
        f"{', '.join('visual.' + k for k in miss_o)}) nor the transformers layout (missing "
        f"{', '.join(miss_h)}); "
        f"it has {len(sd)} tensors, e.g. {some}"
    )


@contextlib.contextmanager
def _malformed(what: str) -> Iterator[None]:
    """A state dict whose tensors have the right names but not the ranks/shapes the layout
    implies (indexing ``shape[1]`` of a 1-d tensor, ...): a CheckpointError naming it."""
    try:
        yield
    except (IndexError, AttributeError, TypeError, ValueError, ZeroDivisionError) as e:
        if isinstance(e, VoxlmError):
            raise
        raise CheckpointError(
            f"{what}: tensors of unexpected rank or shape ({type(e).__name__}: {e})"
        ) from e


def openai_to_hf(
    sd: Mapping[str, torch.Tensor], num_heads: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rename an OpenAI/open_clip vision state dict (``visual.*`` or bare) to transformers'
    names. Returns ``(state_dict, config)`` with the config inferred from the shapes."""
    with _malformed("OpenAI/open_clip CLIP checkpoint"):
        return _openai_to_hf(sd, num_heads)


def _openai_to_hf(
    sd: Mapping[str, torch.Tensor], num_heads: int | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(sd, Mapping):
        raise VoxlmTypeError(f"sd: expected a state dict (name -> tensor), got {type(sd).__name__}")
    v = {k.removeprefix("visual."): t for k, t in sd.items() if k.startswith("visual.")} or dict(sd)
    missing = [k for k in OPENAI_REQUIRED if k not in v]
    if missing:
        raise CheckpointError(
            f"OpenAI/open_clip CLIP checkpoint: missing {', '.join('visual.' + k for k in missing)}"
        )
    conv = v["conv1.weight"]
    width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    layers = sorted(
        {int(m.group(1)) for k in v if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))}
    )
    if layers != list(range(len(layers))) or not layers:
        raise CheckpointError(
            f"OpenAI/open_clip CLIP checkpoint: transformer.resblocks indices {layers} are not "
            "0..N-1"
        )
    pos = v["positional_embedding"]
    grid = math.isqrt(pos.shape[0] - 1)
    if grid * grid + 1 != pos.shape[0]:
        raise CheckpointError(
            f"visual.positional_embedding: {tuple(pos.shape)} is not 1 + a square grid of positions"
        )
    heads = num_heads or max(1, width // 64)
    out: dict[str, torch.Tensor] = {
        "vision_model.embeddings.patch_embedding.weight": conv,
        "vision_model.embeddings.class_embedding": v["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": pos,
        "vision_model.pre_layrnorm.weight": v["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": v["ln_pre.bias"],
        "vision_model.post_layernorm.weight": v["ln_post.weight"],
        "vision_model.post_layernorm.bias": v["ln_post.bias"],
    }
    inter = None
    for i in layers:
        src, dst = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        need = [f"{src}attn.in_proj_weight", f"{src}attn.in_proj_bias"] + [
            f"{src}{a}.{w}" for a in _BLOCK for w in ("weight", "bias")
        ]
        absent = [k for k in need if k not in v]
        if absent:
            raise CheckpointError(
                "OpenAI/open_clip CLIP checkpoint: missing "
                f"{', '.join('visual.' + k for k in absent)}"
            )
        qkv_w, qkv_b = v[f"{src}attn.in_proj_weight"], v[f"{src}attn.in_proj_bias"]
        if qkv_w.shape != (3 * width, width):
            raise CheckpointError(
                f"visual.{src}attn.in_proj_weight: expected [{3 * width}, {width}], got "
                f"{tuple(qkv_w.shape)}"
            )
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{dst}self_attn.{name}.weight"] = qkv_w[j * width : (j + 1) * width]
            out[f"{dst}self_attn.{name}.bias"] = qkv_b[j * width : (j + 1) * width]
        for a, b in _BLOCK.items():
            for w in ("weight", "bias"):
                out[f"{dst}{b}.{w}"] = v[f"{src}{a}.{w}"]
        inter = v[f"{src}mlp.c_fc.weight"].shape[0]
    proj = v.get("proj")
    if proj is not None:
        out["visual_projection.weight"] = proj.t()
    config = dict(
        hidden_size=width,
        intermediate_size=inter,
        num_hidden_layers=len(layers),
        num_attention_heads=heads,
        image_size=grid * patch,
        patch_size=patch,
        num_channels=channels,
        layer_norm_eps=1e-5,
        projection_dim=None if proj is None else proj.shape[1],
    )
    return out, config


def hf_to_openai(
    model: CLIPVisionWithProjection, prefix: str = "visual."
) -> dict[str, torch.Tensor]:
    """The inverse mapping (a ``state_dict`` open_clip's ``VisionTransformer`` loads)."""
    if not isinstance(model, CLIPVision):
        raise VoxlmTypeError(
            f"model: expected a CLIPVision / CLIPVisionWithProjection, got {type(model).__name__}"
        )
    sd = model.state_dict()
    out = {
        "conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "class_embedding": sd["vision_model.embeddings.class_embedding"],
        "positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "ln_post.bias": sd["vision_model.post_layernorm.bias"],
    }
    for i in range(model.config["num_hidden_layers"]):
        s, d = f"vision_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for w in ("weight", "bias"):
            out[f"{d}attn.in_proj_{w}"] = torch.cat(
                [sd[f"{s}self_attn.{n}.{w}"] for n in ("q_proj", "k_proj", "v_proj")]
            )
            for a, b in _BLOCK.items():
                out[f"{d}{a}.{w}"] = sd[f"{s}{b}.{w}"]
    if "visual_projection.weight" in sd:
        out["proj"] = sd["visual_projection.weight"].t().contiguous()
    return {f"{prefix}{k}": v for k, v in out.items()}


def _hf_config(
    sd: Mapping[str, torch.Tensor], num_heads: int | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    hf = {
        k if k.startswith(("vision_model.", "visual_projection.")) else f"vision_model.{k}": t
        for k, t in sd.items()
        if not k.startswith("text_model.") and not k.endswith("position_ids")
    }
    hf = {k: t for k, t in hf.items() if k.startswith(("vision_model.", "visual_projection."))}
    conv = hf["vision_model.embeddings.patch_embedding.weight"]
    pos = hf["vision_model.embeddings.position_embedding.weight"]
    layers = {
        int(m.group(1)) for k in hf if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))
    }
    fc1 = hf.get("vision_model.encoder.layers.0.mlp.fc1.weight")
    width = conv.shape[0]
    proj = hf.get("visual_projection.weight")
    config = dict(
        hidden_size=width,
        intermediate_size=None if fc1 is None else fc1.shape[0],
        num_hidden_layers=len(layers),
        num_attention_heads=num_heads or max(1, width // 64),
        image_size=math.isqrt(pos.shape[0] - 1) * conv.shape[-1],
        patch_size=conv.shape[-1],
        num_channels=conv.shape[1],
        layer_norm_eps=1e-5,
        projection_dim=None if proj is None else proj.shape[0],
    )
    return hf, config


def load_openai_clip_vision(
    source: PathLike | Mapping[str, torch.Tensor],
    num_heads: int | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> CLIPVisionWithProjection:
    """A CLIP vision tower (+ projection) from a checkpoint in the OpenAI/open_clip layout (the
    full model's ``visual.*`` keys, or a bare vision ``state_dict``) or in transformers' layout
    (``vision_model.*`` [+ ``visual_projection.weight``]; use ``CLIPVision.from_pretrained`` for a
    HF folder with ``config.json``). ``dtype`` converts (OpenAI ships float16); None keeps it."""
    if not isinstance(source, (str, os.PathLike, Mapping)):
        raise VoxlmTypeError(
            "source: expected a checkpoint path or a state dict (name -> tensor), got "
            f"{type(source).__name__}"
        )
    sd = _read(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    layout = detect_layout(sd)
    if layout == "openai":
        hf, config = openai_to_hf(sd, num_heads)
    else:
        with _malformed("CLIP checkpoint (transformers layout)"):
            hf, config = _hf_config(sd, num_heads)
    if config["intermediate_size"] is None:
        raise CheckpointError("CLIP checkpoint: no encoder layers")
    model = CLIPVisionWithProjection(**config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(hf)), sorted(set(hf) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"CLIP checkpoint does not fit a {config['num_hidden_layers']}-layer tower: "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    for k, t in hf.items():
        want = model.state_dict()[k].shape
        if tuple(t.shape) != tuple(want):
            raise CheckpointError(
                f"CLIP checkpoint: {k} has shape {tuple(t.shape)}, expected {tuple(want)}"
            )
    if dtype is not None:
        model.to(dtype)
    else:
        model.to(next(iter(hf.values())).dtype)
    model.load_state_dict(hf, strict=True)
    return model


__all__ = [
    "CLIPVisionWithProjection",
    "load_openai_clip_vision",
    "openai_to_hf",
    "hf_to_openai",
    "detect_layout",
]
