"""PICG recipe (voxlm.recipes.picg) against a transcription of med-air/PICG2scoring:

* ``guideline_network/llama/llama_adapter_prostate.py``: ``LLaMA_adapter.__init__`` (conv1 ->
  Conv3d, ``weight[..., None].repeat(1, 1, 1, 1, 14)``), ``clip_encode_image`` (row-major
  tokens, ``[CLS, 0, 0, p0..p251, 0, 0]`` + positions, ln_post + proj on all tokens),
  ``forward_visual`` (timm ``Block``s) and ``forward`` (adapter prompts + visual queries in the
  last ``query_layer`` layers);
* ``guideline_network/llama/llama.py``: ``Attention`` (w_bias, per-head ``gate.tanh()``, Meta's
  complex RoPE on interleaved rows), ``FeedForward``, ``TransformerBlock``, ``RMSNorm``;
* ``guideline_network/data/dataset.py`` ``ProstateDataset`` transform; ``scoring_train/
  datasets/prostate_lesion_public_np_ins.py`` (teacher vector, ``__resize_data__``,
  ``__itensity_normalize_one_volume__``); ``scoring_train/main.py`` focal loss.

The reference's CLIP is open_clip's ``VisionTransformer`` (OpenAI's architecture and key names),
saved in a LLaMA-Adapter ``.pth`` (``{"model": state_dict}``) and loaded by voxlm's
``load_llama_adapter`` (Meta -> transformers row permutation of wq/wk included).

Tolerances: float32; 2e-5 on the CLIP tokens (libtorch SDPA vs ``nn.MultiheadAttention``);
the full forward's logits and final-norm hidden states 1e-5 (measured 7e-7 and 1e-6 on values up
to ~2: float32 summation order); the query blocks 1e-6 (measured 0: their LayerNorm eps is PICG's
timm 0.3.2 ``Block``'s 1e-5, and the ops are the same; it was 4e-6 with timm 1.x's 1e-6).
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import voxlm  # noqa: F401
from voxlm.clip_openai import load_openai_clip_vision
from voxlm.exceptions import ConfigError, ShapeError
from voxlm.llm import LlamaConfig, LlamaForCausalLM
from voxlm.recipes import picg as P
from voxlm.recipes.base import build_tokenizer

open_clip = pytest.importorskip("open_clip")
timm_vit = pytest.importorskip("timm.models.vision_transformer")

DIM, HEADS, LAYERS, QLAYER, QLEN, VOCAB = 64, 4, 3, 2, 3, 100
VDIM, VDEPTH, VHEADS = 32, 2, 4
CLIP_W, CLIP_OUT = 64, 48


def _visual(seed=0):
    torch.manual_seed(seed)
    v = open_clip.transformer.VisionTransformer(
        image_size=224,
        patch_size=14,
        width=CLIP_W,
        layers=2,
        heads=1,
        mlp_ratio=2.0,
        output_dim=CLIP_OUT,
        act_layer=open_clip.transformer.QuickGELU,
    )
    with torch.no_grad():
        for n, p in v.named_parameters():
            if "ln" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return v.eval()


# --------------------------------------------------------------------------------------------
# transcription of llama_adapter_prostate.py clip_encode_image


def picg_clip_encode_image(visual, x):
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = x.permute(0, 2, 1)
    p = torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
    x = torch.cat([p, p, x, p, p], dim=1)
    x = torch.cat(
        [
            visual.class_embedding.to(x.dtype)
            + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device),
            x,
        ],
        dim=1,
    )
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    if not getattr(visual.transformer, "batch_first", True):
        x = visual.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    else:
        x = visual.transformer(x)
    x = visual.ln_post(x[:, :, :])
    return x @ visual.proj


def picg_inflate(visual):
    conv1 = visual.conv1
    ps = conv1.kernel_size[0]
    visual.conv1 = nn.Conv3d(3, conv1.out_channels, kernel_size=ps, stride=ps, bias=False)
    visual.conv1.weight = nn.Parameter(conv1.weight[..., None].repeat(1, 1, 1, 1, ps))
    return visual


def test_padding_permutation_is_picgs():
    v = load_openai_clip_vision(_visual().state_dict(), num_heads=1)
    pv = P.PICGVision(v)
    perm = pv.permutation(252).tolist()
    # core order [CLS, p0..p251, pad x4] -> PICG positions [0, 3..254, 1, 2, 255, 256]
    assert perm == [0, *range(3, 255), 1, 2, 255, 256]


def test_clip3d_vs_picg_transcription():
    ref = picg_inflate(_visual())
    vis2d = load_openai_clip_vision(_visual().state_dict(), num_heads=1)
    pv = P.PICGVision(vis2d).eval()
    torch.testing.assert_close(
        pv.clip.vision_model.embeddings.patch_embedding.weight, ref.conv1.weight, atol=0, rtol=0
    )
    torch.manual_seed(1)
    x = torch.randn(2, 3, 84, 84, 98)
    with torch.no_grad():
        want = picg_clip_encode_image(ref, x)
        got = pv(x)
    assert got.shape == (2, 257, CLIP_OUT)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    # the zero-padding tokens (positions 1, 2, 255, 256) are content-free: equal for both samples
    # token order: a volume non-zero only in the first 14^3 block changes token p0 = position 3
    z = torch.zeros(1, 3, 84, 84, 98)
    z1 = z.clone()
    z1[..., :14, :14, :14] = 1.0
    with torch.no_grad():
        d = (pv(z1) - pv(z)).abs().sum(-1)[0]
        dref = (picg_clip_encode_image(ref, z1) - picg_clip_encode_image(ref, z)).abs().sum(-1)[0]
    torch.testing.assert_close(d, dref, atol=1e-4, rtol=1e-4)


def test_volume_that_does_not_tile_is_named():
    pv = P.PICGVision(load_openai_clip_vision(_visual().state_dict(), num_heads=1))
    with pytest.raises(ShapeError, match=r"\(84, 84, 97\) does not tile into 14x14x14"):
        pv(torch.zeros(1, 1, 84, 84, 97))
    with pytest.raises(ShapeError, match="more than CLIP's 256 position"):
        pv.check_size((98, 98, 98))


def test_volume_transform_vs_dataset_py():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, size=(30, 31, 12)).astype(np.float32)
    tf = torch.nn.Upsample(size=(84, 84, 98))
    want = (tf(torch.from_numpy(a)[None, None, ...]) / 255.0 - 0.48) / 0.27
    torch.testing.assert_close(P.picg_volume(a), want.squeeze(0), atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# transcription of llama/llama.py (training path) and LLaMA_adapter.forward


def precompute_freqs_cis(dim, end, theta=10000.0):
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, device=freqs.device)
    freqs = torch.outer(t, freqs).float()
    return torch.polar(torch.ones_like(freqs), freqs)


def apply_rotary_emb(xq, xk, freqs_cis):
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    shape = [d if i == 1 or i == xq_.ndim - 1 else 1 for i, d in enumerate(xq_.shape)]
    fc = freqs_cis.view(*shape)
    return torch.view_as_real(xq_ * fc).flatten(3).type_as(xq), torch.view_as_real(
        xk_ * fc
    ).flatten(3).type_as(xk)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_local_heads, self.head_dim = n_heads, dim // n_heads
        self.wq = nn.Linear(dim, dim, bias=True)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=True)
        self.gate = nn.Parameter(torch.zeros(1, n_heads, 1, 1))

    def forward(self, x, freqs_cis, mask, adapter=None):
        bsz, seqlen, _ = x.shape
        xq, xk, xv = self.wq(x), self.wk(x), self.wv(x)
        xq = xq.view(bsz, seqlen, self.n_local_heads, self.head_dim)
        xk = xk.view(bsz, seqlen, self.n_local_heads, self.head_dim)
        xv = xv.view(bsz, seqlen, self.n_local_heads, self.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis=freqs_cis)
        keys, values = xk, xv
        if adapter is not None:
            adapter_len = adapter.shape[1]
            adapter_v = (
                self.wv(adapter)
                .view(bsz, adapter_len, self.n_local_heads, self.head_dim)
                .transpose(1, 2)
            )
            adapter_k = (
                self.wk(adapter)
                .view(bsz, adapter_len, self.n_local_heads, self.head_dim)
                .transpose(1, 2)
            )
        xq = xq.transpose(1, 2)
        keys = keys.transpose(1, 2)
        values = values.transpose(1, 2)
        scores = torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(self.head_dim)
        scores = scores + mask
        scores = F.softmax(scores.float(), dim=-1).type_as(xq)
        output = torch.matmul(scores, values)
        if adapter is not None:
            adapter_scores = torch.matmul(xq, adapter_k.transpose(2, 3)) / math.sqrt(self.head_dim)
            adapter_scores = self.gate.tanh() * F.softmax(adapter_scores.float(), dim=-1).type_as(
                xq
            )
            output = output + torch.matmul(adapter_scores, adapter_v)
        output = output.transpose(1, 2).contiguous().view(bsz, seqlen, -1)
        return self.wo(output)


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, multiple_of):
        super().__init__()
        hidden_dim = int(2 * hidden_dim / 3)
        hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden_dim, bias=True)
        self.w2 = nn.Linear(hidden_dim, dim, bias=True)
        self.w3 = nn.Linear(dim, hidden_dim, bias=True)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.attention = Attention(dim, n_heads)
        self.feed_forward = FeedForward(dim, 4 * dim, 32)
        self.attention_norm = RMSNorm(dim)
        self.ffn_norm = RMSNorm(dim)

    def forward(self, x, freqs_cis, mask, prompt=None):
        h = x + self.attention.forward(self.attention_norm(x), freqs_cis, mask, prompt)
        return h + self.feed_forward.forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([TransformerBlock(DIM, HEADS) for _ in range(LAYERS)])
        self.norm = RMSNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB, bias=False)
        self.freqs_cis = precompute_freqs_cis(DIM // HEADS, 64)


class PicgRef(nn.Module):
    """LLaMA_adapter (llama_adapter_prostate.py) with a small CLIP and LLaMA."""

    def __init__(self):
        super().__init__()
        self.clip = nn.Module()
        self.clip.visual = picg_inflate(_visual(3))
        self.clip_proj = nn.Linear(CLIP_OUT, VDIM)
        self.clip_proj_norm = nn.LayerNorm(VDIM)
        self.query_len, self.query_layer = QLEN, QLAYER
        self.visual_query = nn.Embedding(QLEN, VDIM)
        # PICG pins csuhan/timm_0_3_2, whose Block defaults to nn.LayerNorm (eps 1e-5), as
        # voxlm's AdapterQueryBlocks; timm 1.x's default is eps 1e-6
        self.visual_blocks = nn.ModuleList(
            [
                timm_vit.Block(
                    VDIM,
                    VHEADS,
                    4.0,
                    qkv_bias=True,
                    norm_layer=functools.partial(nn.LayerNorm, eps=1e-5),
                )
                for _ in range(VDEPTH)
            ]
        )
        self.visual_proj = nn.Linear(VDIM, DIM)
        self.visual_proj_norm = nn.LayerNorm(DIM)
        self.adapter_query = nn.Embedding(QLEN * QLAYER, DIM)
        self.llama = Transformer()

    def forward_visual(self, imgs):
        clip_feats = picg_clip_encode_image(self.clip.visual, imgs)
        clip_feats = self.clip_proj_norm(self.clip_proj(clip_feats.float()))
        visual_query = self.visual_query.weight.unsqueeze(0).repeat(len(imgs), 1, 1)
        visual_query = torch.cat([visual_query, clip_feats], dim=1)
        for block in self.visual_blocks:
            visual_query = block(visual_query)
        visual_query = visual_query[:, : self.query_len, :]
        return self.visual_proj_norm(self.visual_proj(visual_query))

    def forward(self, tokens, imgs):
        imgs = torch.cat((imgs, imgs, imgs), dim=1)
        visual_query = self.forward_visual(imgs)
        _bsz, seqlen = tokens.shape
        h = self.llama.tok_embeddings(tokens)
        freqs_cis = self.llama.freqs_cis[:seqlen]
        mask = torch.full((1, 1, seqlen, seqlen), float("-inf"))
        mask = torch.triu(mask, diagonal=1).type_as(h)
        for layer in self.llama.layers[: -1 * self.query_layer]:
            h = layer(h, freqs_cis, mask)
        adapter = self.adapter_query.weight.reshape(self.query_layer, self.query_len, -1).unsqueeze(
            1
        )
        for i, layer in enumerate(self.llama.layers[-1 * self.query_layer :]):
            dynamic_adapter = adapter[i].repeat(_bsz, 1, 1) + visual_query
            h = layer(h, freqs_cis, mask, dynamic_adapter)
        h = self.llama.norm(h)
        return self.llama.output(h), h


def _ref_model():
    torch.manual_seed(5)
    ref = PicgRef().eval()
    with torch.no_grad():  # released checkpoints have trained (non-zero) gates, biases and norms
        for n, p in ref.named_parameters():
            if n.endswith("gate"):
                p.copy_(torch.randn_like(p))
            elif n.startswith("llama.") and (n.endswith(".bias") or "norm" in n):
                p.add_(torch.randn_like(p) * 0.1)
    return ref


def _voxlm_model(tokenizer=None, **kw):
    cfg = P.PICGConfig(
        v_embed_dim=VDIM,
        v_depth=VDEPTH,
        v_num_heads=VHEADS,
        query_len=QLEN,
        query_layer=QLAYER,
        clip_heads=1,
        max_words=1024,
        **kw,
    )
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=DIM,
            intermediate_size=192,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            rms_norm_eps=1e-5,
        )
    )
    clip = load_openai_clip_vision(_visual(9).state_dict(), num_heads=1)
    return P.PICG(cfg, llm, tokenizer or build_tokenizer("bundled:ctrg-bpe"), clip)


def test_forward_vs_picg_transcription_via_llama_adapter_pth(tmp_path):
    ref = _ref_model()
    path = tmp_path / "checkpoint-19.pth"
    torch.save({"model": ref.state_dict()}, path)
    model = _voxlm_model().eval()
    skipped = model.load_llama_adapter(path, strict=True)
    assert [k for k in skipped if "gate" in k] == [
        "llama.layers.0.attention.gate"
    ]  # layer without adapter
    torch.manual_seed(7)
    tokens = torch.randint(0, VOCAB, (2, 11))
    vol = torch.randn(2, 1, 84, 84, 98)
    with torch.no_grad():
        want_logits, want_h = ref(tokens, vol)
        out = model(input_ids=tokens, volume=vol, attention_mask=torch.ones_like(tokens))
        normed, _ = model.lm(tokens, None, model.visual_query(vol))
    torch.testing.assert_close(out.logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normed, want_h, atol=1e-5, rtol=1e-5)
    # the visual queries reach the logits per sample: different volumes, different outputs
    assert (out.logits[0] - out.logits[1]).abs().max() > 1e-3


def test_bias_7b_style_checkpoint_with_2d_conv_is_inflated():
    ref = _ref_model()
    sd = dict(ref.state_dict())
    conv2d = _visual(3).conv1.weight.detach()
    sd["clip.visual.conv1.weight"] = conv2d  # LLaMA-Adapter's BIAS-7B: OpenAI CLIP's 2D conv1
    sd["clip.token_embedding.weight"] = torch.zeros(4, 4)  # text tower keys are skipped
    model = _voxlm_model()
    skipped = model.load_llama_adapter(sd)
    assert "clip.token_embedding.weight" in skipped
    w = model.vision.clip.vision_model.embeddings.patch_embedding.weight
    torch.testing.assert_close(w, conv2d[..., None].repeat(1, 1, 1, 1, 14), atol=0, rtol=0)


def test_query_blocks_match_picg_timm_blocks():
    """timm 0.3.2's Block (PICG's pin: nn.LayerNorm eps 1e-5) vs voxlm's Rust query blocks, whose
    eps defaults to the same 1e-5 (AdapterQueryBlocks(eps=...)): 1e-6 (measured 0; it was 4e-6
    while voxlm ran timm 1.x's 1e-6)."""
    ref = _ref_model()
    model = _voxlm_model().eval()
    model.load_llama_adapter({"model": ref.state_dict()}["model"])
    assert model.queries.eps == 1e-5
    feats = torch.randn(2, 257, CLIP_OUT)
    with torch.no_grad():
        x = ref.clip_proj_norm(ref.clip_proj(feats))
        q = torch.cat([ref.visual_query.weight.unsqueeze(0).repeat(2, 1, 1), x], 1)
        for b in ref.visual_blocks:
            q = b(q)
        want = ref.visual_proj_norm(ref.visual_proj(q[:, :QLEN]))
        got = model.queries(feats)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_bias_tuning_and_stage_trainables():
    model = _voxlm_model()
    model.set_task("modality", True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "vision.clip.vision_model.embeddings.patch_embedding.weight" in names
    assert "llm.model.layers.0.self_attn.q_proj.bias" in names and "llm.model.norm.weight" in names
    assert not any("k_proj" in n or "v_proj" in n for n in names)
    assert all(n.endswith(".bias") or "norm" in n or "patch_embedding" in n for n in names)
    model.set_task("guideline", False)
    names2 = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names2 == names - {"vision.clip.vision_model.embeddings.patch_embedding.weight"}
    # zero-initialised gates and biases: the LLaMA starts as the base model's
    assert all(float(g.abs().sum()) == 0 for g in model.gates)


def test_adapter_pretrain_phase_and_dead_image_path_warning():
    """LLaMA-Adapter V2's get_trainable_params('pretrain'): gates, visual query blocks and
    adapter_query train, nothing of the LLM; with zero gates and no stage 0 the image cannot
    reach the LLM (gate.tanh() = 0), which stages() warns about."""
    model = _voxlm_model()
    model.set_task("guideline", False, phase="pretrain")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in names if n.startswith("gates.")} == {
        f"gates.{i}" for i in range(len(model.gates))
    }
    assert "adapter_query.weight" in names and any(n.startswith("queries.") for n in names)
    assert not any(n.startswith(("llm.", "vision.")) for n in names)
    with pytest.raises(ConfigError, match="expected 'finetune' or 'pretrain', got 'x'"):
        model.set_task("guideline", False, phase="x")
    from voxlm.train import TrainingArguments

    args = TrainingArguments(output_dir="unused", report_to=[])
    assert not model.image_reaches_llm()
    with pytest.warns(UserWarning, match="image never reaches the LLM"):
        names0 = [s.name for s in model.stages(args)]
    assert names0 == ["stage1_modality", "stage2_guideline"]
    model.cfg.adapter_pretrain_epochs = 1
    assert [s.name for s in model.stages(args)][0] == "stage0_adapter_pretrain"
    with torch.no_grad():
        model.gates[0].fill_(0.5)
    assert model.image_reaches_llm()


def test_prompts_are_alpaca():
    model = _voxlm_model()
    p = model.prompt("t2w", "guideline")
    assert p.startswith("Below is an instruction that describes a task, paired with an input")
    assert p.endswith(
        "### Input:\nRate the lesion with a score from {1, 2, 3, 4, 5}.\n\n### Response:"
    )
    assert model.guidelines["t2w"] in p
    assert model.guidelines["dwi_adc"] in model.prompt("adc", "guideline")
    assert model.prompt("adc", "modality") == model.prompt("t2w", "modality")
    assert model.answer({"sequence": "t2w"}, "modality") == "T2W."
    assert model.answer({"sequence": "dwi"}, "modality") == "non-T2W."
    feat = model.prompt("t2w", "feature")
    assert "### Input" not in feat and feat.endswith(
        "Describe the appearance of this MRI image.\n\n### Response:"
    )
    released = _voxlm_model(feature_prompt="released")
    assert (
        released.prompt("t2w", "feature")
        == released.prompt("adc", "feature")
        == P.format_prompt(
            released.guidelines["dwi_adc"] + "Describe the appearance of this MRI image."
        )
    )


def test_collator_masks_prompt_and_adds_eos():
    model = _voxlm_model()
    model.task = "guideline"
    col = P.PICGCollator(model)
    items = [
        {"id": "a", "sequence": "t2w", "volume": torch.zeros(1, 84, 84, 98), "pirads": 4},
        {"id": "b", "sequence": "adc", "volume": torch.zeros(1, 84, 84, 98), "pirads": 2},
    ]
    b = col(items)
    tok = model.tokenizer
    for i, it in enumerate(items):
        n = int(b["attention_mask"][i].sum())
        ids = b["input_ids"][i, :n].tolist()
        assert ids[-1] == tok.eos_token_id
        lab = b["labels"][i, :n]
        plen = len(tok.encode(model.prompt(it["sequence"], "guideline")))
        assert (lab[:plen] == -100).all() and (lab[plen:] != -100).all()
        assert tok.decode(ids[plen:]).strip() == str(it["pirads"])
    model.cfg.max_words = 200
    with pytest.raises(ConfigError, match="max_words 200: the answer would be cut off"):
        col(items)


def test_teacher_as_dataset_py():
    rng = torch.Generator().manual_seed(0)
    hs = [torch.randn(1, 9, 16, generator=rng) for _ in range(3)]
    # prostate_lesion_public_np_ins.py
    t = torch.cat([h[:, :-1, :] for h in hs], 0)
    t = t.permute(2, 0, 1).reshape(16, -1)
    want = nn.AdaptiveAvgPool1d(1)(t).squeeze()
    torch.testing.assert_close(P.PICG.teacher([h[0] for h in hs]), want, atol=1e-6, rtol=1e-6)


def test_scoring_input_vs_scipy_zoom():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    vols = [rng.normal(size=(37, 29, 9)) * 100 for _ in range(3)]
    got = P.scoring_input(vols, (20, 64, 48))
    for k, v in enumerate(vols):
        a = np.transpose(v, [2, 0, 1])
        a = ndimage.zoom(a, [20 / a.shape[0], 64 / a.shape[1], 48 / a.shape[2]], order=0)
        a = (a - a.mean()) / a.std()
        np.testing.assert_allclose(got[k], a.astype(np.float32), atol=1e-5)


def test_focal_loss_vs_main_py():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 1])
    alpha = torch.tensor([2.0, 2.0, 1.0, 1.0, 1.0])
    # MultiClassFocalLossWithAlpha.forward
    logpt = torch.gather(torch.log_softmax(logits, dim=1), 1, y.view(-1, 1)).view(-1)
    want = torch.mean(alpha[y] * (1 - torch.exp(logpt)) ** 2 * -logpt)
    from voxlm.losses import focal_loss, kl_distill

    torch.testing.assert_close(focal_loss(logits, y, alpha, 2.0), want, atol=1e-6, rtol=1e-6)
    # scoring_train/training.py train_epoch (kd_loss "KL", lines 48-58): KLDivLoss(batchmean) of
    # log_softmax(dl_output, 1) against softmax(inp, 1), T = 1, times --loss_weight; dl_output is
    # models/resnet.py's fc_f (Linear(pooled, 4096), line 164) of the pooled feature, inp the
    # teacher of prostate_lesion_public_np_ins.py (lines 97-109): voxlm's student_proj + teacher
    s, t = torch.randn(6, 32), torch.randn(6, 32)
    want_kl = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s, dim=1), F.softmax(t, dim=1))
    torch.testing.assert_close(kl_distill(s, t), want_kl, atol=1e-6, rtol=1e-6)


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown PICG settings"):
        P.PICGConfig.from_dict({"name": "picg", "blrr": 1})
    with pytest.raises(ConfigError, match="scoring_lr_schedule"):
        P.PICGConfig(scoring_lr_schedule="cosine")
    with pytest.raises(
        ConfigError, match="adapter_pretrain_params: expected 'llama_adapter' or 'gates', got 'x'"
    ):
        P.PICGConfig(adapter_pretrain_params="x")
    for field, value in (
        ("volume_size", 7),
        ("volume_size", [84, 84]),
        ("seeds", 3),
        ("focal_alpha", None),
        ("blr", "fast"),  # a numeric string such as "1e-3" (PyYAML) is read as a float
        ("guidelines", {"t2w": 1}),
        ("class_balanced", 1),
    ):
        with pytest.raises(
            ConfigError, match=rf"recipe\.{field}: expected .*got {re.escape(repr(value))}"
        ):
            P.PICGConfig.from_dict({field: value})


