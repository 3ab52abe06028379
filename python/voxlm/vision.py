"""Seeing volumes: 2D-to-3D patch inflation, a 3D ViT with MONAI's key names, and the methods'
token reducers and projectors. Forwards run in Rust (libtorch, autograd) on the modules' own
``nn.Parameter``s.

* :func:`inflate_patch_embedding`, :func:`interpolate_pos_embedding` (PICG's 3D CLIP).
* :class:`ViT3D` (M3D / Dia-LLaMA vision encoders; ``from_monai`` loads MONAI ``ViT`` weights).
* :class:`PerceiverResampler` (Dia-LLaMA), :class:`SpatialPoolingProjector` (M3D),
  :class:`MLPProjector` (LLaVA ``mlp2x_gelu``), :class:`DiseaseAwareAttention` (Dia-LLaMA).
* :func:`splice_image_tokens` (shared with :mod:`voxlm.llm`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from . import _core
from ._bind import RustBound, check_budget, check_int, check_tensor
from .exceptions import CheckpointError, ConfigError, ShapeError, VoxlmTypeError
from .llm import splice_image_tokens

Triple = tuple[int, int, int]


def load_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], where: object) -> None:
    """``model.load_state_dict(sd, strict=True)`` with a CheckpointError naming ``where``, the
    missing / unexpected keys and the first shape mismatch (torch's own error is a RuntimeError
    listing every key)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in sd and isinstance(sd[k], torch.Tensor) and sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{where}: the weights do not fit the config (missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'...' if len(unexpected) > 3 else ''}, shape mismatches {shapes[:2]})"
        )
    model.load_state_dict(sd, strict=True)


def _divides(dim: int, heads: int, dim_name: str, heads_name: str) -> None:
    if dim % heads:
        raise ConfigError(f"{dim_name} {dim} must be divisible by {heads_name} {heads}")


def _triple(v: int | Sequence[int], name: str) -> Triple:
    try:
        t = (v, v, v) if isinstance(v, int) else tuple(v)
    except TypeError:
        raise ConfigError(f"{name}: expected 3 positive sizes, got {v!r}") from None
    if len(t) != 3 or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in t):
        raise ConfigError(f"{name}: expected 3 positive sizes, got {v!r}")
    return (int(t[0]), int(t[1]), int(t[2]))


def inflate_patch_embedding(weight2d: torch.Tensor, depth: int, mode: str = "mean") -> torch.Tensor:
    """Inflate a 2D patch-embedding kernel ``[D, C, kh, kw]`` to 3D ``[D, C, depth, kh, kw]``.

    ``mode``: ``"mean"`` (I3D: repeat and divide by ``depth``), ``"replicate"`` (repeat without
    dividing, as PICG's code does: a depth-constant volume gives ``depth`` times the 2D response)
    or ``"center"`` (the 2D kernel on the central slice only). Differentiable."""
    check_tensor(weight2d, "weight2d", floating=True)
    check_int(depth, "depth")
    check_budget("inflate_patch_embedding", weight2d.numel() * depth)
    if weight2d.numel() == 0:
        raise ShapeError(
            f"weight2d: expected a non-empty [D, C, kh, kw] kernel, got shape "
            f"{tuple(weight2d.shape)}"
        )
    return _core.inflate_patch_embedding(weight2d, int(depth), mode)


def interpolate_pos_embedding(
    pos: torch.Tensor, grid2d: tuple[int, int], grid3d: Triple, has_cls: bool = True
) -> torch.Tensor:
    """2D grid position embeddings ``[1, (1+) gh*gw, D]`` onto a 3D grid ``[1, (1+) gd*h*w, D]``
    (trilinear, align_corners=False; the class-token embedding is kept as is)."""
    check_tensor(pos, "pos", floating=True)
    if pos.dim() != 3:
        raise ShapeError(
            f"pos: expected a 3-d tensor [1, positions, dim], got shape {tuple(pos.shape)}"
        )
    for name, g, n in (("grid2d", grid2d, 2), ("grid3d", grid3d, 3)):
        if isinstance(g, (str, bytes)) or not isinstance(g, Sequence) or len(g) != n:
            raise ConfigError(f"{name}: expected {n} positive sizes, got {g!r}")
        for x in g:
            check_int(x, name)
    g3 = tuple(int(x) for x in grid3d)
    check_budget("interpolate_pos_embedding", g3[0] * g3[1] * g3[2] * int(pos.shape[-1]))
    return _core.interpolate_pos_embedding(pos, tuple(int(x) for x in grid2d), g3, bool(has_cls))


