"""Vision parts against their references: ViT3D vs MONAI's ViT (outputs and every hidden state
within 1e-5, fp32; SDPA vs einsum-softmax differ in the last bits), the perceiver, spatial
pooling projector and disease-aware attention vs plain-PyTorch transcriptions of the reference
code (kept below), inflation properties."""

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import ViT
from torch import einsum, nn

import voxlm
from voxlm.vision import (
    DiseaseAwareAttention,
    MLPProjector,
    PerceiverResampler,
    SpatialPoolingProjector,
    ViT3D,
    inflate_patch_embedding,
    interpolate_pos_embedding,
    reuse_pos_embedding,
)

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("proj_type", ["conv", "perceptron"])
@pytest.mark.parametrize("classification", [False, True])
def test_vit3d_equals_monai(proj_type, classification):
    torch.manual_seed(0)
    kw = dict(
        in_channels=2,
        img_size=(8, 32, 32),
        patch_size=(4, 16, 16),
        hidden_size=48,
        mlp_dim=96,
        num_layers=3,
        num_heads=4,
        proj_type=proj_type,
        classification=classification,
    )
    ref = ViT(**kw, qkv_bias=True).eval()
    with torch.no_grad():
        ref.patch_embedding.position_embeddings.normal_()
        if classification:
            ref.cls_token.normal_()
    ours = ViT3D.from_monai(ref, img_size=(8, 32, 32), patch_size=(4, 16, 16), in_channels=2).eval()
    x = torch.randn(2, 2, 8, 32, 32)
    a, ha = ref(x)
    b, hb = ours(x)
    if classification:
        a = ref.norm(ha[-1])  # MONAI replaces the output by its classification head
    torch.testing.assert_close(b, a, **TOL)
    assert len(hb) == len(ha) == 3
    for u, v in zip(hb, ha):
        torch.testing.assert_close(u, v, **TOL)


def test_vit3d_m3d_shape_and_training():
    vit = ViT3D(
        img_size=(32, 64, 64),
        patch_size=(4, 16, 16),
        hidden_size=32,
        mlp_dim=64,
        num_layers=1,
        num_heads=4,
        proj_type="perceptron",
    )
    assert vit.n_patches == 8 * 4 * 4
    x = torch.randn(1, 1, 32, 64, 64)
    out, hidden = vit(x)
    assert out.shape == (1, 128, 32)
    out.sum().backward()
    assert vit.blocks[0].attn.qkv.weight.grad is not None


def test_vit3d_gradcheck_float64():
    vit = ViT3D(
        img_size=(4, 8, 8),
        patch_size=(2, 4, 4),
        hidden_size=8,
        mlp_dim=16,
        num_layers=1,
        num_heads=2,
    ).double()
    x = torch.randn(1, 1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: vit(t)[0], (x,))