def test_data_section_errors_are_named(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    from voxlm.recipes import get_recipe

    model = get_recipe("picg").from_config(cfg["recipe"], cfg["model"])
    data = cfg["data"]
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['split_file'\].*'split_files'"):
        model.datasets({**data, "split_file": "x"})
    with pytest.raises(ConfigError, match=r"data\.synth: missing key\(s\) \['n'\]"):
        model.datasets({**data, "synth": {"kind": "prostate-mri"}})
    with pytest.raises(ConfigError, match=r"data\.synth: unknown key\(s\) \['size'\]"):
        model.datasets({**data, "synth": {**data["synth"], "size": 3}})
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------------------------
# end to end on the tiny config (synthetic PICG crops)


def _tiny_cfg(tmp_path):
    import pathlib

    import yaml

    cfg = yaml.safe_load(
        (pathlib.Path(__file__).resolve().parents[1] / "configs" / "picg-tiny.yaml").read_text()
    )
    cfg["data"]["root"] = str(tmp_path / "data")
    cfg["train"]["output_dir"] = str(tmp_path / "run")
    return cfg


def test_end_to_end_tiny(tmp_path):
    import csv
    import json

    from voxlm.recipes import get_recipe
    from voxlm.train import TrainingArguments, run_stages

    cfg = _tiny_cfg(tmp_path)
    cls = get_recipe("picg")
    model = cls.from_config(cfg["recipe"], cfg["model"])
    train, ev = model.datasets(cfg["data"])
    assert len(train) == 3 * len(train.records)
    # one split through the per-split builder (the CLI's --split test path)
    assert [r["id"] for r in model.dataset(cfg["data"], "validation").records] == [
        r["id"] for r in ev.records
    ]
    args = TrainingArguments.from_dict(cfg["train"]).replace(max_steps=2)
    before = model.vision.clip.vision_model.embeddings.patch_embedding.weight.detach().clone()
    bias0 = model.llm.model.layers[0].self_attn.q_proj.bias.detach().clone()
    out = run_stages(model, model.stages(args), train, ev, data_collator=model.collator())
    assert set(out) == {"stage0_adapter_pretrain", "stage1_modality", "stage2_guideline"}
    # stage 0 opened the zero-init gates: the image reaches the LLM, the teacher varies by case
    assert model.image_reaches_llm()
    f = model.guideline_features(train.records[:2])
    assert not torch.equal(*f.values())
    after = model.vision.clip.vision_model.embeddings.patch_embedding.weight
    assert not torch.equal(before, after)  # stage 1 trains the domain adapter
    assert not torch.equal(bias0, model.llm.model.layers[0].self_attn.q_proj.bias)  # bias tuning
    res = model.after_stages(train, ev, output_dir=tmp_path / "distill")
    feats = tmp_path / "distill" / "guideline_features.safetensors"
    assert feats.is_file()
    assert len(res["history"]) == 2 * cfg["recipe"]["scoring_epochs"]
    ev_json = json.loads((tmp_path / "distill" / "eval.json").read_text())
    assert set(ev_json["scoring"]["quadratic_kappa"]) == {"mean", "std", "per_seed"}
    assert len(ev_json["scoring"]["accuracy"]["per_seed"]) == 2
    rows = list(csv.DictReader(open(tmp_path / "distill" / "predictions.csv")))
    assert len(rows) == len(ev.records) and {"pred_seed0", "pred_seed1", "llm_t2w"} <= set(rows[0])
    # save / reload: identical outputs
    model.save_pretrained(tmp_path / "model")
    again = cls.from_pretrained(tmp_path / "model")
    model.eval()
    again.eval()
    b = model.collator()([train[0], train[1]])
    with torch.no_grad():
        torch.testing.assert_close(again(**b).logits, model(**b).logits, atol=0, rtol=0)
    np.testing.assert_array_equal(
        again.predict_scores(ev.records), model.predict_scores(ev.records)
    )


def test_scoring_net_feature_width_is_checked(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    cfg["recipe"]["student_proj"] = "none"
    from voxlm.recipes import get_recipe

    model = get_recipe("picg").from_config(cfg["recipe"], cfg["model"])
    train, _ = model.datasets(cfg["data"])
    feats = {str(r["id"]): torch.zeros(64) for r in train.records}
    with pytest.raises(ShapeError, match="feature width 16 does not match the teacher's width 64"):
        model.distill(train, scoring_net=P.SmallConv3d(width=4), features=feats, epochs=1)
    with pytest.raises(ConfigError, match=r"return \(logits, feature\)"):
        model.distill(
            train,
            scoring_net=nn.Sequential(nn.Flatten(), nn.LazyLinear(5)),
            features=feats,
            epochs=1,
        )


def test_picai_layout_reads(tmp_path):
    pytest.importorskip("SimpleITK")
    cfg = _tiny_cfg(tmp_path)
    from voxlm.recipes import get_recipe

    model = get_recipe("picg").from_config(cfg["recipe"], cfg["model"])
    data = {
        "format": "picai",
        "root": str(tmp_path / "picai"),
        "synth": {"kind": "prostate-mri", "n": 3, "layout": "picai"},
        "eval_split": None,
    }
    train, ev = model.datasets(data)
    assert ev is None
    item = train[2]
    assert item["sequence"] == "t2w" and tuple(item["volume"].shape) == (1, 28, 28, 42)
    x = P.scoring_input(
        [P._load_array(train.records[0]["sequences"][s]) for s in P.SEQUENCES], (8, 32, 32)
    )
    assert x.shape == (3, 8, 32, 32) and np.allclose(x.reshape(3, -1).mean(1), 0, atol=1e-5)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "monai_resnet", "depth": 10},
        {"name": "torchvision_r3d_18"},
        {"name": "small_conv3d", "width": 4},
    ],
)
def test_example_scoring_networks(spec):
    pytest.importorskip("monai" if spec["name"].startswith("monai") else "torchvision")
    net = P.build_scoring_net(spec)
    model = _voxlm_model()
    proj = model._check_net(net, torch.randn(2, 3, 8, 32, 32), teacher_dim=64)
    logits, feat = net(torch.randn(2, 3, 8, 32, 32))
    assert logits.shape == (2, 5) and proj(feat).shape == (2, 64)


