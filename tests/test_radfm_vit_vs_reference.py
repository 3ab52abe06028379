"""voxlm.vision_radfm.RadFMViT3D vs a transcription of RadFM's released ``vit_3d``.

The reference below is transcribed from chaoyi-wu/RadFM ``src/Model/RadFM/vit_3d.py``
(``PreNorm``, ``FeedForward``, ``Attention``, ``Transformer``, ``ViT``) and
``src/Model/RadFM/position_encoding.py`` (``PositionEmbeddingLearned3d``) — identical to
zhi-xuan-chen/Dia-LLaMA ``src/Model/DiaLLaMA/vit_3d.py`` / ``position_encoding.py`` — with einops
as the original. Its weights are saved in the real file format (safetensors, under RadFM's
full-model prefix ``embedding_layer.vision_encoder.``) and loaded through voxlm's production path
(``_core.load_safetensors`` -> ``RadFMViT3D.from_state_dict``).

Tolerance: float32, atol 2e-5 / rtol 1e-4 on tokens and gradients: voxlm uses
``scaled_dot_product_attention`` where the reference multiplies and softmaxes explicitly, which
reorders float32 sums (observed differences ~1e-6).
"""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from voxlm import _core
from voxlm.exceptions import CheckpointError, ConfigError, ShapeError
from voxlm.vision_radfm import RADFM_PREFIX, RadFMViT3D

# ------------------------------------------------------------------------------------------
# transcription of RadFM src/Model/RadFM/position_encoding.py (PositionEmbeddingLearned3d)


