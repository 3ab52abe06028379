"""RadFM's 3D vision transformer (``vit_3d``), the encoder Dia-LLaMA inherits, with RadFM's
checkpoint key names so its released weights load with ``load_state_dict``.

Source (read from the released code, transcribed here in PyTorch ops):

* chaoyi-wu/RadFM ``src/Model/RadFM/vit_3d.py`` (``ViT``, ``Transformer``, ``PreNorm``,
  ``Attention``, ``FeedForward``) and ``src/Model/RadFM/position_encoding.py``
  (``PositionEmbeddingLearned3d``); zhi-xuan-chen/Dia-LLaMA ``src/Model/DiaLLaMA/vit_3d.py`` and
  ``position_encoding.py`` are byte-identical copies.
* Built in ``src/Model/RadFM/my_embedding_layer.py`` (and Dia-LLaMA's ``my_embedding_layer.py``)
  as ``ViT(image_size=512, frames=512, image_patch_size=32, frame_patch_size=4, dim=768,
  depth=12, heads=8, mlp_dim=2048, dropout=0.1, emb_dropout=0.1)``; inside the full models the
  keys sit under ``embedding_layer.vision_encoder.`` (:data:`RADFM_PREFIX`).

Architecture (input ``[B, C, H, W, D]``, RadFM's axis order: depth last):

* patch embedding ``to_patch_embedding``: ``Rearrange('b c (h p1) (w p2) (f pf) -> b (h w f)
  (p1 p2 pf c)')`` (index 0, no parameters) -> ``LayerNorm(patch_dim)`` (``.1``) ->
  ``Linear(patch_dim, dim)`` (``.2``) -> ``LayerNorm(dim)`` (``.3``); ``patch_dim = 3 * 32 * 32 *
  4 = 12288``. Tokens are ordered ``h`` slowest, ``f`` (depth) fastest.
* learned factorised 3D position embedding ``pos_embedding.{row,col,dep}_embed.weight``
  (``nn.Embedding(h_patch_num | w_patch_num | d_patch_num, dim // 3)``, uniform init), built for
  the *maximum* grid (512/32 = 16 rows and columns, 512/4 = 128 depths) and indexed for a smaller
  grid ``g`` at ``(arange(g) + 1) * (max // g) - 1`` (e.g. rows 1, 3, ..., 15 for 256 pixels),
  the three parts concatenated ``[row; col; dep]``.
* ``depth`` pre-norm blocks: ``transformer.layers.{i}.0.norm`` + ``.0.fn.to_qkv`` (no bias) +
  ``.0.fn.to_out.0``; ``.1.norm`` + ``.1.fn.net.0`` (Linear) -> GELU -> dropout -> ``.1.fn.net.3``
  (Linear) -> dropout. ``heads x dim_head`` (8 x 64 = 512) need not equal ``dim`` (768).
* no class token, no final norm; ``forward`` returns ``(tokens [B, N, dim], pos [B, N, dim])`` as
  RadFM's ``ViT.forward`` (Dia-LLaMA uses the tokens).

The forward runs in PyTorch ops (``scaled_dot_product_attention`` for the attention; RadFM's
explicit softmax(QK^T * scale) V is the same function, checked in
``tests/test_radfm_vit_vs_reference.py`` against a transcription of the reference).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ._bind import check_budget, check_int, check_number, check_tensor
from .exceptions import CheckpointError, ConfigError, DeviceError, DTypeError, ShapeError

#: Key prefix of the vision encoder inside RadFM's / Dia-LLaMA's full model state dicts.
RADFM_PREFIX = "embedding_layer.vision_encoder."


def _pair(v: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        t: tuple = (v, v)
    elif isinstance(v, (list, tuple)):
        t = tuple(v)
    else:
        raise ConfigError(f"{name}: expected a positive size or two of them, got {v!r}")
    if len(t) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in t):
        raise ConfigError(f"{name}: expected a positive size or two of them, got {v!r}")
    return int(t[0]), int(t[1])


class _PatchRearrange(nn.Module):
    """``einops`` ``Rearrange('b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)')``."""

    def __init__(self, p1: int, p2: int, pf: int) -> None:
        super().__init__()
        self.p1, self.p2, self.pf = p1, p2, pf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww, ff = x.shape
        h, w, f = hh // self.p1, ww // self.p2, ff // self.pf
        x = x.reshape(b, c, h, self.p1, w, self.p2, f, self.pf)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b h w f p1 p2 pf c
        return x.reshape(b, h * w * f, self.p1 * self.p2 * self.pf * c)

    def extra_repr(self) -> str:
        return (
            "'b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)', "
            f"p1={self.p1}, p2={self.p2}, pf={self.pf}"
        )


class PositionEmbeddingLearned3d(nn.Module):
    """RadFM's ``PositionEmbeddingLearned3d``: ``row_embed``, ``col_embed``, ``dep_embed``."""

    def __init__(
        self, num_pos_feats: int, h_patch_num: int, w_patch_num: int, d_patch_num: int
    ) -> None:
        super().__init__()
        self.h_patch_num, self.w_patch_num, self.d_patch_num = h_patch_num, w_patch_num, d_patch_num
        self.row_embed = nn.Embedding(h_patch_num, num_pos_feats)
        self.col_embed = nn.Embedding(w_patch_num, num_pos_feats)
        self.dep_embed = nn.Embedding(d_patch_num, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)
        nn.init.uniform_(self.dep_embed.weight)

    def indices(self, h: int, w: int, d: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Table rows used for an ``h x w x d`` grid (RadFM's
        ``(arange(g) + 1) * (max // g) - 1``)."""
        out = []
        for g, m, axis in (
            (h, self.h_patch_num, "rows"),
            (w, self.w_patch_num, "columns"),
            (d, self.d_patch_num, "depths"),
        ):
            if not 0 < g <= m:
                raise ShapeError(
                    f"RadFM ViT: a grid of {g} patch {axis}, but the position table has {m} "
                    f"(the encoder was built for at most {m} patches along this axis)"
                )
            out.append((torch.arange(g, device=device) + 1) * (m // g) - 1)
        return tuple(out)

    def forward(self, b: int, h: int, w: int, d: int, x: torch.Tensor) -> torch.Tensor:
        """``[b, h*w*d, 3 * num_pos_feats]`` (row, col, dep parts concatenated)."""
        i, j, k = self.indices(h, w, d, x.device)
        xe = self.row_embed(i)[:, None, None, :].expand(h, w, d, -1)
        ye = self.col_embed(j)[None, :, None, :].expand(h, w, d, -1)
        ze = self.dep_embed(k)[None, None, :, :].expand(h, w, d, -1)
        pos = torch.cat([xe, ye, ze], dim=-1).reshape(1, h * w * d, -1)
        return pos.expand(b, -1, -1)


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads, self.dim_head, self.dropout = heads, dim_head, dropout
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out: nn.Module = (
            nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
            if project_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.dim_head**-0.5)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


def _block(attn: nn.Module, ff: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = attn(x) + x
    return ff(x) + x


class _Transformer(nn.Module):
    def __init__(
        self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        _PreNorm(dim, _Attention(dim, heads, dim_head, dropout)),
                        _PreNorm(dim, _FeedForward(dim, mlp_dim, dropout)),
                    ]
                )
                for _ in range(depth)
            ]
        )
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            attn: nn.Module = layer[0]  # type: ignore[index]
            ff: nn.Module = layer[1]  # type: ignore[index]
            if ckpt:
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(_block, attn, ff, x, use_reentrant=False)
            else:
                x = attn(x) + x
                x = ff(x) + x
        return x


class RadFMViT3D(nn.Module):
    """RadFM's ``vit_3d.ViT`` (see the module docstring): ``[B, C, H, W, D] -> ([B, N, dim],
    [B, N, dim])`` with ``N = (H / p) * (W / p) * (D / pf)``.

    ``image_size`` / ``frames`` set the *largest* volume the position tables cover (RadFM:
    512 x 512 x 512); smaller volumes whose grid divides the table size use every
    ``max // grid``-th row of it, as RadFM does. ``dim`` must be divisible by 3 (three position
    parts of ``dim // 3``)."""

    def __init__(
        self,
        image_size: int | tuple[int, int] = 512,
        image_patch_size: int | tuple[int, int] = 32,
        frames: int = 512,
        frame_patch_size: int = 4,
        dim: int = 768,
        depth: int = 12,
        heads: int = 8,
        mlp_dim: int = 2048,
        channels: int = 3,
        dim_head: int = 64,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        ih, iw = _pair(image_size, "image_size")
        ph, pw = _pair(image_patch_size, "image_patch_size")
        if ih % ph or iw % pw:
            raise ConfigError(
                f"image_size {(ih, iw)} must be divisible by image_patch_size {(ph, pw)}"
            )
        for k, v in dict(
            frames=frames,
            frame_patch_size=frame_patch_size,
            dim=dim,
            heads=heads,
            mlp_dim=mlp_dim,
            channels=channels,
            dim_head=dim_head,
        ).items():
            check_int(v, k)
        check_int(depth, "depth")
        dropout = check_number(dropout, "dropout", 0.0, 1.0, high_open=True)
        emb_dropout = check_number(emb_dropout, "emb_dropout", 0.0, 1.0, high_open=True)
        check_budget(
            "RadFMViT3D",
            channels * ph * pw * frame_patch_size * dim
            + depth * (4 * dim * heads * dim_head + 2 * dim * mlp_dim),
        )
        if frames % frame_patch_size:
            raise ConfigError(
                f"frames {frames} must be a positive multiple of frame_patch_size "
                f"{frame_patch_size}"
            )
        if dim <= 0 or dim % 3:
            raise ConfigError(
                f"dim {dim}: RadFM's position embedding concatenates three parts of dim // 3; "
                "dim must be a positive multiple of 3"
            )
        if min(depth, heads, mlp_dim, channels, dim_head) <= 0:
            raise ConfigError(
                "RadFM ViT: depth, heads, mlp_dim, channels and dim_head must be positive"
            )
        self.image_size, self.patch_size = (ih, iw), (ph, pw)
        self.frames, self.frame_patch_size = frames, frame_patch_size
        self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim = (
            dim,
            depth,
            heads,
            dim_head,
            mlp_dim,
        )
        self.channels, self.dropout_p, self.emb_dropout_p = channels, dropout, emb_dropout
        patch_dim = channels * ph * pw * frame_patch_size
        self.to_patch_embedding = nn.Sequential(
            _PatchRearrange(ph, pw, frame_patch_size),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, dim),
            nn.LayerNorm(dim),
        )
        self.pos_embedding = PositionEmbeddingLearned3d(
            dim // 3, ih // ph, iw // pw, frames // frame_patch_size
        )
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = _Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)

    # -- shapes ---------------------------------------------------------------------------

    def grid(self, h: int, w: int, d: int) -> tuple[int, int, int]:
        """The patch grid of an ``H x W x D`` volume; ShapeError when it cannot be patched or
        exceeds the position tables."""
        ph, pw = self.patch_size
        pf = self.frame_patch_size
        if h % ph or w % pw or d % pf:
            raise ShapeError(
                f"RadFM ViT: volume H x W x D = {h} x {w} x {d} is not divisible by the patch "
                f"{ph} x {pw} x {pf}"
            )
        g = (h // ph, w // pw, d // pf)
        pe = self.pos_embedding
        for n, m, axis in zip(g, (pe.h_patch_num, pe.w_patch_num, pe.d_patch_num), ("H", "W", "D")):
            if n > m or m % n:
                raise ShapeError(
                    f"RadFM ViT: {n} patches along {axis} for a {h} x {w} x {d} volume, but the "
                    f"position table has {m} (needs a grid that divides it)"
                )
        return g

    def num_tokens(self, h: int, w: int, d: int) -> int:
        """``N`` for an ``H x W x D`` volume (RadFM's 256 x 256 x 64 -> 8 * 8 * 16 = 1024)."""
        g = self.grid(h, w, d)
        return g[0] * g[1] * g[2]

    def gradient_checkpointing_enable(self) -> None:
        self.transformer.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.transformer.gradient_checkpointing = False

    # -- forward --------------------------------------------------------------------------

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor(video, "video", floating=True)
        w = self.to_patch_embedding[2].weight
        if video.dtype != w.dtype and not torch.is_autocast_enabled(video.device.type):
            raise DTypeError(
                f"video: expected {w.dtype} (the encoder's parameters), got {video.dtype}"
            )
        if video.device != w.device:
            raise DeviceError(
                f"video: expected a tensor on {w.device} (the encoder's parameters), got "
                f"{video.device}"
            )
        if video.dim() != 5 or video.shape[1] != self.channels or 0 in video.shape:
            raise ShapeError(
                f"RadFM ViT: expected [B, {self.channels}, H, W, D], got shape {tuple(video.shape)}"
            )
        b, _, h, w, d = video.shape
        gh, gw, gd = self.grid(h, w, d)
        x = self.to_patch_embedding(video)
        pos = self.pos_embedding(b, gh, gw, gd, x)
        x = self.dropout(x + pos)
        return self.transformer(x), pos

    # -- checkpoints ----------------------------------------------------------------------

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, torch.Tensor], prefix: str | None = None, **kw: object
    ) -> RadFMViT3D:
        """Build from a RadFM ``vit_3d`` state dict (bare keys, or under ``prefix``; the full-model
        prefix :data:`RADFM_PREFIX` is found automatically), reading the sizes from the tensors
        (``heads`` from ``kw``, default 8, RadFM's value)."""
        if prefix is None:
            prefix = RADFM_PREFIX if any(k.startswith(RADFM_PREFIX) for k in sd) else ""
        sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        need = "to_patch_embedding.2.weight"
        if need not in sub:
            raise CheckpointError(f"not a RadFM vit_3d state dict: no {prefix}{need}")
        lin = sub[need]
        dim, patch_dim = lin.shape
        depth = len({k.split(".")[2] for k in sub if k.startswith("transformer.layers.")})
        heads = int(kw.pop("heads", 8))  # type: ignore[call-overload]
        inner = sub["transformer.layers.0.0.fn.to_qkv.weight"].shape[0] // 3
        mlp_dim = sub["transformer.layers.0.1.fn.net.0.weight"].shape[0]
        rows = sub["pos_embedding.row_embed.weight"].shape[0]
        cols = sub["pos_embedding.col_embed.weight"].shape[0]
        deps = sub["pos_embedding.dep_embed.weight"].shape[0]
        ps = int(kw.pop("image_patch_size", 32))  # type: ignore[call-overload]
        pf = int(kw.pop("frame_patch_size", 4))  # type: ignore[call-overload]
        channels = patch_dim // (ps * ps * pf)
        if channels * ps * ps * pf != patch_dim:
            raise CheckpointError(
                f"patch_dim {patch_dim} is not channels x {ps} x {ps} x {pf}; pass the patch sizes"
            )
        if inner % heads:
            raise CheckpointError(f"attention width {inner} is not divisible by heads={heads}")
        model = cls(
            image_size=(rows * ps, cols * ps),
            image_patch_size=ps,
            frames=deps * pf,
            frame_patch_size=pf,
            dim=dim,
            depth=depth,
            heads=heads,
            mlp_dim=mlp_dim,
            channels=channels,
            dim_head=inner // heads,
            **kw,
        )  # type: ignore[arg-type]
        missing, unexpected = model.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"RadFM vit_3d state dict does not fit: missing {missing[:3]}, unexpected "
                f"{unexpected[:3]}"
            )
        return model

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, frames={self.frames}, "
            f"patch={self.patch_size}x{self.frame_patch_size}, "
            f"dim={self.dim}, depth={self.depth}, heads={self.heads}x{self.dim_head}, "
            f"mlp_dim={self.mlp_dim}"
        )


__all__ = ["RADFM_PREFIX", "RadFMViT3D", "PositionEmbeddingLearned3d"]