def reuse_pos_embedding(pos: torch.Tensor, n_tokens: int, has_cls: bool = True) -> torch.Tensor:
    """PICG's reuse of CLIP's position embeddings: the first ``n_tokens`` patch positions
    (e.g. 252 tokens of a 6x6x7 grid padded to 256 so CLIP's 257 = 1 + 16x16 are reused)."""
    check_tensor(pos, "pos", floating=True)
    check_int(n_tokens, "n_tokens", 1)
    start = 1 if has_cls else 0
    if pos.dim() != 3:
        raise ShapeError(
            f"pos: expected a 3-d tensor [1, positions, dim], got shape {tuple(pos.shape)}"
        )
    if pos.shape[1] - start < n_tokens:
        raise ConfigError(f"pos: {tuple(pos.shape)} has fewer than {n_tokens} patch positions")
    parts = [pos[:, :1]] if has_cls else []
    return torch.cat([*parts, pos[:, start : start + n_tokens]], 1)


# ---------------------------------------------------------------------------------------------
# ViT3D (MONAI names)


class _Attn(nn.Module):
    def __init__(self, d: int, qkv_bias: bool) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=qkv_bias)
        self.out_proj = nn.Linear(d, d)


class _Mlp(nn.Module):
    def __init__(self, d: int, m: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d, m)
        self.linear2 = nn.Linear(m, d)


class _Block(nn.Module):
    def __init__(self, d: int, m: int, qkv_bias: bool) -> None:
        super().__init__()
        self.mlp = _Mlp(d, m)
        self.norm1 = nn.LayerNorm(d)
        self.attn = _Attn(d, qkv_bias)
        self.norm2 = nn.LayerNorm(d)


class _PatchEmbedding(nn.Module):
    def __init__(self, c: int, d: int, patch: Triple, n: int, perceptron: bool) -> None:
        super().__init__()
        if perceptron:
            self.patch_embeddings: nn.Module = nn.Sequential(
                nn.Identity(), nn.Linear(patch[0] * patch[1] * patch[2] * c, d)
            )
        else:
            self.patch_embeddings = nn.Conv3d(c, d, kernel_size=patch, stride=patch)
        self.position_embeddings = nn.Parameter(torch.zeros(1, n, d))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02, a=-2.0, b=2.0)


