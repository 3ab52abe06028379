"""No public call of voxlm panics, aborts or shows a C++ backtrace.

A table of degenerate inputs (0 and negative sizes, heads that do not divide the width, 0-d / 1-d /
empty tensors, wrong dtypes and devices — the meta device stands in for a foreign device on a
CPU-only machine —, NaN arguments, corrupt files) goes through every public class and function of
``voxlm._core`` and of the Python wrappers built on it (vision, nn, llm, adapters, ops, losses,
metrics, volume). Each case must raise a :class:`voxlm.exceptions.VoxlmError` subclass whose
message carries no C++ frame list. ``pyo3_runtime.PanicException`` derives from BaseException, so
the check catches BaseException to see it. ``test_every_public_name_has_a_case`` keeps the table
complete: a new public name without a case fails it.
"""

from __future__ import annotations

import inspect
import json
import threading

import numpy as np
import pytest
import torch
from torch import nn

import voxlm
from voxlm import _core, adapters, llm, losses, metrics, ops, transforms, vision
from voxlm import nn as vnn
from voxlm.exceptions import VoxlmError

from ._fixtures import TINY_LM

TRACE_MARKERS = ("frame #", "Exception raised from", "panicked at")

F = torch.float32
S0 = torch.tensor(1.0)  # 0-d
V1 = torch.ones(3)  # 1-d
EMPTY = torch.empty(0)
META = torch.empty(2, 4, device="meta")
NAN = float("nan")


def expect_voxlm_error(fn) -> VoxlmError:
    try:
        fn()
    except VoxlmError as e:
        msg = str(e)
        assert not any(m in msg for m in TRACE_MARKERS), f"backtrace in the message: {msg[:400]}"
        assert msg.strip(), "empty error message"
        return e
    except BaseException as e:  # noqa: BLE001 - PanicException is a BaseException
        pytest.fail(
            f"{type(e).__module__}.{type(e).__qualname__} instead of a VoxlmError: {str(e)[:400]}"
        )
    pytest.fail("no error raised")


# ---------------------------------------------------------------------------------------------
# tiny fixtures (built once)

torch.manual_seed(0)
VIT = vision.ViT3D(
    in_channels=1,
    img_size=(4, 8, 8),
    patch_size=(2, 4, 4),
    hidden_size=8,
    mlp_dim=16,
    num_layers=1,
    num_heads=2,
)
CLIP = vision.CLIPVision(
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=8,
    patch_size=4,
    num_channels=3,
)
PERC = vision.PerceiverResampler(dim=8, depth=1, dim_head=4, heads=2, num_latents=3, ff_mult=2)
QB = vision.AdapterQueryBlocks(clip_dim=6, out_dim=5, dim=8, query_len=2, depth=1, heads=2)
LCFG = llm.LlamaConfig(**TINY_LM)
LM = llm.LlamaForCausalLM(LCFG)
LORA = vnn.LoraLinear(4, 3, r=2)
IDS = torch.tensor([[1, 2, 3]])


def vit_params() -> dict[str, torch.Tensor]:
    return dict(VIT.named_parameters())


def llama_core(**kw):
    params = {k: v for k, v in LM.named_parameters()}
    return _core.LlamaCore(LCFG.to_json(), params, **kw)


def with_shape(
    params: dict[str, torch.Tensor], name: str, t: torch.Tensor
) -> dict[str, torch.Tensor]:
    out = dict(params)
    out[name] = t
    return out


def without(params: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in params.items() if k != name}


def nifti_file(tmp, data: bytes) -> str:
    p = tmp / "x.nii"
    p.write_bytes(data)
    return str(p)


# ---------------------------------------------------------------------------------------------
# the table: public name -> degenerate calls (each must raise a VoxlmError)