def test_lora_inside_the_rust_vit():
    from voxlm.adapters import LoraConfig, add_lora

    torch.manual_seed(0)
    vit = ViT3D(
        img_size=(4, 16, 16),
        patch_size=(2, 8, 8),
        hidden_size=16,
        mlp_dim=32,
        num_layers=2,
        num_heads=2,
    )
    x = torch.randn(2, 1, 4, 16, 16)
    base = vit(x)[0].detach()
    add_lora(vit, LoraConfig(r=2, lora_alpha=4, target_modules=["qkv"]))
    torch.testing.assert_close(vit(x)[0], base)  # B = 0
    with torch.no_grad():
        for n, p in vit.named_parameters():
            if "lora_B" in n:
                p.normal_()
    vit.rebind()
    out = vit(x)[0]
    assert not torch.allclose(out, base)
    out.sum().backward()
    assert all(p.grad is not None for n, p in vit.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("k,depth", [(14, 14), (16, 4), (4, 3)])
def test_inflation_properties(k, depth):
    w2 = torch.randn(8, 3, k, k, dtype=torch.float64)
    img = torch.randn(2, 3, 2 * k, 2 * k, dtype=torch.float64)
    vol = img.unsqueeze(2).repeat(1, 1, depth, 1, 1)
    y2 = F.conv2d(img, w2, stride=k)
    mean = F.conv3d(vol, inflate_patch_embedding(w2, depth, "mean"), stride=(depth, k, k)).squeeze(
        2
    )
    rep = F.conv3d(
        vol, inflate_patch_embedding(w2, depth, "replicate"), stride=(depth, k, k)
    ).squeeze(2)
    cen = F.conv3d(vol, inflate_patch_embedding(w2, depth, "center"), stride=(depth, k, k)).squeeze(
        2
    )
    torch.testing.assert_close(mean, y2)
    torch.testing.assert_close(rep, y2 * depth)
    torch.testing.assert_close(cen, y2)
    w3 = inflate_patch_embedding(w2, depth, "center")
    assert w3[:, :, depth // 2].equal(w2)
    torch.testing.assert_close(w3.abs().sum(), w2.abs().sum())


def test_position_embeddings_reuse_and_interpolation():
    pos = torch.randn(1, 257, 16)  # CLIP ViT-L/14 at 224: 1 + 16x16
    reused = reuse_pos_embedding(pos, 252)  # PICG: 6x6x7 tokens
    assert reused.shape == (1, 253, 16) and torch.equal(reused[:, 1:], pos[:, 1:253])
    up = interpolate_pos_embedding(pos, (16, 16), (4, 16, 16))
    assert up.shape == (1, 1 + 4 * 256, 16)
    torch.testing.assert_close(up[:, 1:257], pos[:, 1:])  # same grid: each depth slice equals 2D
    ref = (
        F.interpolate(
            pos[:, 1:].reshape(1, 16, 16, 16).permute(0, 3, 1, 2).unsqueeze(2),
            size=(3, 8, 8),
            mode="trilinear",
            align_corners=False,
        )
        .flatten(2)
        .transpose(1, 2)
    )
    torch.testing.assert_close(interpolate_pos_embedding(pos, (16, 16), (3, 8, 8))[:, 1:], ref)


# ---- transcriptions of the reference code ----------------------------------------------------


def perceiver_ref(m: PerceiverResampler, x):
    """RadFM/Flamingo helpers.py PerceiverResampler on one media item (b T F v d, T = F = 1)."""
    b = x.shape[0]
    lat = m.latents.unsqueeze(0).expand(b, -1, -1)
    for attn, ff in m.layers:
        xm, ll = attn.norm_media(x), attn.norm_latents(lat)
        h = m.heads
        q = attn.to_q(ll)
        k, v = attn.to_kv(torch.cat((xm, ll), dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        q = q * m.dim_head**-0.5
        sim = einsum("... i d, ... j d -> ... i j", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        out = einsum("... i j, ... j d -> ... i d", sim.softmax(dim=-1), v)
        lat = attn.to_out(out.transpose(1, 2).reshape(b, -1, h * m.dim_head)) + lat
        lat = ff(lat) + lat
    return m.norm(lat)


def spatial_pooling_ref(m: SpatialPoolingProjector, x):
    """M3D spatial_pooling_projector.py forward (pooling_type 'spatial')."""
    b, _, d = x.shape
    p1, p2, p3 = m.grid
    x = x.transpose(1, 2).reshape(b, d, p1, p2, p3)
    x = F.avg_pool3d(x, kernel_size=m.pooling_size, stride=m.pooling_size)
    x = x.flatten(2).transpose(1, 2)
    return m.projector(x)


def disease_ref(m: DiseaseAwareAttention, x):
    """Dia-LLaMA my_embedding_layer.py: softmax(prototype) weights, summed over tokens."""
    proto = F.softmax(m.prototype.unsqueeze(0).unsqueeze(-1), dim=-2)  # 1, L, v, 1
    return (x.unsqueeze(1) * proto).sum(dim=2)


def test_perceiver_equals_reference():
    torch.manual_seed(0)
    m = PerceiverResampler(dim=32, depth=2, dim_head=8, heads=4, num_latents=6)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n:
                p.normal_(1.0 if n.endswith("weight") else 0.0, 0.1)
    x = torch.randn(3, 20, 32)
    torch.testing.assert_close(m(x), perceiver_ref(m, x), **TOL)
    m(x).sum().backward()
    assert m.latents.grad is not None


def test_spatial_pooling_projector_equals_m3d():
    torch.manual_seed(0)
    m = SpatialPoolingProjector((32, 256, 256), (4, 16, 16), in_dim=24, out_dim=40)
    x = torch.randn(2, 2048, 24)
    out = m(x)
    assert out.shape == (2, 256, 40)
    torch.testing.assert_close(out, spatial_pooling_ref(m, x), **TOL)
    lin = SpatialPoolingProjector((8, 8, 8), (2, 2, 2), in_dim=8, out_dim=8, layer_type="linear")
    x = torch.randn(1, 64, 8)
    torch.testing.assert_close(lin(x), spatial_pooling_ref(lin, x), **TOL)


def test_mlp_projector_equals_llava_sequential():
    m = MLPProjector(24, 40)
    ref = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 40))
    ref.load_state_dict({k.replace("projector.", ""): v for k, v in m.state_dict().items()})
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(m(x), ref(x), **TOL)


def test_disease_aware_attention_equals_dia_llama():
    m = DiseaseAwareAttention(14, 32)
    x = torch.randn(2, 32, 16, requires_grad=True)
    torch.testing.assert_close(m(x), disease_ref(m, x), **TOL)
    m(x).sum().backward()
    assert m.prototype.grad is not None
    torch.testing.assert_close(m.attention().sum(-1), torch.ones(14))


def test_bad_vision_inputs():
    vit = ViT3D(
        img_size=(8, 32, 32),
        patch_size=(4, 16, 16),
        hidden_size=16,
        mlp_dim=32,
        num_layers=1,
        num_heads=2,
    )
    with pytest.raises(voxlm.ShapeError, match="expected spatial size"):
        vit(torch.randn(1, 1, 8, 30, 32))
    with pytest.raises(voxlm.ShapeError, match="expected 1 channels"):
        vit(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(voxlm.ConfigError, match="must divide"):
        ViT3D(
            img_size=(8, 30, 32),
            patch_size=(4, 16, 16),
            hidden_size=16,
            mlp_dim=32,
            num_layers=1,
            num_heads=2,
        )
    sd = vit.state_dict()
    sd.pop("blocks.0.attn.qkv.weight")
    with pytest.raises(RuntimeError, match="Missing key"):
        vit.load_state_dict(sd)
    with pytest.raises(voxlm.ConfigError, match="mode"):
        inflate_patch_embedding(torch.randn(2, 2, 3, 3), 2, "avg")
    with pytest.raises(voxlm.ShapeError, match="tokens for the grid"):
        SpatialPoolingProjector((8, 8, 8), (2, 2, 2), 4, 4)(torch.randn(1, 60, 4))
    with pytest.raises(voxlm.ShapeError, match="32 tokens"):
        DiseaseAwareAttention(3, 32)(torch.randn(1, 31, 4))
    with pytest.raises(voxlm.ShapeError, match="perceiver dim"):
        PerceiverResampler(dim=16, depth=1, dim_head=4, heads=2, num_latents=3)(
            torch.randn(1, 5, 8)
        )


def _tiny_clip(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
        num_channels=3,
    )
    ref = CLIPVisionModel(cfg).eval()
    ref.save_pretrained(tmp_path / "clip")
    return ref


def test_clip_vision_equals_transformers(tmp_path):
    from voxlm.vision import CLIPVision

    ref = _tiny_clip(tmp_path)
    ours = CLIPVision.from_pretrained(tmp_path / "clip").eval()
    x = torch.randn(2, 3, 28, 28)
    a = ref(x, output_hidden_states=True)
    last, pooled, hidden = ours(x)
    torch.testing.assert_close(last, a.last_hidden_state, **TOL)
    torch.testing.assert_close(pooled, a.pooler_output, **TOL)
    assert len(hidden) == len(a.hidden_states) == 3
    for u, v in zip(hidden, a.hidden_states):
        torch.testing.assert_close(u, v, **TOL)


def test_clip_hidden_state_runs_only_the_layers_it_needs(tmp_path):
    """``hidden_state(x, layer)`` (LLaVA's layer -2 stops before the last layer) equals
    transformers' ``hidden_states[layer]`` (TOL: float32 summation order) and voxlm's own full
    forward exactly (same ops; the in-place residual/quick-GELU path under no_grad included)."""
    from voxlm.vision import CLIPVision

    ref = _tiny_clip(tmp_path)
    ours = CLIPVision.from_pretrained(tmp_path / "clip").eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        want = ref(x, output_hidden_states=True).hidden_states
        full = ours(x)[2]
        for layer in (-3, -2, -1, 0, 1, 2):
            got = ours.hidden_state(x, layer)
            torch.testing.assert_close(got, want[layer], **TOL)
            torch.testing.assert_close(got, full[layer], atol=0, rtol=0)
    # with gradients (a tower that trains): the out-of-place path, same gradients as transformers
    xr = x.clone().requires_grad_(True)
    ours.hidden_state(xr, -2).square().sum().backward()
    xt = x.clone().requires_grad_(True)
    ref(xt, output_hidden_states=True).hidden_states[-2].square().sum().backward()
    torch.testing.assert_close(xr.grad, xt.grad, **TOL)
    p = ours.vision_model.encoder.layers[0].mlp.fc1.weight
    assert p.grad is not None and ours.vision_model.encoder.layers[1].mlp.fc1.weight.grad is None
    with pytest.raises(voxlm.ConfigError, match=r"3 hidden states \(-3..=2\), got -4"):
        ours.hidden_state(x, -4)
    with pytest.raises(voxlm.ConfigError, match="got 3"):
        ours.hidden_state(x, 3)
    with pytest.raises(voxlm.ConfigError, match="expected an int"):
        ours.hidden_state(x, 1.0)


def test_inflated_clip_on_a_depth_constant_volume_equals_2d(tmp_path):
    from voxlm.vision import CLIPVision

    ref = _tiny_clip(tmp_path)
    x2 = torch.randn(1, 3, 28, 28)
    a = ref(x2)
    clip3d = ViT3D.from_clip(tmp_path / "clip", depth=14, mode="mean")
    vol = x2.unsqueeze(2).repeat(1, 1, 14, 1, 1)  # one depth patch: same token grid as 2D
    last, pooled, _ = clip3d(vol)
    torch.testing.assert_close(last, a.last_hidden_state, **TOL)
    torch.testing.assert_close(pooled, a.pooler_output, **TOL)
    # PICG: replicate-inflated conv, fewer tokens than positions -> zero-padded to reuse them
    picg = CLIPVision.from_pretrained(tmp_path / "clip").inflate(7, "replicate")
    last, _, _ = picg(torch.randn(2, 3, 7, 14, 28))  # 1 x 1 x 2 = 2 tokens, padded to 4
    assert last.shape == (2, 5, 32)
    with pytest.raises(voxlm.ShapeError, match="exceed the 4 position embeddings"):
        picg(torch.randn(1, 3, 14, 28, 28))


def query_blocks_ref(m, feats):
    """LLaMA-Adapter llama_adapter.py forward_visual after the CLIP encoder (timm Blocks)."""
    f = m.clip_proj_norm(m.clip_proj(feats))
    q = m.visual_query.weight.unsqueeze(0).repeat(len(feats), 1, 1)
    x = torch.cat([q, f], dim=1)
    for blk in m.visual_blocks:
        b, n, d = x.shape
        h = m.heads
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q_, k_, v_ = qkv[0], qkv[1], qkv[2]
        att = ((q_ @ k_.transpose(-2, -1)) * (d // h) ** -0.5).softmax(dim=-1)
        x = x + blk.attn.proj((att @ v_).transpose(1, 2).reshape(b, n, d))
        x = x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))
    x = x[:, : m.visual_query.weight.shape[0]]
    return m.visual_proj_norm(m.visual_proj(x))


def test_adapter_query_blocks_equal_llama_adapter():
    from voxlm.vision import AdapterQueryBlocks

    torch.manual_seed(0)
    m = AdapterQueryBlocks(clip_dim=24, out_dim=40, dim=32, query_len=5, depth=2, heads=4)
    feats = torch.randn(2, 9, 24)
    torch.testing.assert_close(m(feats), query_blocks_ref(m, feats), **TOL)
    m(feats).sum().backward()
    assert m.visual_query.weight.grad is not None
    with pytest.raises(voxlm.ShapeError, match="clip_dim"):
        m(torch.randn(2, 9, 23))
    # the blocks' LayerNorm eps reaches the Rust forward (default 1e-5: timm 0.3-0.6 Block)
    assert m.visual_blocks[0].norm1.eps == 1e-5
    m6 = AdapterQueryBlocks(clip_dim=24, out_dim=40, dim=32, query_len=5, depth=2, heads=4, eps=0.5)
    m6.load_state_dict(m.state_dict())
    with torch.no_grad():
        got = m6(feats)
        torch.testing.assert_close(got, query_blocks_ref(m6, feats), **TOL)
        assert (got - m(feats)).abs().max() > 1e-3
    with pytest.raises(voxlm.ConfigError, match="eps: expected a number in \\(0, 1\\), got 0"):
        AdapterQueryBlocks(clip_dim=24, out_dim=40, dim=32, heads=4, eps=0)


def test_vit3d_gradient_checkpointing():
    torch.manual_seed(0)
    vit = ViT3D(
        img_size=(4, 16, 16),
        patch_size=(2, 8, 8),
        hidden_size=16,
        mlp_dim=32,
        num_layers=2,
        num_heads=2,
    ).train()
    x = torch.randn(2, 1, 4, 16, 16)
    vit(x)[0].square().sum().backward()
    g0 = {n: p.grad.clone() for n, p in vit.named_parameters()}
    vit.zero_grad()
    vit.gradient_checkpointing_enable()
    out, hidden = vit(x)
    assert len(hidden) == 2
    out.square().sum().backward()
    for n, p in vit.named_parameters():
        torch.testing.assert_close(p.grad, g0[n], rtol=1e-5, atol=1e-6, msg=n)