class ViT3D(RustBound):
    """A ViT over volumes ``[B, C, D, H, W]`` with MONAI ``ViT``'s parameter names and numerics
    (``proj_type`` ``"conv"`` or ``"perceptron"``; optional class token), so MONAI checkpoints
    (M3D-CLIP's encoder, RadFM/Dia-LLaMA's) load with ``load_state_dict`` or :meth:`from_monai`.

    ``forward(x)`` returns ``(tokens [B, N(+1), hidden], [each block's output])`` as MONAI, with
    ``N = prod(img_size / patch_size)`` (M3D: 32x256x256 / 4x16x16 = 2048 tokens).
    LoRA from :func:`voxlm.adapters.add_lora` (e.g. on ``qkv``) runs inside the Rust forward.
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: int | Sequence[int] = (32, 256, 256),
        patch_size: int | Sequence[int] = (4, 16, 16),
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        proj_type: str = "conv",
        classification: bool = False,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        for k, v in dict(
            in_channels=in_channels, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads
        ).items():
            check_int(v, k)
        check_int(num_layers, "num_layers", 0)
        self.img_size, self.patch_size = (
            _triple(img_size, "img_size"),
            _triple(patch_size, "patch_size"),
        )
        if any(i % p for i, p in zip(self.img_size, self.patch_size)):
            raise ConfigError(
                f"patch_size {self.patch_size} must divide img_size {self.img_size} "
                "along every axis"
            )
        if hidden_size % num_heads:
            raise ConfigError(
                f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}"
            )
        if proj_type not in ("conv", "perceptron"):
            raise ConfigError(f"proj_type: expected 'conv' or 'perceptron', got {proj_type!r}")
        self.in_channels, self.hidden_size, self.mlp_dim = in_channels, hidden_size, mlp_dim
        self.num_layers, self.num_heads, self.proj_type = num_layers, num_heads, proj_type
        self.grid = tuple(i // p for i, p in zip(self.img_size, self.patch_size))
        n = self.grid[0] * self.grid[1] * self.grid[2]
        pv = self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        check_budget(
            "ViT3D",
            n * hidden_size
            + pv * in_channels * hidden_size
            + num_layers * (4 * hidden_size * hidden_size + 2 * hidden_size * mlp_dim),
        )
        self.patch_embedding = _PatchEmbedding(
            in_channels, hidden_size, self.patch_size, n, proj_type == "perceptron"
        )
        self.blocks = nn.ModuleList(
            [_Block(hidden_size, mlp_dim, qkv_bias) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(hidden_size)
        if classification:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.rebind()

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def _make_core(self) -> _core.Vit3dCore:
        from .adapters import lora_settings

        lora = lora_settings(self)
        params = {
            k: v
            for k, v in self.named_parameters()
            if ".base_layer." not in k and ".lora_" not in k
        }
        params.update(lora["tensors"])
        return _core.Vit3dCore(
            self.in_channels,
            list(self.img_size),
            list(self.patch_size),
            self.hidden_size,
            self.mlp_dim,
            self.num_layers,
            self.num_heads,
            self.proj_type == "perceptron",
            params,
            lora["settings"],
        )

    gradient_checkpointing = False

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        core = self._bound()
        if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return core.forward(x, self.training)
        from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

        h = core.tokens(x)
        hidden = []
        with set_checkpoint_early_stop(False):  # early stop raises through the Rust block
            for i in range(self.num_layers):
                h = checkpoint(core.block, i, h, self.training, use_reentrant=False)
                hidden.append(h)
        return core.final_norm(h), hidden

    @staticmethod
    def from_clip(
        clip: CLIPVision | str | os.PathLike[str], depth: int, mode: str = "replicate"
    ) -> CLIPVision:
        """PICG's 3D encoder: a HF CLIP vision tower with its patch convolution inflated to
        ``depth`` (the CLIP architecture is kept exactly, so this returns a 3D
        :class:`CLIPVision`, not a MONAI-layout ViT)."""
        tower = clip if isinstance(clip, CLIPVision) else CLIPVision.from_pretrained(clip)
        return tower.inflate(depth, mode)

    @classmethod
    def from_monai(
        cls,
        vit: nn.Module | Mapping[str, torch.Tensor],
        num_heads: int | None = None,
        img_size: Sequence[int] | None = None,
        patch_size: Sequence[int] | None = None,
        in_channels: int | None = None,
    ) -> ViT3D:
        """Build from a MONAI ``ViT`` module (config read from it) or its ``state_dict`` (pass
        ``num_heads``, ``img_size`` and ``patch_size``; MONAI's classification head, if any, is
        not part of ViT3D)."""
        if isinstance(vit, nn.Module):
            sd = vit.state_dict()
            pe = vit.patch_embedding
            num_heads = num_heads or vit.blocks[0].attn.num_heads
            if patch_size is None:
                conv = getattr(pe, "patch_embeddings", None)
                patch_size = tuple(conv.kernel_size) if isinstance(conv, nn.Conv3d) else None
            img_size = img_size or getattr(vit, "img_size", None)
        elif isinstance(vit, Mapping):
            sd = dict(vit)
        else:
            raise VoxlmTypeError(
                f"from_monai: expected a MONAI ViT module or its state dict, got "
                f"{type(vit).__name__}"
            )
        # MONAI's classification head is not part of ViT3D; its blocks carry an unused
        # norm_cross_attn (and cross_attn only with with_cross_attention, which ViT3D lacks)
        sd = {
            k: v
            for k, v in sd.items()
            if not k.startswith("classification_head") and ".norm_cross_attn." not in k
        }
        if any(".cross_attn." in k for k in sd):
            raise ConfigError("from_monai: ViTs with cross-attention blocks are not supported")
        perceptron = "patch_embedding.patch_embeddings.1.weight" in sd
        need = ["patch_embedding.position_embeddings", "blocks.0.mlp.linear1.weight"]
        if not perceptron:
            need.append("patch_embedding.patch_embeddings.weight")
        missing = [k for k in need if k not in sd]
        if missing:
            raise CheckpointError(
                f"from_monai: expected a MONAI ViT state dict, missing {missing} "
                f"(got {len(sd)} keys, e.g. {sorted(sd)[:3]})"
            )
        bad = [k for k in need if not isinstance(sd[k], torch.Tensor) or sd[k].dim() < 2]
        if bad:
            raise CheckpointError(f"from_monai: {bad}: expected tensors of rank >= 2")
        d = sd["patch_embedding.position_embeddings"].shape[-1]
        layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        mlp_dim = sd["blocks.0.mlp.linear1.weight"].shape[0]
        if not perceptron:
            w = sd["patch_embedding.patch_embeddings.weight"]
            in_channels = in_channels or w.shape[1]
            patch_size = patch_size or tuple(w.shape[2:])
        if (
            num_heads is None
            or img_size is None
            or patch_size is None
            or in_channels is None
            and perceptron
        ):
            raise ConfigError(
                "from_monai: pass num_heads, img_size, patch_size "
                "(and in_channels for perceptron embeddings)"
            )
        model = cls(
            in_channels=in_channels or 1,
            img_size=img_size,
            patch_size=patch_size,
            hidden_size=d,
            mlp_dim=mlp_dim,
            num_layers=layers,
            num_heads=num_heads,
            proj_type="perceptron" if perceptron else "conv",
            classification="cls_token" in sd,
            qkv_bias="blocks.0.attn.qkv.bias" in sd,
        )
        load_checked(model, sd, "from_monai")
        return model


# ---------------------------------------------------------------------------------------------
# CLIP vision tower (RRG24's 2D encoder; PICG's inflated 3D encoder)


class _ClipEmbeddings(nn.Module):
    def __init__(self, c: int, d: int, patch: tuple[int, ...], positions: int) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(d))
        conv = nn.Conv2d if len(patch) == 2 else nn.Conv3d
        self.patch_embedding = conv(c, d, kernel_size=patch, stride=patch, bias=False)
        self.position_embedding = nn.Embedding(positions, d)


class _ClipAttn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))


class _ClipMlp(nn.Module):
    def __init__(self, d: int, m: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, m), nn.Linear(m, d)


class _ClipLayer(nn.Module):
    def __init__(self, d: int, m: int, eps: float) -> None:
        super().__init__()
        self.self_attn = _ClipAttn(d)
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.mlp = _ClipMlp(d, m)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)


class _ClipEncoder(nn.Module):
    def __init__(self, d: int, m: int, n: int, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_ClipLayer(d, m, eps) for _ in range(n)])


class _ClipTower(nn.Module):
    def __init__(
        self, c: int, d: int, m: int, n: int, patch: tuple[int, ...], positions: int, eps: float
    ) -> None:
        super().__init__()
        self.embeddings = _ClipEmbeddings(c, d, patch, positions)
        self.pre_layrnorm = nn.LayerNorm(d, eps=eps)
        self.encoder = _ClipEncoder(d, m, n, eps)
        self.post_layernorm = nn.LayerNorm(d, eps=eps)


class CLIPVision(RustBound):
    """HF ``CLIPVisionModel`` (names under ``vision_model.``, quick-GELU, pre/post layer norms)
    with the forward in Rust: 2D images ``[B, C, H, W]`` for the LLaVA-style RRG24 recipe, or,
    after :meth:`inflate`, volumes ``[B, C, D, H, W]`` for PICG.

    ``forward(x)`` returns ``(last_hidden_state, pooler_output, hidden_states)`` as
    ``CLIPVisionModel(output_hidden_states=True)``; in 3D, patch tokens fewer than CLIP's position
    table are zero-padded so the table is reused unchanged (PICG's 252 -> 256).
    """

    def __init__(
        self,
        hidden_size: int = 1024,
        intermediate_size: int = 4096,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        image_size: int = 224,
        patch_size: int | Sequence[int] = 14,
        num_channels: int = 3,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        for k, v in dict(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_attention_heads=num_attention_heads,
            image_size=image_size,
            num_channels=num_channels,
        ).items():
            check_int(v, k)
        check_int(num_hidden_layers, "num_hidden_layers", 0)
        _divides(hidden_size, num_attention_heads, "hidden_size", "num_attention_heads")
        if not (isinstance(layer_norm_eps, (int, float)) and 0 < layer_norm_eps < 1):
            raise ConfigError(
                f"layer_norm_eps: expected a number in (0, 1), got {layer_norm_eps!r}"
            )
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if len(patch) not in (2, 3) or any(
            isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in patch
        ):
            raise ConfigError(
                f"patch_size: expected a positive size or 2-3 positive sizes, got {patch_size!r}"
            )
        if image_size % patch[-1]:
            raise ConfigError(f"patch_size {patch_size} must divide image_size {image_size}")
        self.config = dict(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            image_size=image_size,
            patch_size=patch_size,
            num_channels=num_channels,
            layer_norm_eps=layer_norm_eps,
        )
        positions = (image_size // patch[-1]) ** 2 + 1
        check_budget(
            "CLIPVision",
            positions * hidden_size
            + num_channels
            * hidden_size
            * patch[0]
            * patch[-1]
            * (patch[1] if len(patch) == 3 else 1)
            + num_hidden_layers
            * (4 * hidden_size * hidden_size + 2 * hidden_size * intermediate_size),
        )
        self.vision_model = _ClipTower(
            num_channels,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            patch,
            positions,
            layer_norm_eps,
        )
        self.rebind()

    def _make_core(self) -> _core.ClipVisionCore:
        return _core.ClipVisionCore(
            dict(self.named_parameters()),
            self.config["num_hidden_layers"],
            self.config["num_attention_heads"],
            float(self.config["layer_norm_eps"]),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        return self._bound().forward(x)

    def hidden_state(self, x: torch.Tensor, layer: int = -2) -> torch.Tensor:
        """``forward(x)[2][layer]`` (``[B, tokens, hidden]``; ``layer`` indexes the
        ``num_hidden_layers + 1`` hidden states, negative from the end), running only the encoder
        layers it needs: LLaVA's ``mm_vision_select_layer = -2`` skips the last layer and the
        pooled output."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ConfigError(f"layer: expected an int, got {layer!r}")
        return self._bound().hidden_state(x, layer)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], dtype: torch.dtype | None = None
    ) -> CLIPVision:
        """Load a HF ``CLIPVisionModel`` (or the vision half of a ``CLIPModel``) checkpoint:
        ``config.json`` + safetensors, read by the Rust loader."""
        import json
        import pathlib

        if not isinstance(path, (str, os.PathLike)):
            raise VoxlmTypeError(f"path: expected a checkpoint folder, got {type(path).__name__}")
        p = pathlib.Path(path)
        if not (p / "config.json").is_file():
            raise CheckpointError(f"{p}: no config.json")
        try:
            cfg = json.loads((p / "config.json").read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{p / 'config.json'}: not valid JSON ({e})") from e
        if isinstance(cfg, dict):
            cfg = cfg.get("vision_config", cfg)
        if not isinstance(cfg, dict):
            raise CheckpointError(
                f"{p / 'config.json'}: expected a JSON object of CLIP vision config fields, got "
                f"{type(cfg).__name__}"
            )
        if cfg.get("hidden_act", "quick_gelu") != "quick_gelu":
            raise ConfigError(
                f"{p}: hidden_act {cfg['hidden_act']!r} is not supported (CLIP uses quick_gelu)"
            )
        keys = (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "image_size",
            "patch_size",
            "num_channels",
            "layer_norm_eps",
        )
        model = cls(**{k: cfg[k] for k in keys if k in cfg})
        sd = _core.load_safetensors(os.fspath(p), None if dtype is None else str(dtype), "cpu")
        # CLIPModel / transformers 4 CLIPVisionModel: "vision_model.*"; transformers 5 saves the
        # vision tower's keys without the prefix
        if not any(k.startswith("vision_model.") for k in sd):
            sd = {f"vision_model.{k}": v for k, v in sd.items()}
        sd = {
            k: v
            for k, v in sd.items()
            if k.startswith("vision_model.") and not k.endswith("position_ids")
        }
        load_checked(model, sd, p)
        return model

    def inflate(self, depth: int, mode: str = "replicate") -> CLIPVision:
        """A 3D copy whose patch convolution is inflated to ``depth`` (see
        :func:`inflate_patch_embedding`; PICG: ``depth=14``, ``mode="replicate"``)."""
        import copy

        out = copy.deepcopy(self)
        emb = out.vision_model.embeddings
        w2 = emb.patch_embedding.weight.detach()
        if w2.dim() != 4:
            raise ConfigError("inflate: the patch embedding is already 3D")
        k = tuple(w2.shape[2:])
        conv = nn.Conv3d(
            w2.shape[1], w2.shape[0], kernel_size=(depth, *k), stride=(depth, *k), bias=False
        )
        with torch.no_grad():
            conv.weight.copy_(inflate_patch_embedding(w2, depth, mode))
        emb.patch_embedding = conv.to(w2.dtype)
        out.config["patch_size"] = (depth, *k)
        out.rebind()
        return out


# ---------------------------------------------------------------------------------------------
# reducers and projectors


class _PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)