CASES: dict[str, list] = {
    # -- _core: ops
    "lora_linear": [
        lambda: _core.lora_linear(S0, torch.ones(3, 4)),
        lambda: _core.lora_linear(torch.ones(2, 4), V1),
        lambda: _core.lora_linear(torch.ones(2, 5), torch.ones(3, 4)),
        lambda: _core.lora_linear(torch.ones(2, 4, dtype=torch.int64), torch.ones(3, 4)),
        lambda: _core.lora_linear(META, torch.ones(3, 4)),
        lambda: _core.lora_linear(torch.ones(2, 4), torch.ones(3, 4), lora_a=torch.ones(2, 4)),
        lambda: _core.lora_linear(
            torch.ones(2, 4),
            torch.ones(3, 4),
            None,
            torch.ones(2, 4),
            torch.ones(3, 2),
            dropout=NAN,
        ),
        lambda: _core.lora_linear(
            torch.ones(2, 4),
            torch.ones(3, 4),
            None,
            torch.ones(2, 4),
            torch.ones(3, 2),
            scaling=NAN,
        ),
        lambda: _core.lora_linear([1.0], torch.ones(3, 4)),
    ],
    "LoraLinearCore": [
        lambda: _core.LoraLinearCore(S0),
        lambda: _core.LoraLinearCore(torch.ones(3, 4), bias=torch.ones(2)),
        lambda: _core.LoraLinearCore(torch.ones(3, 4)).forward(S0),
        lambda: _core.LoraLinearCore(torch.ones(3, 4)).forward(
            torch.ones(2, 4, dtype=torch.float64)
        ),
        lambda: _core.LoraLinearCore(torch.ones(3, 4)).bind(EMPTY),
    ],
    # -- _core: volume
    "scale_intensity_range": [
        lambda: _core.scale_intensity_range(np.ones((2, 2), np.float32), NAN, 1.0),
        lambda: _core.scale_intensity_range(np.ones((2, 2), np.float32), 0.0, float("inf")),
        lambda: _core.scale_intensity_range([1.0, 2.0], 0.0, 1.0),
    ],
    "load_nifti": [
        lambda: _core.load_nifti("/nonexistent/x.nii"),
        "corrupt_nifti",
    ],
    "save_nifti": [
        lambda: _core.save_nifti(
            "/nonexistent/dir/x.nii",
            np.ones((2, 2, 2), np.float32),
            np.eye(4).tolist(),
            [1.0, 1.0, 1.0],
        ),
    ],
    "resize": [
        lambda: _core.resize(np.ones((1, 2, 2, 2), np.float32), [0, 2, 2], "trilinear"),
        lambda: _core.resize(np.ones((1, 2, 2, 2), np.float32), [2, 2, 2], "cubic-ish"),
        lambda: _core.resize(np.ones(3, np.float32), [2, 2, 2], "trilinear"),
    ],
    "load_batch": [
        lambda: _core.load_batch(["/nonexistent/x.nii"]),
        "nan_window_fused",
    ],
    "affine_resample": [
        lambda: _core.affine_resample(
            np.ones((1, 2, 2, 2), np.float32), np.eye(4)[:3].tolist(), [2, 2, 2], "x"
        ),
        lambda: _core.affine_resample(
            np.ones(3, np.float32), np.eye(4).tolist(), [2, 2, 2], "trilinear"
        ),
    ],
    # -- _core: volume geometry (src/volume/geometry.rs)
    "io_orientation": [
        lambda: _core.io_orientation([[1.0, 0.0], [0.0]]),
        lambda: _core.io_orientation([]),
        lambda: _core.io_orientation([[NAN, 0.0], [0.0, 1.0]]),
    ],
    "orientation_transform": [
        lambda: _core.orientation_transform(np.eye(4).tolist(), [2, 2, 2], "RAX"),
        lambda: _core.orientation_transform(np.eye(4).tolist(), [2, 2], "RAS"),
        lambda: _core.orientation_transform(np.zeros((4, 4)).tolist(), [2, 2, 2], "RAS"),
        lambda: _core.orientation_transform(np.eye(3).tolist(), [2, 2], "RA"),
    ],
    "spacing_grid": [
        lambda: _core.spacing_grid([2, 2, 2], np.eye(4).tolist(), [0.0, 1.0, 1.0]),
        lambda: _core.spacing_grid([2, 2, 2], np.zeros((4, 4)).tolist(), [1.0, 1.0, 1.0]),
        lambda: _core.spacing_grid([0, 2, 2], np.eye(4).tolist(), [1.0, 1.0, 1.0]),
        lambda: _core.spacing_grid([2, 2, 2], np.eye(4).tolist(), [1e-300, 1.0, 1.0]),
    ],
    "match_grid": [
        lambda: _core.match_grid(
            [2, 2, 2], np.zeros((4, 4)).tolist(), [2, 2, 2], np.eye(4).tolist()
        ),
        lambda: _core.match_grid([2, 2, 2], np.eye(3).tolist(), [2, 2, 2], np.eye(4).tolist()),
    ],
    # -- _core: image formats (formats' functions; sizes typed unsigned there are not probed)
    "sniff_format": [lambda: _core.sniff_format("/nonexistent/x")],
    "load_image": [
        lambda: _core.load_image("/nonexistent/x.nii.gz"),
        lambda: _core.load_image("/nonexistent/x.nii.gz", "int3"),
    ],
    "load_image_2d": [lambda: _core.load_image_2d("/nonexistent/x.png")],
    "resize_bicubic": [
        lambda: _core.resize_bicubic(np.ones((4, 4, 3), np.uint8), 0, 4),
        lambda: _core.resize_bicubic(np.ones(4, np.uint8), 2, 2),
        lambda: _core.resize_bicubic(np.ones((4, 4, 3), np.float32), 2, 2),
    ],
    "expand2square": [
        lambda: _core.expand2square(np.ones(4, np.uint8), [0, 0, 0]),
        lambda: _core.expand2square(np.ones((4, 2, 3), np.uint8), [0]),
    ],
    "clip_preprocess": [
        lambda: _core.clip_preprocess(
            np.ones(4, np.uint8), 2, (2, 2), 1 / 255, [0.5] * 3, [0.5] * 3
        ),
        lambda: _core.clip_preprocess(
            np.ones((4, 4, 3), np.uint8), 2, (2, 2), NAN, [0.5] * 3, [0.5] * 3
        ),
        lambda: _core.clip_preprocess(
            np.ones((4, 4, 3), np.uint8), 2, (2, 2), 1 / 255, [0.5] * 3, [0.0] * 3
        ),
    ],
    # -- _core: losses and metrics
    "focal_loss": [
        lambda: _core.focal_loss(S0, torch.tensor([0])),
        lambda: _core.focal_loss(torch.ones(2, 5), torch.ones(2)),
        lambda: _core.focal_loss(torch.ones(2, 5), torch.tensor([0, 7])),
        lambda: _core.focal_loss(torch.ones(2, 5), torch.tensor([0, 1]), alpha=torch.ones(3)),
        lambda: _core.focal_loss(torch.ones(2, 5), torch.tensor([0, 1]), gamma=NAN),
        lambda: _core.focal_loss(torch.ones(2, 5), torch.tensor([0, 1]), reduction="max"),
    ],
    "kl_distill": [
        lambda: _core.kl_distill(torch.ones(2, 4), torch.ones(2, 5)),
        lambda: _core.kl_distill(S0, S0),
        lambda: _core.kl_distill(torch.ones(2, 4), torch.ones(2, 4), temperature=0.0),
        lambda: _core.kl_distill(torch.ones(2, 4), torch.ones(2, 4), temperature=NAN),
    ],
    "lm_loss": [
        lambda: _core.lm_loss(torch.ones(2, 5), torch.zeros(2, dtype=torch.long)),
        lambda: _core.lm_loss(torch.ones(1, 3, 5), torch.zeros(1, 4, dtype=torch.long)),
        lambda: _core.lm_loss(torch.ones(1, 3, 5), torch.full((1, 3), 9)),
    ],
    "prototype_similarities": [
        lambda: _core.prototype_similarities(
            S0, torch.ones(4, 8), None, torch.ones(3, 4), torch.ones(3, 4), torch.tensor(0.07)
        ),
        lambda: _core.prototype_similarities(
            torch.ones(2, 3, 8),
            torch.ones(4, 8),
            None,
            torch.ones(2, 4),
            torch.ones(3, 4),
            torch.tensor(0.07),
        ),
    ],
    "prototype_loss": [
        lambda: _core.prototype_loss(
            torch.ones(2, 3, 8),
            torch.ones(2, 4),
            torch.ones(4, 8),
            None,
            torch.ones(3, 4),
            torch.ones(3, 4),
            torch.tensor(0.07),
        ),
        lambda: _core.prototype_loss(
            EMPTY,
            EMPTY,
            torch.ones(4, 8),
            None,
            torch.ones(3, 4),
            torch.ones(3, 4),
            torch.tensor(0.07),
        ),
    ],
    "report_scores": [
        lambda: _core.report_scores([["a b"]], ["a", "b"]),
    ],
    "meteor_score": [
        lambda: _core.meteor_score([["a b"]], ["a", "b"], _meteor_jar()),  # length mismatch
        lambda: _core.meteor_score([["a b"]], ["a"], "/nonexistent/meteor-1.5.jar"),
        lambda: _core.meteor_score([["a b"]], ["a"], __file__),  # not a zip
    ],
    "meteor_stats": [
        lambda: _core.meteor_stats([[]], ["a"], _meteor_jar()),  # no reference
        lambda: _core.meteor_stats([["a b"]], ["a"], "/nonexistent/meteor-1.5.jar"),
    ],
    "classification_scores": [
        lambda: _core.classification_scores(np.array([0, 1]), np.array([0]), [0, 1]),
        lambda: _core.classification_scores(np.array([0, 1]), np.array([0, 1]), []),
        lambda: _core.classification_scores(np.array([0.5, 1.0]), np.array([0, 1]), [0, 1]),
    ],
    "multilabel_scores": [
        lambda: _core.multilabel_scores(np.array([0, 1]), np.array([[0, 1]])),
        lambda: _core.multilabel_scores(
            np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64), convention="x"
        ),
    ],
    # -- _core: LLM
    "parse_llama_config": [
        lambda: _core.parse_llama_config(""),
        lambda: _core.parse_llama_config("[1, 2]"),
        lambda: _core.parse_llama_config(json.dumps({**LCFG.to_dict(), "hidden_size": -16})),
        lambda: _core.parse_llama_config(json.dumps({**LCFG.to_dict(), "num_attention_heads": 0})),
        lambda: _core.parse_llama_config(json.dumps({**LCFG.to_dict(), "num_key_value_heads": 3})),
        lambda: _core.parse_llama_config(json.dumps({**LCFG.to_dict(), "vocab_size": 10**12})),
        lambda: _core.parse_llama_config(
            json.dumps({**LCFG.to_dict(), "num_hidden_layers": 10**9})
        ),
        lambda: _core.parse_llama_config(json.dumps({**LCFG.to_dict(), "rms_norm_eps": NAN})),
        lambda: _core.parse_llama_config(
            json.dumps({k: v for k, v in LCFG.to_dict().items() if k != "vocab_size"})
        ),
    ],
    "llama_rope_inv_freq": [
        lambda: _core.llama_rope_inv_freq("{"),
    ],
    "checkpoint_files": [
        lambda: _core.checkpoint_files("/nonexistent/ckpt"),
        "hostile_index",
    ],
    "load_safetensors": [
        lambda: _core.load_safetensors("/nonexistent/ckpt"),
        "truncated_safetensors",
        "header_past_end",
        "bad_dtype_arg",
        lambda: _core.load_safetensors("/nonexistent", None, "meta"),
        lambda: _core.load_safetensors("/nonexistent", None, "cuda:99"),
    ],
    "save_safetensors": [
        lambda: _core.save_safetensors({"a": 1.0}, "/tmp/x.safetensors"),
        lambda: _core.save_safetensors({"a": torch.ones(2)}, "/nonexistent/dir/x.safetensors"),
    ],
    "LlamaCore": [
        lambda: _core.LlamaCore("{}", {}),
        lambda: _core.LlamaCore(LCFG.to_json(), {}),
        lambda: llama_core().__class__(
            LCFG.to_json(), with_shape(dict(LM.named_parameters()), "model.norm.weight", S0)
        ),
        lambda: _core.LlamaCore(
            LCFG.to_json(),
            with_shape(
                dict(LM.named_parameters()),
                "model.layers.0.self_attn.q_proj.weight",
                torch.ones(16, 16, dtype=torch.float64),
            ),
        ),
        lambda: _core.LlamaCore(
            LCFG.to_json(), {**dict(LM.named_parameters()), "extra.weight": V1}
        ),
        lambda: _core.LlamaCore(
            LCFG.to_json(),
            dict(LM.named_parameters()),
            {"model.layers.0.self_attn.q_proj": (NAN, 0.0)},
        ),
        lambda: _core.LlamaCore(
            LCFG.to_json(),
            dict(LM.named_parameters()),
            {"model.layers.0.self_attn.q_proj": (1.0, 0.0)},
        ),
        lambda: llama_core().forward(S0),
        lambda: llama_core().forward(torch.ones(1, 3)),
        lambda: llama_core().forward(torch.tensor([[1, 99]])),
        lambda: llama_core().forward(torch.tensor([[-1, 2]])),
        lambda: llama_core().forward(torch.zeros(1, 0, dtype=torch.long)),
        lambda: llama_core().forward(None, torch.ones(1, 2, 15)),
        lambda: llama_core().forward(None, torch.ones(1, 2, 16, dtype=torch.float64)),
        lambda: llama_core().forward(None, torch.empty(1, 2, 16, device="meta")),
        lambda: llama_core().forward(IDS, attention_mask=torch.ones(2, 3)),
        lambda: llama_core().forward(IDS, position_ids=V1),
        lambda: llama_core().forward(torch.ones(1, 40, dtype=torch.long)),
        lambda: llama_core().forward(),
        lambda: llama_core().embed(V1.long()),
        lambda: llama_core().prepare(S0),
        lambda: llama_core().prepare(torch.ones(1, 3, 16), attention_mask=S0),
        lambda: llama_core().layer(0, S0, S0, S0),
        lambda: llama_core().layer(
            -1, torch.ones(1, 3, 16), *llama_core().prepare(torch.ones(1, 3, 16))[:2]
        ),
        lambda: llama_core().layer(
            5, torch.ones(1, 3, 16), *llama_core().prepare(torch.ones(1, 3, 16))[:2]
        ),
        lambda: llama_core().layer(0, torch.ones(1, 3, 16), V1, V1),
        lambda: llama_core().layer(
            0,
            torch.ones(1, 3, 16),
            *llama_core().prepare(torch.ones(1, 3, 16))[:2],
            mask=torch.ones(1, 1, 3, 3),
        ),
        lambda: llama_core().head(S0),
        lambda: llama_core().head(torch.ones(1, 3, 7)),
        lambda: llama_core().generate(IDS, max_new_tokens=0),
        lambda: llama_core().generate(IDS, max_new_tokens=-3),
        lambda: llama_core().generate(IDS, temperature=NAN, do_sample=True),
        lambda: llama_core().generate(IDS, num_beams=0),
        lambda: llama_core().generate(IDS, num_beams=10**6),
        lambda: llama_core().generate(IDS, top_p=NAN),
        lambda: llama_core().generate(IDS, eos_token_ids=[-1]),
        lambda: llama_core().generate(IDS, num_beams=2, callback=lambda t: True),
        lambda: llama_core().generate(S0),
        lambda: llama_core().generate(IDS, max_new_tokens=100),
    ],
    "TokenizerCore": [
        lambda: _core.TokenizerCore("/nonexistent/tokenizer.json"),
        "corrupt_tokenizer",
        "tokenizer_bad_ids",
    ],
    # -- _core: vision
    "inflate_patch_embedding": [
        lambda: _core.inflate_patch_embedding(S0, 2, "mean"),
        lambda: _core.inflate_patch_embedding(torch.ones(2, 3, 4, 4), 0, "mean"),
        lambda: _core.inflate_patch_embedding(torch.ones(2, 3, 4, 4), -2, "mean"),
        lambda: _core.inflate_patch_embedding(torch.ones(2, 3, 4, 4), 2, "stretch"),
        lambda: _core.inflate_patch_embedding(torch.ones(2, 3, 4, 4, dtype=torch.long), 2, "mean"),
    ],
    "interpolate_pos_embedding": [
        lambda: _core.interpolate_pos_embedding(S0, (2, 2), (1, 2, 2), True),
        lambda: _core.interpolate_pos_embedding(torch.ones(1, 5, 8), (3, 3), (1, 2, 2), True),
        lambda: _core.interpolate_pos_embedding(torch.ones(1, 5, 8), (2, 2), (0, 2, 2), True),
        lambda: _core.interpolate_pos_embedding(torch.ones(1, 5, 8), (2, 2), (-1, 2, 2), True),
    ],
    "spatial_pool": [
        lambda: _core.spatial_pool(S0, [2, 2, 2], 2),
        lambda: _core.spatial_pool(torch.ones(1, 8, 4), [2, 2, 2], 0),
        lambda: _core.spatial_pool(torch.ones(1, 8, 4), [-2, -2, 2], 2),
        lambda: _core.spatial_pool(torch.ones(1, 8, 4, dtype=torch.long), [2, 2, 2], 2),
    ],
    "mlp_project": [
        lambda: _core.mlp_project(S0, [torch.ones(8, 4)], [None]),
        lambda: _core.mlp_project(torch.ones(2, 4), [torch.ones(8, 4)], []),
        lambda: _core.mlp_project(torch.ones(2, 4), [V1], [None]),
        lambda: _core.mlp_project(torch.ones(2, 4), [torch.ones(8, 4)], [torch.ones(3)]),
        lambda: _core.mlp_project(torch.ones(2, 4), [torch.ones(8, 4, dtype=torch.long)], [None]),
        lambda: _core.mlp_project(torch.ones(2, 4), [], []),
    ],
    "disease_pool": [
        lambda: _core.disease_pool(S0, torch.ones(2, 3)),
        lambda: _core.disease_pool(torch.ones(1, 4, 8), torch.ones(2, 3)),
        lambda: _core.disease_pool(torch.ones(1, 3, 8, dtype=torch.long), torch.ones(2, 3)),
    ],
    "Vit3dCore": [
        lambda: _core.Vit3dCore(1, [4, 8, 8], [2, 4, 4], 8, 16, 1, 0, False, vit_params()),
        lambda: _core.Vit3dCore(1, [4, 8, 8], [2, 4, 4], 8, 16, 1, 3, False, vit_params()),
        lambda: _core.Vit3dCore(1, [4, 8, 8], [2, 4, 4], -8, 16, 1, 2, False, vit_params()),
        lambda: _core.Vit3dCore(0, [4, 8, 8], [2, 4, 4], 8, 16, 1, 2, False, vit_params()),
        lambda: _core.Vit3dCore(1, [4, 8, 8], [0, 4, 4], 8, 16, 1, 2, False, vit_params()),
        lambda: _core.Vit3dCore(1, [4, 8, 8], [2, 4, 4], 8, 16, -1, 2, False, vit_params()),
        lambda: _core.Vit3dCore(1, [4, 8, 8], [2, 4, 4], 8, 16, 10**9, 2, False, vit_params()),
        lambda: _core.Vit3dCore(
            1,
            [4, 8, 8],
            [2, 4, 4],
            8,
            16,
            1,
            2,
            False,
            with_shape(vit_params(), "blocks.0.mlp.linear1.weight", S0),
        ),
        lambda: _core.Vit3dCore(
            1, [4, 8, 8], [2, 4, 4], 8, 16, 1, 2, False, without(vit_params(), "norm.weight")
        ),
        lambda: VIT._bound().forward(S0),
        lambda: VIT._bound().forward(torch.ones(1, 1, 4, 8, 7)),
        lambda: VIT._bound().forward(torch.ones(1, 1, 4, 8, 8, dtype=torch.float64)),
        lambda: VIT._bound().forward(torch.empty(1, 1, 4, 8, 8, device="meta")),
        lambda: VIT._bound().tokens(V1),
        lambda: VIT._bound().block(-1, torch.ones(1, 8, 8)),
        lambda: VIT._bound().block(3, torch.ones(1, 8, 8)),
        lambda: VIT._bound().block(0, S0),
        lambda: VIT._bound().block(0, torch.ones(1, 8, 5)),
        lambda: VIT._bound().final_norm(S0),
    ],
    "PerceiverCore": [
        lambda: _core.PerceiverCore(dict(PERC.named_parameters()), 1, 0, 4),
        lambda: _core.PerceiverCore(dict(PERC.named_parameters()), 1, 2, -4),
        lambda: _core.PerceiverCore(dict(PERC.named_parameters()), -1, 2, 4),
        lambda: _core.PerceiverCore(dict(PERC.named_parameters()), 1, 2, 3),
        lambda: _core.PerceiverCore(
            with_shape(dict(PERC.named_parameters()), "layers.0.1.1.weight", V1), 1, 2, 4
        ),
        lambda: _core.PerceiverCore(
            with_shape(dict(PERC.named_parameters()), "latents", S0), 1, 2, 4
        ),
        lambda: PERC._bound().forward(S0),
        lambda: PERC._bound().forward(torch.ones(1, 5, 7)),
        lambda: PERC._bound().forward(torch.ones(1, 5, 8, dtype=torch.float64)),
    ],
    "ClipVisionCore": [
        lambda: _core.ClipVisionCore(dict(CLIP.named_parameters()), 1, 0, 1e-5),
        lambda: _core.ClipVisionCore(dict(CLIP.named_parameters()), 1, 3, 1e-5),
        lambda: _core.ClipVisionCore(dict(CLIP.named_parameters()), -1, 2, 1e-5),
        lambda: _core.ClipVisionCore(dict(CLIP.named_parameters()), 1, 2, NAN),
        lambda: _core.ClipVisionCore(
            with_shape(
                dict(CLIP.named_parameters()), "vision_model.embeddings.class_embedding", S0
            ),
            1,
            2,
            1e-5,
        ),
        lambda: _core.ClipVisionCore(
            with_shape(
                dict(CLIP.named_parameters()), "vision_model.encoder.layers.0.mlp.fc1.weight", V1
            ),
            1,
            2,
            1e-5,
        ),
        lambda: _core.ClipVisionCore(
            with_shape(
                dict(CLIP.named_parameters()), "vision_model.embeddings.patch_embedding.weight", V1
            ),
            1,
            2,
            1e-5,
        ),
        lambda: _core.ClipVisionCore(
            with_shape(
                dict(CLIP.named_parameters()),
                "vision_model.embeddings.position_embedding.weight",
                V1,
            ),
            1,
            2,
            1e-5,
        ),
        lambda: CLIP._bound().forward(S0),
        lambda: CLIP._bound().forward(torch.ones(1, 2, 8, 8)),
        lambda: CLIP._bound().forward(torch.ones(1, 3, 8, 7)),
        lambda: CLIP._bound().forward(torch.ones(1, 3, 16, 16)),
        lambda: CLIP._bound().forward(torch.ones(1, 3, 8, 8, dtype=torch.float64)),
        lambda: CLIP._bound().hidden_state(torch.ones(1, 3, 8, 8), 2),
        lambda: CLIP._bound().hidden_state(torch.ones(1, 3, 8, 8), -3),
        lambda: CLIP._bound().hidden_state(S0, -1),
    ],
    "QueryBlocksCore": [
        lambda: _core.QueryBlocksCore(dict(QB.named_parameters()), 1, 0),
        lambda: _core.QueryBlocksCore(dict(QB.named_parameters()), 1, 3),
        lambda: _core.QueryBlocksCore(dict(QB.named_parameters()), -1, 2),
        lambda: _core.QueryBlocksCore(
            with_shape(dict(QB.named_parameters()), "visual_query.weight", V1), 1, 2
        ),
        lambda: _core.QueryBlocksCore(
            with_shape(dict(QB.named_parameters()), "visual_blocks.0.mlp.fc1.weight", S0), 1, 2
        ),
        lambda: _core.QueryBlocksCore(
            with_shape(dict(QB.named_parameters()), "clip_proj.weight", V1), 1, 2
        ),
        lambda: _core.QueryBlocksCore(
            with_shape(dict(QB.named_parameters()), "visual_proj.weight", S0), 1, 2
        ),
        lambda: QB._bound().forward(S0),
        lambda: QB._bound().forward(torch.ones(1, 4, 5)),
        lambda: QB._bound().forward(torch.ones(1, 4, 6, dtype=torch.float64)),
        lambda: _core.QueryBlocksCore(dict(QB.named_parameters()), 1, 2, NAN),
        lambda: _core.QueryBlocksCore(dict(QB.named_parameters()), 1, 2, 0.0),
    ],
    "build_info": [],  # takes no arguments: nothing degenerate to pass
    # -- Python wrappers: vision
    "vision.ViT3D": [
        lambda: vision.ViT3D(
            img_size=(4, 8, 8), patch_size=(2, 4, 4), hidden_size=8, num_heads=0, num_layers=1
        ),
        lambda: vision.ViT3D(
            img_size=(4, 8, 8), patch_size=(2, 4, 4), hidden_size=8, num_heads=3, num_layers=1
        ),
        lambda: vision.ViT3D(img_size=(4, 8, 8), patch_size=(2, 4, 4), hidden_size=-8, num_heads=2),
        lambda: vision.ViT3D(img_size=(0, 8, 8), patch_size=(2, 4, 4), hidden_size=8, num_heads=2),
        lambda: vision.ViT3D(
            img_size=(4, 8, 8), patch_size=(2, 4, 4), hidden_size=8, num_heads=2, num_layers=-1
        ),
        lambda: vision.ViT3D(
            in_channels=0, img_size=(4, 8, 8), patch_size=(2, 4, 4), hidden_size=8, num_heads=2
        ),
        lambda: VIT(S0),
        lambda: VIT(torch.ones(1, 1, 4, 8, 8, dtype=torch.float64)),
    ],
    "vision.CLIPVision": [
        lambda: vision.CLIPVision(
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=0,
            image_size=8,
            patch_size=4,
        ),
        lambda: vision.CLIPVision(num_attention_heads=0),
        lambda: vision.CLIPVision(
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=3,
            image_size=8,
            patch_size=4,
        ),
        lambda: vision.CLIPVision(
            hidden_size=0,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=8,
            patch_size=4,
        ),
        lambda: vision.CLIPVision(
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=8,
            patch_size=0,
        ),
        lambda: CLIP(S0),
        lambda: CLIP.inflate(0),
        lambda: vision.CLIPVision.from_pretrained("/nonexistent/clip"),
    ],
    "vision.PerceiverResampler": [
        lambda: vision.PerceiverResampler(dim=8, heads=0),
        lambda: vision.PerceiverResampler(dim=0),
        lambda: vision.PerceiverResampler(dim=8, depth=-1),
        lambda: vision.PerceiverResampler(dim=8, num_latents=-2),
        lambda: PERC(V1),
    ],
    "vision.MLPProjector": [
        lambda: vision.MLPProjector(4, 8)(torch.tensor(1.0)),
        lambda: vision.MLPProjector(4, 8)(torch.ones(2, 5)),
        lambda: vision.MLPProjector(0, 8),
        lambda: vision.MLPProjector(4, -1),
        lambda: vision.MLPProjector(4, 8, depth=0),
    ],
    "vision.SpatialPoolingProjector": [
        lambda: vision.SpatialPoolingProjector((4, 8, 8), (2, 4, 4), 8, 16, pooling_size=0),
        lambda: vision.SpatialPoolingProjector((4, 8, 8), (0, 4, 4), 8, 16),
        lambda: vision.SpatialPoolingProjector((4, 8, 8), (2, 4, 4), -8, 16),
        lambda: vision.SpatialPoolingProjector((4, 8, 8), (2, 4, 4), 8, 16)(S0),
    ],
    "vision.AdapterQueryBlocks": [
        lambda: vision.AdapterQueryBlocks(6, 5, dim=8, heads=0),
        lambda: vision.AdapterQueryBlocks(6, 5, dim=8, heads=3),
        lambda: vision.AdapterQueryBlocks(6, -5, dim=8, heads=2),
        lambda: vision.AdapterQueryBlocks(6, 5, dim=8, heads=2, depth=-1),
        lambda: vision.AdapterQueryBlocks(6, 5, dim=8, heads=2, eps=NAN),
        lambda: QB(S0),
    ],
    "vision.DiseaseAwareAttention": [
        lambda: vision.DiseaseAwareAttention(-1, 4),
        lambda: vision.DiseaseAwareAttention(2, 0),
        lambda: vision.DiseaseAwareAttention(2, 4)(S0),
        lambda: vision.DiseaseAwareAttention(2, 4)(torch.ones(1, 5, 8)),
    ],
    "vision.inflate_patch_embedding": [lambda: vision.inflate_patch_embedding(V1, 2)],
    "vision.interpolate_pos_embedding": [
        lambda: vision.interpolate_pos_embedding(S0, (2, 2), (1, 2, 2))
    ],
    "vision.reuse_pos_embedding": [
        lambda: vision.reuse_pos_embedding(S0, 4),
        lambda: vision.reuse_pos_embedding(torch.ones(1, 5, 8), -1),
        lambda: vision.reuse_pos_embedding(torch.ones(1, 5, 8), 9),
        lambda: vision.reuse_pos_embedding([1.0], 1),
    ],
    # -- nn, ops
    "nn.LoraLinear": [
        lambda: vnn.LoraLinear(-1, 3),
        lambda: vnn.LoraLinear(4, 0),
        lambda: vnn.LoraLinear(4, 3, r=0),
        lambda: vnn.LoraLinear(4, 3, lora_dropout=NAN),
        lambda: vnn.LoraLinear(4, 3, lora_alpha=NAN),
        lambda: LORA(S0),
        lambda: LORA(torch.ones(2, 5)),
        lambda: LORA(torch.ones(2, 4, dtype=torch.float64)),
        lambda: LORA(torch.empty(2, 4, device="meta")),
    ],
    "ops.lora_linear": [lambda: ops.lora_linear(S0, torch.ones(3, 4))],
    # -- llm
    "llm.LlamaConfig": [
        lambda: llm.LlamaConfig(hidden_size=-1),
        lambda: llm.LlamaConfig(hidden_size=16, num_attention_heads=0),
        lambda: llm.LlamaConfig(hidden_size=16, num_attention_heads=3),
        lambda: llm.LlamaConfig(vocab_size=10**12),
        lambda: llm.LlamaConfig.from_pretrained("/nonexistent"),
        "config_not_json",
    ],
    "llm.LlamaForCausalLM": [
        lambda: LM(S0),
        lambda: LM(torch.ones(1, 3)),
        lambda: LM(torch.tensor([[1, 99]])),
        lambda: LM(inputs_embeds=torch.ones(1, 2, 15)),
        lambda: LM(IDS, labels=torch.zeros(1, 5, dtype=torch.long)),
        lambda: LM.generate(IDS, max_new_tokens=0),
        lambda: LM.generate(IDS, num_beams=2, streamer=lambda t: True),
        lambda: LM.generate(IDS, temperature=NAN, do_sample=True),
        lambda: LM.generate(),
        lambda: llm.LlamaForCausalLM.from_pretrained("/nonexistent"),
        "checkpoint_wrong_shape",
    ],
    "llm.Tokenizer": [
        lambda: llm.Tokenizer("/nonexistent/tokenizer.json"),
        lambda: llm.Tokenizer.from_pretrained("/nonexistent"),
    ],
    "llm.splice_image_tokens": [
        lambda: llm.splice_image_tokens(S0, S0, S0),
        lambda: llm.splice_image_tokens(
            torch.ones(1, 3, 4), torch.ones(2, 4), torch.zeros(1, 3, dtype=torch.bool)
        ),
        lambda: llm.splice_image_tokens(
            torch.ones(1, 3, 4), torch.ones(1, 5), torch.zeros(1, 3, dtype=torch.bool)
        ),
    ],
    "llm.format_prompt": [lambda: llm.format_prompt("chatml", "hi")],
    "llm.image_placeholder": [lambda: llm.image_placeholder(-1)],
    # -- adapters
    "adapters.LoraConfig": [
        lambda: adapters.LoraConfig(r=0),
        lambda: adapters.LoraConfig(r=4, lora_dropout=1.5),
        lambda: adapters.LoraConfig(r=4, bias="all"),
    ],
    "adapters.add_lora": [
        lambda: adapters.add_lora(
            nn.Sequential(nn.Linear(2, 2)), adapters.LoraConfig(r=2, target_modules=["q"])
        ),
        lambda: adapters.add_lora(nn.Sequential(nn.Linear(2, 2)), adapters.LoraConfig(r=2)),
    ],
    "adapters.load_adapter": [
        lambda: adapters.load_adapter(nn.Sequential(nn.Linear(2, 2)), "/nonexistent"),
        "adapter_shape_mismatch",
        "adapter_unknown_module",
        "adapter_config_not_json",
        "adapter_absurd_rank",
    ],
    "adapters.set_adapter": [lambda: adapters.set_adapter(nn.Sequential(nn.Linear(2, 2)), "x")],
    "adapters.save_adapter": [
        lambda: adapters.save_adapter(nn.Sequential(nn.Linear(2, 2)), "/tmp/x")
    ],
    "adapters.add_adaption_prompt": [
        lambda: adapters.add_adaption_prompt(
            llm.LlamaForCausalLM(LCFG), adapter_len=0, adapter_layers=1
        ),
        lambda: adapters.add_adaption_prompt(
            llm.LlamaForCausalLM(LCFG), adapter_len=2, adapter_layers=-1
        ),
    ],
    "adapters.PrefixEncoder": [
        lambda: adapters.PrefixEncoder(0, 16),
        lambda: adapters.PrefixEncoder(4, 16, num_prefix=-1),
    ],
    "adapters.prepend_prefix": [
        lambda: adapters.prepend_prefix(S0, torch.ones(1, 3, 4)),
    ],
    # -- losses, metrics
    "losses.focal_loss": [lambda: losses.focal_loss(S0, torch.tensor([0]))],
    "losses.kl_distill": [lambda: losses.kl_distill(torch.ones(2, 3), torch.ones(2, 4))],
    "losses.lm_loss": [lambda: losses.lm_loss(V1, V1.long())],
    "losses.PrototypeBank": [
        lambda: losses.PrototypeBank(num_labels=0, dim=8),
        lambda: losses.PrototypeBank(num_labels=2, dim=8)(S0),
    ],
    "metrics.report_scores": [lambda: metrics.report_scores([["a"]], ["a", "b"])],
    "metrics.classification_scores": [lambda: metrics.classification_scores([0, 1], [0], [0, 1])],
    "metrics.multilabel_scores": [lambda: metrics.multilabel_scores([0, 1], [[0, 1]])],
    # -- volume
    "volume.load_volume": [
        lambda: voxlm.load_volume("/nonexistent/x.nii.gz"),
        "corrupt_nifti_volume",
    ],
    "volume.save_volume": [
        lambda: voxlm.save_volume(np.ones((2, 2, 2), np.float32), "/nonexistent/dir/x.nii")
    ],
}