def test_gradient_checkpointing_gives_the_same_gradients():
    ref = _ref_model()
    model = _voxlm_model()  # 3 layers: 1 through the Rust core, 2 adapted
    model.load_llama_adapter(ref.state_dict())
    model.set_task("modality", True)
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (2, 9))
    vol = torch.randn(2, 1, 84, 84, 98)
    grads = []
    for on in (False, True):
        model.llm.gradient_checkpointing = on
        model.zero_grad()
        model(input_ids=tokens, volume=vol, labels=tokens).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and "llm.model.layers.0.self_attn.q_proj.bias" in grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-6, rtol=1e-5)


def _spread(x: torch.Tensor) -> float:
    """Between-case std / mean |value| of ``x [N, ...]`` (0 for a constant)."""
    x = x.reshape(x.shape[0], -1).double()
    return float(x.std(0).mean() / x.abs().mean())


def test_teacher_varies_between_cases_at_the_tiny_config(tmp_path):
    """The guideline features are the network's output for each case's images: after stage 0
    (PICG's finetune stages keep the gates frozen, ``llama_adapter_prostate.py``
    ``get_trainable_params``) different images give teacher vectors that differ far beyond float
    noise, and the same case gives the same vector whatever else is in the batch. Stage 0 with
    ``adapter_pretrain_params: gates`` trains the gates and ``adapter_query`` only, so the visual
    queries keep their between-case spread (the full LLaMA-Adapter V2 pretrain set collapsed
    them to one vector at the fidelity size: 0.15 -> 4e-4)."""
    from voxlm.recipes import get_recipe
    from voxlm.train import TrainingArguments, run_stages

    cfg = _tiny_cfg(tmp_path)
    assert cfg["recipe"]["adapter_pretrain_params"] == "gates"
    model = get_recipe("picg").from_config(cfg["recipe"], cfg["model"])
    train, _ = model.datasets(cfg["data"])
    recs = train.records[:4]
    vols = torch.stack([train[3 * i + 2]["volume"] for i in range(len(recs))])  # t2w items
    assert [train[3 * i + 2]["sequence"] for i in range(len(recs))] == ["t2w"] * len(recs)
    with torch.no_grad():
        vq0 = model.visual_query(vols)
    assert _spread(vq0) > 0.05
    # no stage 0 yet: the gates are zero, every case gives the same teacher
    f0 = torch.stack(list(model.guideline_features(recs).values()))
    assert _spread(f0) == 0.0
    stage0 = model.stages(TrainingArguments.from_dict(cfg["train"]).replace(max_steps=3))[0]
    assert stage0.name == "stage0_adapter_pretrain"
    q_before = {n: p.detach().clone() for n, p in model.queries.named_parameters()}
    run_stages(model, [stage0], train, data_collator=model.collator())
    assert all(torch.equal(p, q_before[n]) for n, p in model.queries.named_parameters())
    assert model.image_reaches_llm()
    with torch.no_grad():
        torch.testing.assert_close(model.visual_query(vols), vq0, atol=0, rtol=0)
    f = torch.stack(list(model.guideline_features(recs).values()))
    spread = _spread(f)
    # float noise: the same case alone vs in a batch of three
    alone = model.guideline_features(recs[:1], batch_size=1)[str(recs[0]["id"])]
    noise = float((alone - f[0]).abs().max() / f[0].abs().mean())
    assert noise < 1e-5 and spread > 100 * max(noise, 1e-7), (spread, noise)
