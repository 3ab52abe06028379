"""CLIP vision towers in OpenAI's / open_clip's key layout (voxlm.clip_openai) against open_clip
(``open_clip/transformer.py`` ``VisionTransformer``, ``open_clip/model.py`` ``CLIP``) built with
random weights and saved as open_clip saves checkpoints (``torch.save(state_dict)`` and
safetensors), loaded through ``voxlm.clip_openai.load_openai_clip_vision``.

Tolerance: float32, 1e-5 absolute on unit-scale features — voxlm runs the tower in libtorch
(SDPA attention, separate q/k/v matmuls) where open_clip runs ``nn.MultiheadAttention`` with a
fused in-projection; the sums differ only in order."""

from __future__ import annotations

import pytest
import torch

import voxlm  # noqa: F401  (imports torch first, then the extension)
from voxlm.clip_openai import detect_layout, hf_to_openai, load_openai_clip_vision
from voxlm.exceptions import CheckpointError

open_clip = pytest.importorskip("open_clip")


def _open_clip_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=24,
        vision_cfg=dict(image_size=42, patch_size=14, width=64, layers=2, head_width=32),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
        quick_gelu=True,
    ).eval()
    with torch.no_grad():  # LayerNorms away from identity so their mapping is exercised
        for n, p in model.visual.named_parameters():
            if "ln" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_image_features_vs_open_clip(tmp_path, fmt):
    ref = _open_clip_model()
    sd = ref.state_dict()
    if fmt == "pt":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    vis = load_openai_clip_vision(path, num_heads=2).eval()
    assert vis.config["num_hidden_layers"] == 2 and vis.config["image_size"] == 42
    x = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        want = ref.encode_image(x)
        got = vis.image_embeds(x)
        ref.visual.output_tokens = True
        _, want_tok = ref.visual(x)  # ln_post on every token, not projected
        want_tok = want_tok @ ref.visual.proj
        last, _, _ = vis(x)
        got_tok = vis.project_tokens(last)[:, 1:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_tok, want_tok, atol=1e-5, rtol=1e-5)


def test_bare_visual_state_dict_and_round_trip():
    ref = _open_clip_model(1)
    bare = ref.visual.state_dict()
    assert detect_layout(bare) == "openai"
    vis = load_openai_clip_vision(bare, num_heads=2)
    back = hf_to_openai(vis, prefix="")
    assert set(back) == set(bare)
    for k, v in bare.items():
        torch.testing.assert_close(back[k], v, atol=0, rtol=0)


def test_transformers_layout_loads_too():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        projection_dim=16,
    )
    torch.manual_seed(2)
    ref = transformers.CLIPVisionModelWithProjection(cfg).eval()
    vis = load_openai_clip_vision(ref.state_dict(), num_heads=2).eval()
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(
            vis.image_embeds(x), ref(pixel_values=x).image_embeds, atol=1e-5, rtol=1e-5
        )


def test_neither_layout_names_missing_keys():
    sd = {"encoder.weight": torch.zeros(2, 2), "visual.conv1.weight": torch.zeros(4, 3, 14, 14)}
    with pytest.raises(CheckpointError) as e:
        load_openai_clip_vision(sd)
    msg = str(e.value)
    assert "visual.class_embedding" in msg and "visual.positional_embedding" in msg
    assert "vision_model.embeddings.class_embedding" in msg


def test_missing_block_tensor_is_named():
    bare = _open_clip_model(3).visual.state_dict()
    del bare["transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(CheckpointError, match=r"transformer\.resblocks\.1\.mlp\.c_fc\.bias"):
        load_openai_clip_vision(bare)