# ---------------------------------------------------------------------------------------------
# cases that need files


def _meteor_jar() -> str:
    from voxlm.metrics import meteor_jar_path

    return str(meteor_jar_path())


def special(name: str, tmp) -> None:
    if name == "corrupt_nifti":
        _core.load_nifti(nifti_file(tmp, b"\x5c\x01\x00\x00" + b"\x00" * 100))
    elif name == "corrupt_nifti_volume":
        voxlm.load_volume(nifti_file(tmp, b"\x00" * 400))
    elif name == "nan_window_fused":
        p = tmp / "v.nii"
        voxlm.save_volume(np.ones((4, 4, 4), np.float32), p)
        _core.load_batch([str(p)], window=(NAN, 1.0, 0.0, 1.0, True))
    elif name == "hostile_index":
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"a": "../../etc/passwd"}})
        )
        _core.checkpoint_files(str(tmp))
    elif name in ("truncated_safetensors", "header_past_end"):
        _core.save_safetensors({"a": torch.ones(4, 4)}, str(tmp / "model.safetensors"))
        b = (tmp / "model.safetensors").read_bytes()
        if name == "truncated_safetensors":
            b = b[:-5]
        else:
            b = (10**9).to_bytes(8, "little") + b[8:]
        (tmp / "model.safetensors").write_bytes(b)
        _core.load_safetensors(str(tmp))
    elif name == "bad_dtype_arg":
        _core.save_safetensors({"a": torch.ones(2)}, str(tmp / "model.safetensors"))
        _core.load_safetensors(str(tmp), "int8")
    elif name == "corrupt_tokenizer":
        (tmp / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 3}}')
        _core.TokenizerCore(str(tmp / "tokenizer.json"))
    elif name == "tokenizer_bad_ids":
        from tokenizers import Tokenizer, models, pre_tokenizers

        t = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
        t.pre_tokenizer = pre_tokenizers.Whitespace()
        t.save(str(tmp / "tokenizer.json"))
        core = _core.TokenizerCore(str(tmp / "tokenizer.json"))
        assert core.id_to_token(-1) is None
        core.decode([0, -1])
    elif name == "config_not_json":
        (tmp / "config.json").write_text("{not json")
        llm.LlamaConfig.from_pretrained(tmp)
    elif name == "checkpoint_wrong_shape":
        LM.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["intermediate_size"] = 20
        (tmp / "config.json").write_text(json.dumps(cfg))
        llm.LlamaForCausalLM.from_pretrained(tmp)
    elif name.startswith("adapter_"):
        model = llm.LlamaForCausalLM(LCFG)
        adapters.add_lora(
            model, adapters.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
        )
        adapters.save_adapter(model, tmp)
        cfg = json.loads((tmp / "adapter_config.json").read_text())
        if name == "adapter_shape_mismatch":
            cfg["r"] = 3
        elif name == "adapter_unknown_module":
            cfg["target_modules"] = ["not_a_module"]
        elif name == "adapter_absurd_rank":
            cfg["r"] = 10**9
        (tmp / "adapter_config.json").write_text(
            "{oops" if name == "adapter_config_not_json" else json.dumps(cfg)
        )
        fresh = llm.LlamaForCausalLM(LCFG)
        before = sorted(n for n, _ in fresh.named_parameters())
        try:
            adapters.load_adapter(fresh, tmp)
        finally:
            # a refused adapter leaves the model as it was
            assert sorted(n for n, _ in fresh.named_parameters()) == before
    else:  # pragma: no cover - table typo
        raise AssertionError(f"unknown special case {name}")