class PerceiverResampler(RustBound):
    """Flamingo/RadFM perceiver resampler (Dia-LLaMA: ``num_latents=32, depth=6``) with the
    reference key names: ``x [B, N, dim] -> [B, num_latents, dim]``."""

    def __init__(
        self,
        dim: int,
        depth: int = 6,
        dim_head: int = 64,
        heads: int = 8,
        num_latents: int = 64,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        for k, v in dict(
            dim=dim, dim_head=dim_head, heads=heads, num_latents=num_latents, ff_mult=ff_mult
        ).items():
            check_int(v, k)
        check_int(depth, "depth", 0)
        inner_attn = dim_head * heads
        check_budget(
            "PerceiverResampler",
            num_latents * dim + depth * (4 * dim * inner_attn + 2 * dim * int(dim * ff_mult)),
        )
        self.dim, self.depth, self.dim_head, self.heads = dim, depth, dim_head, heads
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        inner = int(dim * ff_mult)
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        _PerceiverAttention(dim, dim_head, heads),
                        nn.Sequential(
                            nn.LayerNorm(dim),
                            nn.Linear(dim, inner, bias=False),
                            nn.GELU(),
                            nn.Linear(inner, dim, bias=False),
                        ),
                    ]
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim)
        self.rebind()

    def _make_core(self) -> _core.PerceiverCore:
        return _core.PerceiverCore(
            dict(self.named_parameters()), self.depth, self.heads, self.dim_head
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._bound().forward(x)


def _mlp_layers(in_dim: int, out_dim: int, depth: int, gelu: bool) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(1, depth):
        if gelu:
            mods.append(nn.GELU())
        mods.append(nn.Linear(out_dim, out_dim))
    return nn.Sequential(*mods)


def _linears(seq: nn.Sequential) -> list[nn.Linear]:
    return [m for m in seq if isinstance(m, nn.Linear)]


class MLPProjector(nn.Module):
    """LLaVA's ``mlp{depth}x_gelu`` projector: ``Linear(in, out)`` then ``depth - 1`` times
    ``GELU, Linear(out, out)``; parameters under ``projector.{0,2,...}``."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2) -> None:
        super().__init__()
        check_int(in_dim, "in_dim")
        check_int(out_dim, "out_dim")
        check_int(depth, "depth")
        check_budget("MLPProjector", in_dim * out_dim + (depth - 1) * out_dim * out_dim)
        self.projector = _mlp_layers(in_dim, out_dim, depth, gelu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in_dim] -> [..., out_dim]``."""
        ls = _linears(self.projector)
        return _core.mlp_project(x, [m.weight for m in ls], [m.bias for m in ls])


class SpatialPoolingProjector(nn.Module):
    """M3D's spatial pooling projector: tokens of the ``image_size / patch_size`` grid are
    average-pooled by ``pooling_size`` in 3D (2048 -> 256 for 32x256x256 / 4x16x16 / 2), then
    projected by ``layer_num`` linears (``layer_type`` ``"mlp"``: GELU between;
    ``"linear"``: none)."""

    def __init__(
        self,
        image_size: Sequence[int],
        patch_size: Sequence[int],
        in_dim: int,
        out_dim: int,
        layer_type: str = "mlp",
        layer_num: int = 2,
        pooling_type: str = "spatial",
        pooling_size: int = 2,
    ) -> None:
        super().__init__()
        check_int(in_dim, "in_dim")
        check_int(out_dim, "out_dim")
        check_int(layer_num, "layer_num")
        check_int(pooling_size, "pooling_size")
        if layer_type not in ("mlp", "linear"):
            raise ConfigError(f"layer_type: expected 'mlp' or 'linear', got {layer_type!r}")
        if pooling_type not in ("spatial", "sequence"):
            raise ConfigError(
                f"pooling_type: expected 'spatial' or 'sequence', got {pooling_type!r}"
            )
        self.grid = tuple(
            i // p
            for i, p in zip(
                _triple(tuple(image_size), "image_size"), _triple(tuple(patch_size), "patch_size")
            )
        )
        self.in_dim, self.pooling_type, self.pooling_size, self.layer_type = (
            in_dim,
            pooling_type,
            pooling_size,
            layer_type,
        )
        check_budget("SpatialPoolingProjector", in_dim * out_dim + layer_num * out_dim * out_dim)
        self.projector = _mlp_layers(in_dim, out_dim, layer_num, gelu=layer_type == "mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, in_dim] -> [B, N / pooling_size^3, out_dim]``."""
        if self.pooling_type == "spatial":
            x = _core.spatial_pool(x, list(self.grid), self.pooling_size)
        else:
            k = self.pooling_size**3
            check_tensor(x, "x", floating=True)
            if x.dim() != 3 or x.shape[1] < k or x.shape[-1] != self.in_dim:
                raise ShapeError(
                    f"x: expected [B, N >= {k}, {self.in_dim}] tokens, got shape {tuple(x.shape)}"
                )
            x = torch.nn.functional.avg_pool1d(x.transpose(1, 2), k, k).transpose(1, 2)
        ls = _linears(self.projector)
        if self.layer_type == "mlp":
            return _core.mlp_project(x, [m.weight for m in ls], [m.bias for m in ls])
        for m in ls:
            x = _core.lora_linear(x, m.weight, m.bias)
        return x


class _TimmAttn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)


class _TimmMlp(nn.Module):
    def __init__(self, d: int, m: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, m), nn.Linear(m, d)


class _TimmBlock(nn.Module):
    def __init__(self, d: int, m: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = _TimmAttn(d)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = _TimmMlp(d, m)


class AdapterQueryBlocks(RustBound):
    """PICG's visual queries (LLaMA-Adapter V2's visual branch): ``query_len`` learned queries are
    concatenated with projected vision features (``clip_proj`` + LayerNorm), pass through
    ``depth`` timm-style transformer blocks, and the query positions are projected to the LLM
    width (``visual_proj`` + LayerNorm): ``[B, N, clip_dim] -> [B, query_len, out_dim]``.
    Parameter names follow LLaMA-Adapter's ``llama_adapter.py``.

    ``eps`` is the blocks' LayerNorm epsilon: 1e-5 by default, as the timm ``Block`` that
    LLaMA-Adapter and PICG build (timm 0.3.2 / 0.6: ``nn.LayerNorm``); timm 1.x's ``Block`` uses
    1e-6. ``clip_proj_norm`` and ``visual_proj_norm`` are ``nn.LayerNorm`` (1e-5) in every
    version."""

    def __init__(
        self,
        clip_dim: int,
        out_dim: int,
        dim: int = 768,
        query_len: int = 10,
        depth: int = 8,
        heads: int = 16,
        mlp_ratio: float = 4.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        for k, v in dict(
            clip_dim=clip_dim, out_dim=out_dim, dim=dim, query_len=query_len, heads=heads
        ).items():
            check_int(v, k)
        check_int(depth, "depth", 0)
        _divides(dim, heads, "dim", "heads")
        if not (
            isinstance(mlp_ratio, (int, float))
            and 0 < mlp_ratio <= 64
            and int(dim * mlp_ratio) >= 1
        ):
            raise ConfigError(f"mlp_ratio: expected a number in (0, 64], got {mlp_ratio!r}")
        if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and 0 < eps < 1):
            raise ConfigError(f"eps: expected a number in (0, 1), got {eps!r}")
        self.depth, self.heads, self.eps = depth, heads, float(eps)
        check_budget(
            "AdapterQueryBlocks",
            clip_dim * dim
            + query_len * dim
            + dim * out_dim
            + depth * (4 * dim * dim + 2 * dim * int(dim * mlp_ratio)),
        )
        self.clip_proj = nn.Linear(clip_dim, dim)
        self.clip_proj_norm = nn.LayerNorm(dim)
        self.visual_query = nn.Embedding(query_len, dim)
        self.visual_blocks = nn.ModuleList(
            [_TimmBlock(dim, int(dim * mlp_ratio), self.eps) for _ in range(depth)]
        )
        self.visual_proj = nn.Linear(dim, out_dim)
        self.visual_proj_norm = nn.LayerNorm(out_dim)
        self.rebind()

    def _make_core(self) -> _core.QueryBlocksCore:
        return _core.QueryBlocksCore(
            dict(self.named_parameters()), self.depth, self.heads, self.eps
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self._bound().forward(feats, self.training)


class DiseaseAwareAttention(nn.Module):
    """Dia-LLaMA's disease-aware attention: ``prototype`` ``[num_labels, num_tokens]`` softmaxed
    over the tokens pools one feature per disease: ``[B, num_tokens, D] -> [B, num_labels, D]``
    (feeds :class:`voxlm.losses.PrototypeBank`)."""

    def __init__(self, num_labels: int, num_tokens: int) -> None:
        super().__init__()
        check_int(num_labels, "num_labels")
        check_int(num_tokens, "num_tokens")
        check_budget("DiseaseAwareAttention", num_labels * num_tokens)
        self.prototype = nn.Parameter(torch.randn(num_labels, num_tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _core.disease_pool(x, self.prototype)

    @torch.no_grad()
    def attention(self) -> torch.Tensor:
        """The ``[num_labels, num_tokens]`` attention weights (rows sum to 1), e.g. to plot."""
        return self.prototype.softmax(-1)


__all__ = [
    "inflate_patch_embedding",
    "interpolate_pos_embedding",
    "reuse_pos_embedding",
    "ViT3D",
    "CLIPVision",
    "PerceiverResampler",
    "MLPProjector",
    "SpatialPoolingProjector",
    "DiseaseAwareAttention",
    "AdapterQueryBlocks",
    "splice_image_tokens",
]