class RefPositionEmbeddingLearned3d(nn.Module):
    def __init__(self, num_pos_feats=256, h_patch_num=16, w_patch_num=16, d_patch_num=64):
        super().__init__()
        self.h_patch_num = h_patch_num
        self.w_patch_num = w_patch_num
        self.d_patch_num = d_patch_num
        self.row_embed = nn.Embedding(h_patch_num, num_pos_feats)
        self.col_embed = nn.Embedding(w_patch_num, num_pos_feats)
        self.dep_embed = nn.Embedding(d_patch_num, num_pos_feats)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)
        nn.init.uniform_(self.dep_embed.weight)

    def forward(self, B, h, w, d, x):
        i = (torch.arange(h, device=x.device) + 1) * (self.h_patch_num // h) - 1
        j = (torch.arange(w, device=x.device) + 1) * (self.w_patch_num // w) - 1
        k = (torch.arange(d, device=x.device) + 1) * (self.d_patch_num // d) - 1
        x_emb = self.row_embed(i).unsqueeze(1).unsqueeze(2).repeat(1, w, d, 1)
        y_emb = self.col_embed(j).unsqueeze(0).unsqueeze(2).repeat(h, 1, d, 1)
        z_emb = self.dep_embed(k).unsqueeze(0).unsqueeze(1).repeat(h, w, 1, 1)
        pos = torch.cat([x_emb, y_emb, z_emb], dim=-1).unsqueeze(0).repeat(B, 1, 1, 1, 1)
        pos = rearrange(pos, "b h w d c -> b (h w d) c")
        return pos


# ------------------------------------------------------------------------------------------
# transcription of RadFM src/Model/RadFM/vit_3d.py


def pair(t):
    return t if isinstance(t, tuple) else (t, t)


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        project_out = not (heads == 1 and dim_head == dim)
        self.heads = heads
        self.scale = dim_head**-0.5
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = (
            nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))
            if project_out
            else nn.Identity()
        )

    def forward(self, x):
        qkv = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = map(lambda t: rearrange(t, "b n (h d) -> b h n d", h=self.heads), qkv)
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        attn = self.attend(dots)
        attn = self.dropout(attn)
        out = torch.matmul(attn, v)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out)


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout=0.0):
        super().__init__()
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(
                nn.ModuleList(
                    [
                        PreNorm(
                            dim, Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)
                        ),
                        PreNorm(dim, FeedForward(dim, mlp_dim, dropout=dropout)),
                    ]
                )
            )

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class RefViT(nn.Module):
    def __init__(
        self,
        *,
        image_size,
        image_patch_size,
        frames,
        frame_patch_size,
        dim,
        depth,
        heads,
        mlp_dim,
        pool="cls",
        channels=3,
        dim_head=64,
        dropout=0.0,
        emb_dropout=0.0,
    ):
        super().__init__()
        image_height, image_width = pair(image_size)
        patch_height, patch_width = pair(image_patch_size)
        assert image_height % patch_height == 0 and image_width % patch_width == 0
        assert frames % frame_patch_size == 0
        self.patch_height = patch_height
        self.patch_width = patch_width
        self.frame_patch_size = frame_patch_size
        patch_dim = channels * patch_height * patch_width * frame_patch_size
        assert pool in {"cls", "mean"}
        self.to_patch_embedding = nn.Sequential(
            Rearrange(
                "b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)",
                p1=patch_height,
                p2=patch_width,
                pf=frame_patch_size,
            ),
            nn.LayerNorm(patch_dim),
            nn.Linear(patch_dim, dim),
            nn.LayerNorm(dim),
        )
        self.pos_embedding = RefPositionEmbeddingLearned3d(
            dim // 3,
            (image_height // patch_height),
            (image_width // patch_width),
            (frames // frame_patch_size),
        )
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)

    def forward(self, video):
        B, C, H, W, D = video.shape
        x = self.to_patch_embedding(video)
        b, n, _ = x.shape
        pos = self.pos_embedding(
            B, H // self.patch_height, W // self.patch_width, D // self.frame_patch_size, x
        )
        x += pos
        x = self.dropout(x)
        x = self.transformer(x)
        return x, pos


# ------------------------------------------------------------------------------------------

# a miniature of RadFM's configuration (512/32, 512/4, 768, 12 x 8 x 64, mlp 2048): same
# structure (heads x dim_head != dim, depth axis last, position tables larger than the grid)
TINY = dict(
    image_size=64,
    image_patch_size=8,
    frames=32,
    frame_patch_size=4,
    dim=48,
    depth=2,
    heads=4,
    dim_head=16,
    mlp_dim=96,
    channels=3,
)


def _reference(seed: int = 0) -> RefViT:
    torch.manual_seed(seed)
    ref = RefViT(**TINY)
    with torch.no_grad():  # non-trivial norms
        for m in ref.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return ref.eval()


def _load_via_file(ref: nn.Module, tmp_path) -> RadFMViT3D:
    sd = {RADFM_PREFIX + k: v.detach().contiguous() for k, v in ref.state_dict().items()}
    sd["embedding_layer.perceiver.latents"] = torch.zeros(2, 2)  # other parts of the full model
    f = tmp_path / "radfm.safetensors"
    _core.save_safetensors(sd, str(f))
    loaded = _core.load_safetensors(str(f), None, "cpu")
    return RadFMViT3D.from_state_dict(
        loaded, heads=TINY["heads"], image_patch_size=8, frame_patch_size=4
    ).eval()


def test_key_names_are_radfm_keys():
    ours = RadFMViT3D(**TINY)
    assert set(ours.state_dict()) == set(RefViT(**TINY).state_dict())
    paper = RadFMViT3D()  # RadFM / Dia-LLaMA sizes
    sd = paper.state_dict()
    assert sd["to_patch_embedding.1.weight"].shape == (12288,)
    assert sd["to_patch_embedding.2.weight"].shape == (768, 12288)
    assert sd["pos_embedding.row_embed.weight"].shape == (16, 256)
    assert sd["pos_embedding.dep_embed.weight"].shape == (128, 256)
    assert sd["transformer.layers.11.0.fn.to_qkv.weight"].shape == (1536, 768)
    assert sd["transformer.layers.11.0.fn.to_out.0.weight"].shape == (768, 512)
    assert sd["transformer.layers.11.1.fn.net.0.weight"].shape == (2048, 768)
    assert sd["transformer.layers.11.1.fn.net.3.weight"].shape == (768, 2048)
    assert paper.num_tokens(256, 256, 64) == 1024  # Dia-LLaMA's 256 x 256 x 64 input


@pytest.mark.parametrize("shape", [(64, 64, 32), (32, 32, 16), (64, 32, 8)])
def test_forward_matches_reference(tmp_path, shape):
    ref = _reference()
    ours = _load_via_file(ref, tmp_path)
    torch.manual_seed(1)
    x = torch.randn(2, 3, *shape)
    with torch.no_grad():
        want, want_pos = ref(x.clone())
        got, got_pos = ours(x)
    assert (
        got.shape
        == want.shape
        == (2, (shape[0] // 8) * (shape[1] // 8) * (shape[2] // 4), TINY["dim"])
    )
    torch.testing.assert_close(got_pos, want_pos, atol=0, rtol=0)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_gradients_match_reference(tmp_path):
    ref = _reference(3)
    ours = _load_via_file(ref, tmp_path)
    ref.train()
    ours.train()  # dropout 0 in TINY: training mode is deterministic
    torch.manual_seed(2)
    x = torch.randn(1, 3, 32, 32, 16)
    w = torch.randn(1, 64, TINY["dim"])
    (ref(x.clone())[0] * w).sum().backward()
    (ours(x)[0] * w).sum().backward()
    gref = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, gref[name].grad, atol=2e-5, rtol=1e-4, msg=name)


def test_gradient_checkpointing_same_result():
    torch.manual_seed(0)
    m = RadFMViT3D(**TINY).train()
    x = torch.randn(1, 3, 32, 32, 16)
    a = m(x)[0]
    a.sum().backward()
    g1 = m.to_patch_embedding[2].weight.grad.clone()
    m.zero_grad()
    m.gradient_checkpointing_enable()
    b = m(x)[0]
    b.sum().backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(m.to_patch_embedding[2].weight.grad, g1)


def test_bad_shapes_and_configs():
    m = RadFMViT3D(**TINY)
    with pytest.raises(ShapeError, match="not divisible by the patch"):
        m(torch.zeros(1, 3, 60, 64, 32))
    with pytest.raises(ShapeError, match="position table"):
        m(torch.zeros(1, 3, 128, 64, 32))  # 16 rows > 8 in the table
    with pytest.raises(ShapeError, match="position table"):
        m(torch.zeros(1, 3, 24, 64, 32))  # 3 rows do not divide 8
    with pytest.raises(ShapeError, match=r"expected \[B, 3, H, W, D\]"):
        m(torch.zeros(1, 1, 64, 64, 32))
    with pytest.raises(ConfigError, match="multiple of 3"):
        RadFMViT3D(dim=64)
    with pytest.raises(ConfigError, match="divisible"):
        RadFMViT3D(image_size=100, image_patch_size=32)
    with pytest.raises(CheckpointError, match="not a RadFM"):
        RadFMViT3D.from_state_dict({"foo": torch.zeros(1)})