FLAT = [(api, i, case) for api, cases in CASES.items() for i, case in enumerate(cases)]


@pytest.mark.parametrize(("api", "i", "case"), FLAT, ids=[f"{a}-{i}" for a, i, _ in FLAT])
def test_degenerate_input_is_a_voxlm_error(api, i, case, tmp_path):
    if isinstance(case, str):
        expect_voxlm_error(lambda: special(case, tmp_path))
    else:
        expect_voxlm_error(case)


def test_direct_and_fused_window_refuse_the_same_bounds(tmp_path):
    """The direct transform and the fused load_batch path refuse non-finite window bounds with
    the same core check (intensity::check_window)."""
    p = tmp_path / "v.nii"
    voxlm.save_volume(np.ones((2, 2, 2), np.float32), p)
    for bad in [(NAN, 1.0, 0.0, 1.0), (0.0, float("inf"), 0.0, 1.0), (0.0, 1.0, NAN, 1.0)]:
        expect_voxlm_error(lambda b=bad: _core.load_batch([str(p)], window=(*b, True)))
        expect_voxlm_error(
            lambda b=bad: _core.scale_intensity_range(np.ones((2, 2), np.float32), *b)
        )
        expect_voxlm_error(
            lambda b=bad: transforms.ScaleIntensityRange(*b)(np.ones((1, 2, 2, 2), np.float32))
        )


# ---------------------------------------------------------------------------------------------
# generate: streamers


def test_streamer_calling_back_into_the_model_raises_instead_of_deadlocking():
    model = llm.LlamaForCausalLM(LCFG)
    result: dict[str, BaseException | None] = {}

    def streamer(tokens):
        model(IDS)  # re-enters the same Rust core on the same thread
        return True

    def run():
        try:
            model.generate(IDS, max_new_tokens=3, streamer=streamer)
            result["e"] = None
        except BaseException as e:  # noqa: BLE001
            result["e"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout=60)
    assert not th.is_alive(), "generate deadlocked on the model's lock"
    e = result["e"]
    assert isinstance(e, VoxlmError), repr(e)
    assert "inside one of its own calls" in str(e)
    # the model is usable afterwards, also from another thread while idle
    assert model.generate(IDS, max_new_tokens=2, eos_token_id=[]).shape == (1, 5)


def test_streamer_with_beams_is_refused_and_greedy_streams():
    seen = []
    out = LM.generate(
        IDS, max_new_tokens=3, eos_token_id=[], streamer=lambda t: seen.append(t.clone())
    )
    assert torch.equal(torch.stack(seen, 1), out[:, 3:])
    e = expect_voxlm_error(
        lambda: LM.generate(IDS, num_beams=2, max_new_tokens=3, streamer=lambda t: True)
    )
    assert "beam" in str(e)
    assert LM.generate(IDS, num_beams=2, max_new_tokens=3, eos_token_id=[]).shape == (1, 6)


# ---------------------------------------------------------------------------------------------
# the table covers every public name


def _public(module) -> set[str]:
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    out = set()
    for n in names:
        obj = getattr(module, n, None)
        if (inspect.isclass(obj) or callable(obj)) and getattr(obj, "__module__", "").startswith(
            module.__name__
        ):
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue
            out.add(n)
    return out


def test_every_public_name_has_a_case():
    core = {n for n in _core.__all__ if not n.startswith("__")}
    core -= {
        n
        for n in core
        if inspect.isclass(getattr(_core, n)) and issubclass(getattr(_core, n), BaseException)
    }
    missing = sorted(n for n in core if n not in CASES)
    wrappers = {
        "vision": vision,
        "nn": vnn,
        "llm": llm,
        "ops": ops,
        "losses": losses,
    }
    for prefix, mod in wrappers.items():
        for n in _public(mod):
            obj = getattr(mod, n)
            if inspect.isclass(obj) and not issubclass(obj, nn.Module) and prefix != "llm":
                continue
            if n in (
                "CausalLMOutput",
                "PathLike",
                "RMSNorm",
                "LlamaAttention",
                "LlamaMLP",
                "LlamaDecoderLayer",
                "LlamaRotaryEmbedding",
                "LlamaModel",
                "weighted_sum",
            ):
                continue  # holders without a Rust call / plain torch arithmetic
            if f"{prefix}.{n}" not in CASES:
                missing.append(f"{prefix}.{n}")
    assert not missing, f"public names without a degenerate-input case: {missing}"
