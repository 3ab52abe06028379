"""Bad input found by the harden5 sweep (mutations of every tensor argument of the vision parts,
losses, LoRA and ops — dtype, rank, 0-size dims, numpy/list/None/str, meta, NaN —, wrong-typed
and absurd constructor arguments, recipe Config fields of the wrong type, TrainingArguments
fields, CLI configs and run folders): each case below gave a builtin exception from deep inside
(``TypeError``/``ValueError``/``RuntimeError`` with torch's ``enforce fail`` C++ text, ``KeyError``
from ``nn.Module``), a stale result, or was silently accepted. Each must now raise a
:class:`voxlm.exceptions.VoxlmError` subclass (also the builtin that fits) whose message names
what was expected and what was given.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import yaml

from voxlm import cli, losses, vision, vision_radfm
from voxlm import nn as vnn
from voxlm._bind import check_budget, check_device
from voxlm.exceptions import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    DTypeError,
    ShapeError,
    VoxlmError,
    VoxlmTypeError,
)
from voxlm.recipes import get_recipe
from voxlm.recipes.base import check_field_types
from voxlm.train import TrainingArguments

TRACE_MARKERS = ("frame #", "Exception raised from", "enforce fail", "panicked at")


def raises(exc: type[VoxlmError], fn, *words: str) -> VoxlmError:
    """``fn()`` raises ``exc`` (a VoxlmError subclass); its message holds every one of ``words``
    and no C++ frame text."""
    with pytest.raises(exc) as info:
        fn()
    e = info.value
    assert isinstance(e, VoxlmError)
    msg = str(e)
    assert not any(m in msg for m in TRACE_MARKERS), msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return e


def tiny_vit() -> vision.ViT3D:
    return vision.ViT3D(
        in_channels=1,
        img_size=(4, 8, 8),
        patch_size=(2, 4, 4),
        hidden_size=8,
        mlp_dim=16,
        num_layers=1,
        num_heads=2,
    )


def tiny_radfm(**kw) -> vision_radfm.RadFMViT3D:
    args = dict(
        image_size=8,
        image_patch_size=4,
        frames=4,
        frame_patch_size=2,
        dim=12,
        depth=1,
        heads=2,
        mlp_dim=8,
        channels=1,
        dim_head=4,
    )
    args.update(kw)
    return vision_radfm.RadFMViT3D(**args)


HUGE = 10**6  # 10^6 x 10^6 parameters: 4 TB


# ---------------------------------------------------------------------------------------------
# sizes that no memory holds are refused before allocating (torch's allocator failure carries
# a C++ "enforce fail at alloc_cpu.cpp" line)


@pytest.mark.parametrize(
    "build",
    [
        lambda: vnn.LoraLinear(HUGE, HUGE),
        lambda: vision.MLPProjector(HUGE, HUGE),
        lambda: vision.DiseaseAwareAttention(HUGE, HUGE),
        lambda: vision.PerceiverResampler(dim=HUGE, depth=1, dim_head=4, heads=2, num_latents=HUGE),
        lambda: vision.CLIPVision(
            hidden_size=HUGE,
            intermediate_size=HUGE,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=8,
            patch_size=4,
        ),
        lambda: vision.ViT3D(
            in_channels=1,
            img_size=(4096, 4096, 4096),
            patch_size=(1, 1, 1),
            hidden_size=8,
            mlp_dim=16,
            num_layers=1,
            num_heads=2,
        ),
        lambda: vision.AdapterQueryBlocks(clip_dim=8, out_dim=8, dim=HUGE, heads=2),
        lambda: losses.PrototypeBank(HUGE, HUGE),
        lambda: tiny_radfm(dim=3 * HUGE, mlp_dim=HUGE),
        lambda: tiny_radfm(depth=10**9),  # a loop of small layers until memory runs out
        lambda: vision.interpolate_pos_embedding(torch.randn(1, 5, 8), (2, 2), (4096,) * 3),
    ],
    ids=[
        "LoraLinear",
        "MLPProjector",
        "DiseaseAwareAttention",
        "PerceiverResampler",
        "CLIPVision",
        "ViT3D",
        "AdapterQueryBlocks",
        "PrototypeBank",
        "RadFMViT3D",
        "RadFMViT3D-depth",
        "interpolate_pos_embedding",
    ],
)
def test_absurd_sizes_are_refused_before_allocating(build):
    raises(ConfigError, build, "parameters", "expected smaller sizes")


def test_budget_names_the_machine_memory():
    e = raises(ConfigError, lambda: check_budget("X", 10**11), "X:", "GiB")
    assert "memory" in str(e) or "limit" in str(e)
    check_budget("small", 10**6)  # passes


# ---------------------------------------------------------------------------------------------
# devices and dtypes given to constructors


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_device_error():
    raises(DeviceError, lambda: vnn.LoraLinear(4, 3, device="cuda"), "'cuda'", "not available")
    raises(DeviceError, lambda: losses.PrototypeBank(2, 4, device="cuda:0"), "CUDA")


def test_unknown_and_unavailable_devices_are_device_errors():
    raises(DeviceError, lambda: vnn.LoraLinear(4, 3, device="gpu"), "'gpu'", "expected a device")
    if not torch.backends.mps.is_available():
        raises(DeviceError, lambda: vnn.LoraLinear(4, 3, device="mps"), "MPS")
    raises(DeviceError, lambda: check_device(3.5), "got 3.5")
    assert check_device("cpu") == torch.device("cpu")


def test_constructor_dtypes_must_be_floating():
    raises(DTypeError, lambda: vnn.LoraLinear(4, 3, dtype=torch.int64), "floating", "int64")
    raises(DTypeError, lambda: vnn.LoraLinear(4, 3, dtype="float33"), "'float33'")
    raises(DTypeError, lambda: losses.PrototypeBank(2, 4, dtype=torch.bool), "torch.bool")
    assert vnn.LoraLinear(4, 3, dtype="bfloat16").base_layer.weight.dtype == torch.bfloat16


def test_lora_adapter_names_and_configs():
    raises(ConfigError, lambda: vnn.LoraLinear(4, 3, adapter_name=""), "adapter_name", "''")
    raises(ConfigError, lambda: vnn.LoraLinear(4, 3, adapter_name="a.b"), "'.'", "'a.b'")
    raises(ConfigError, lambda: vnn.LoraLinear(4, 3, adapter_name=3), "got 3")
    raises(ConfigError, lambda: vnn.LoraLinear(4, 3, r=True), "rank", "True")
    raises(ConfigError, lambda: vnn.LoraLinear(4, 3, lora_dropout="x"), "lora_dropout", "'x'")
    from voxlm.adapters import LoraConfig, LoraLayer

    raises(ConfigError, lambda: LoraConfig(target_modules=[1, 2]), "target_modules", "[1, 2]")
    raises(ConfigError, lambda: LoraConfig(use_rslora="yes"), "use_rslora", "'yes'")
    raises(VoxlmTypeError, lambda: LoraLayer(torch.nn.Conv1d(2, 2, 1)), "nn.Linear", "Conv1d")


# ---------------------------------------------------------------------------------------------
# losses: argument types and values


def test_loss_arguments_are_checked():
    lg, t = torch.randn(3, 4), torch.tensor([0, 1, 2])
    raises(VoxlmTypeError, lambda: losses.focal_loss(lg, t, alpha="ab"), "alpha", "'ab'")
    raises(ConfigError, lambda: losses.focal_loss(lg, t, alpha=[1.0, math.nan, 1, 1]), "alpha[1]")
    raises(ConfigError, lambda: losses.focal_loss(lg, t, gamma="x"), "gamma", "'x'")
    raises(ConfigError, lambda: losses.focal_loss(lg, t, gamma=-1), "gamma", "-1")
    raises(VoxlmTypeError, lambda: losses.focal_loss(lg.numpy(), t), "logits", "torch.from_numpy")
    # a numpy alpha is a sequence of weights, as a list is
    ref = losses.focal_loss(lg, t, alpha=[1.0, 2.0, 1.0, 1.0])
    got = losses.focal_loss(lg, t, alpha=np.array([1.0, 2.0, 1.0, 1.0]))
    torch.testing.assert_close(got, ref)
    raises(ConfigError, lambda: losses.kl_distill(lg, lg, temperature="a"), "temperature", "'a'")
    raises(ConfigError, lambda: losses.kl_distill(lg, lg, temperature=0), "temperature", "got 0")
    raises(VoxlmTypeError, lambda: losses.kl_distill(lg, lg, projection=5), "projection", "int")
    raises(
        ShapeError,
        lambda: losses.kl_distill(lg, torch.randn(3, 5), projection=torch.nn.Linear(3, 5)),
        "[..., 3]",
        "(3, 4)",
    )
    logits, labels = torch.randn(2, 3, 5), torch.tensor([[1, 2, 3], [1, 2, 3]])
    raises(ConfigError, lambda: losses.lm_loss(logits, labels, ignore_index="x"), "ignore_index")
    raises(ConfigError, lambda: losses.weighted_sum([torch.tensor(1.0)], [math.nan]), "weights[0]")
    raises(ConfigError, lambda: losses.weighted_sum({"a": torch.tensor(1.0)}, {"a": "w"}), "'a'")


def test_prototype_bank_arguments_and_labels():
    raises(ConfigError, lambda: losses.PrototypeBank("a", 4), "num_labels", "'a'")
    raises(ConfigError, lambda: losses.PrototypeBank(2.5, 4), "num_labels", "2.5")
    raises(ConfigError, lambda: losses.PrototypeBank(2, 4, proj_dim=-1), "proj_dim", "-1")
    raises(ConfigError, lambda: losses.PrototypeBank(2, 4, temperature_init="a"), "temperature")
    bank = losses.PrototypeBank(3, 4)
    f = torch.randn(2, 3, 4)
    # float labels that are not 0/1 were silently used as soft targets
    half = torch.tensor([[0, 1, 0.5], [0, 1, 1]])
    raises(ConfigError, lambda: bank.loss(f, half), "0 (negative) or 1 (positive)", "0.5")
    nan = torch.tensor([[0, 1, math.nan], [0, 1, 1]])
    raises(ConfigError, lambda: bank.loss(f, nan), "nan")
    cplx = torch.ones(2, 3, dtype=torch.complex64)
    raises(DTypeError, lambda: bank.loss(f, cplx), "complex64")
    raises(VoxlmTypeError, lambda: bank.loss(f, [[0, 1, 1], [0, 1, 1]]), "labels", "list")
    # 0/1 floats are the same labels as 0/1 ints
    ints = torch.tensor([[0, 1, 0], [1, 1, 0]])
    torch.testing.assert_close(bank.loss(f, ints.float()), bank.loss(f, ints))


# ---------------------------------------------------------------------------------------------
# vision parts


@pytest.mark.parametrize(
    ("x", "exc", "words"),
    [
        (torch.randn(1, 1, 8, 8, 4).double(), DTypeError, ("torch.float32", "torch.float64")),
        (torch.randn(1, 1, 8, 8, 4).bfloat16(), DTypeError, ("torch.bfloat16",)),
        (torch.ones(1, 1, 8, 8, 4, dtype=torch.int64), DTypeError, ("floating", "int64")),
        (torch.randn(1, 1, 8, 0, 4), ShapeError, ("(1, 1, 8, 0, 4)",)),
        (torch.randn(1, 1, 8, 8, 0), ShapeError, ("(1, 1, 8, 8, 0)",)),
        (np.ones((1, 1, 8, 8, 4), np.float32), VoxlmTypeError, ("torch.Tensor", "ndarray")),
        (None, VoxlmTypeError, ("NoneType",)),
        ("abc", VoxlmTypeError, ("str",)),
        (torch.randn(1, 1, 8, 8, 4, device="meta"), DeviceError, ("meta",)),
    ],
    ids=["float64", "bf16", "int64", "zero-W", "zero-D", "numpy", "None", "str", "meta"],
)
def test_radfm_forward_checks_its_input(x, exc, words):
    raises(exc, lambda: tiny_radfm().eval()(x), *words)


def test_radfm_forward_still_runs_and_under_autocast():
    m = tiny_radfm().eval()
    x = torch.randn(1, 1, 8, 8, 4)
    tokens, pos = m(x)
    assert tokens.shape == (1, 8, 12) and pos.shape == (1, 8, 12)
    # under autocast the dtype check is torch's (a bf16 input to a float32 encoder runs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x.bfloat16())[0].shape == (1, 8, 12)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"frames": "4"}, ("frames", "'4'")),
        ({"image_size": 8.0}, ("image_size", "8.0")),
        ({"image_patch_size": [4, True]}, ("image_patch_size",)),
        ({"dropout": 2.0}, ("dropout", "2.0")),
        ({"emb_dropout": -0.1}, ("emb_dropout", "-0.1")),
        ({"depth": 0}, ("depth", ">= 1")),
        ({"heads": 1.5}, ("heads", "1.5")),
    ],
)
def test_radfm_constructor_arguments(kw, words):
    raises(ConfigError, lambda: tiny_radfm(**kw), *words)


def test_spatial_pooling_sequence_path_checks_its_input():
    spp = vision.SpatialPoolingProjector(
        (4, 8, 8), (1, 2, 2), in_dim=4, out_dim=8, pooling_size=2, pooling_type="sequence"
    )
    raises(ShapeError, lambda: spp(torch.randn(64, 4)), "[B, N >= 8, 4]", "(64, 4)")
    raises(ShapeError, lambda: spp(torch.randn(2, 4, 4)), "(2, 4, 4)")
    raises(VoxlmTypeError, lambda: spp(np.ones((2, 64, 4), np.float32)), "ndarray")
    assert spp(torch.randn(2, 64, 4)).shape == (2, 8, 8)


def test_position_embedding_helpers_check_their_arguments():
    pos = torch.randn(1, 5, 8)
    raises(ConfigError, lambda: vision.interpolate_pos_embedding(pos, 2, (2, 2, 2)), "grid2d")
    raises(ConfigError, lambda: vision.interpolate_pos_embedding(pos, (2, 2), (2, -2, 2)), "-2")
    raises(
        ShapeError, lambda: vision.interpolate_pos_embedding(torch.tensor(1.0), (2, 2), (2,) * 3)
    )
    raises(ConfigError, lambda: vision.reuse_pos_embedding(pos, 0), "n_tokens", ">= 1")
    raises(DTypeError, lambda: vision.reuse_pos_embedding(pos.long(), 2), "int64")
    raises(ConfigError, lambda: vision.inflate_patch_embedding(torch.randn(8, 3, 4, 4), "2"))
    raises(ShapeError, lambda: vision.inflate_patch_embedding(torch.randn(0, 3, 4, 4), 2), "(0,")
    raises(VoxlmTypeError, lambda: vision.ViT3D.from_monai("notavit"), "str")
    raises(CheckpointError, lambda: vision.ViT3D.from_monai({"a": torch.ones(2)}), "missing")


def test_a_module_moved_to_meta_does_not_compute_with_its_old_weights():
    """``.to("meta")`` replaces the Parameter objects (no in-place conversion exists): the Rust
    core bound to the old CPU tensors went on returning CPU results computed from them."""
    vit = tiny_vit()
    x = torch.randn(1, 1, 4, 8, 8)
    vit.to("meta")
    raises(DeviceError, lambda: vit(x), "meta")
    vit.to_empty(device="cpu")  # real (uninitialised) storage again: computes
    assert vit(x)[0].shape == (1, 8, 8)


# ---------------------------------------------------------------------------------------------
# recipe Configs: every field is checked against its annotation before the range checks


def _tiny(name: str) -> dict:
    return yaml.safe_load(open(f"configs/{name}-tiny.yaml"))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("modulus", "abc", ("recipe.modulus", "an integer", "'abc'")),
        ("modulus", None, ("recipe.modulus", "None")),
        ("seq_len", [1, 2], ("recipe.seq_len",)),
        ("lm_learning_rate", "fast", ("recipe.lm_learning_rate", "a number", "'fast'")),
        ("lora_alpha", math.nan, ("recipe.lora_alpha", "finite")),
        ("lora_r", True, ("recipe.lora_r", "True")),
        ("lora_target_modules", [1], ("recipe.lora_target_modules", "[1]")),
    ],
)
def test_example_recipe_config_types(field, value, words):
    cfg = _tiny("example")
    recipe = {**cfg["recipe"], field: value}
    raises(ConfigError, lambda: get_recipe("example").from_config(recipe, cfg["model"]), *words)


def test_recipe_config_reads_yaml_exponent_strings_as_floats():
    """PyYAML reads ``3e-3`` (no dot) as the string "3e-3"; a float field takes it as 0.003, as
    TrainingArguments.from_dict does, in every recipe's Config."""
    from voxlm.recipes.base import config_from_dict
    from voxlm.recipes.dia_llama import DiaLlamaConfig

    cfg = _tiny("example")
    fields = {k: v for k, v in cfg["recipe"].items() if k != "lm_learning_rate"}
    recipe = yaml.safe_load(yaml.safe_dump(fields) + "lm_learning_rate: 3e-3\n")
    assert recipe["lm_learning_rate"] == "3e-3"  # what PyYAML gives
    model = get_recipe("example").from_config(recipe, cfg["model"])
    assert model.config.lm_learning_rate == 0.003
    c = config_from_dict(DiaLlamaConfig, {"name": "dia_llama", "dp_weight": " 4e0 "})
    assert c.dp_weight == 4.0 and isinstance(c.dp_weight, float)
    raises(
        ConfigError,
        lambda: config_from_dict(DiaLlamaConfig, {"dp_weight": "inf"}),
        "recipe.dp_weight",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vision_depth", "2"),
        ("vision_dim", {"a": 1}),
        ("learning_rate", "fast"),
        ("do_sample", "no"),
        ("image_size", "abc"),
        ("image_size", [32, "64", 64]),
        ("vision_dropout", 2.5),
        ("vision_emb_dropout", -1),
    ],
)
def test_dia_llama_config_types_and_ranges(field, value):
    cfg = _tiny("dia_llama")
    recipe = {**cfg["recipe"], field: value}
    raises(
        ConfigError,
        lambda: get_recipe("dia_llama").from_config(recipe, cfg["model"]),
        f"recipe.{field}",
        repr(value),
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"top_p": 2.0, "do_sample": True}, "top_p"),
    ],
)
def test_generation_settings_generate_refuses_are_refused_before_training(changes, field):
    """LlamaForCausalLM.generate refuses these; the Config accepted them, so a run trained to
    the end and failed at its evaluation."""
    from voxlm.recipes.dia_llama import DiaLlamaConfig

    r = _tiny("dia_llama")["recipe"]
    raises(ConfigError, lambda: DiaLlamaConfig.from_dict({**r, **changes}), f"recipe.{field}")


def test_recipe_sizes_that_do_not_fit_in_memory_are_config_errors():
    cfg = _tiny("rad3d_prefix")
    cls = get_recipe("rad3d_prefix")
    for field in ("image_tokens", "projector_width"):
        recipe = {**cfg["recipe"], field: 10**12}
        raises(ConfigError, lambda r=recipe: cls.from_config(r, cfg["model"]), "memory")
    recipe = {**cfg["recipe"], "projector_depth": 10**9}
    raises(ConfigError, lambda: cls.from_config(recipe, cfg["model"]), "projector_depth")
    recipe = {**cfg["recipe"], "projector_depth": -1}
    raises(ConfigError, lambda: cls.from_config(recipe, cfg["model"]), "projector_depth", "-1")


def test_check_field_types_follows_the_annotations():
    @dataclasses.dataclass
    class C:
        a: int = 1
        b: float = 1.0
        c: tuple[int, int, int] = (1, 2, 3)
        d: list[str] | None = None
        e: dict[str, float] = dataclasses.field(default_factory=dict)
        f: bool = False

    ok = {"a": 2, "b": 3, "c": [1, 2, 3], "d": None, "e": {"x": 1}, "f": True}
    check_field_types(C, ok)  # an int is a float, a list is a tuple (as YAML writes them)
    for bad, words in [
        ({"a": True}, ("s.a", "an integer", "True")),
        ({"a": 1.5}, ("s.a", "1.5")),
        ({"b": math.inf}, ("s.b", "finite")),
        ({"c": [1, 2]}, ("s.c", "3 items")),
        ({"d": ["x", 2]}, ("s.d", "a string")),
        ({"e": {"x": "y"}}, ("s.e", "a number")),
        ({"f": "false"}, ("s.f", "true or false")),
    ]:
        raises(ConfigError, lambda b=bad: check_field_types(C, b, "s"), *words)


def test_recipe_name_and_unknown_model_fields():
    raises(ConfigError, lambda: get_recipe(["a"]), "recipe.name", "['a']")
    cfg = _tiny("example")
    model = {**cfg["model"], "tokenizr": "bundled:ctrg-bpe"}
    raises(
        ConfigError,
        lambda: get_recipe("example").from_config(cfg["recipe"], model),
        "model",
        "tokenizr",
    )


# ---------------------------------------------------------------------------------------------
# TrainingArguments and the CLI


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("output_dir", 5),
        ("output_dir", None),
        ("output_dir", ["a"]),
        ("seed", 2**64),
        ("data_seed", -(2**70)),
        ("dataloader_num_workers", 10**12),
    ],
)
def test_training_arguments_types_and_ranges(field, value, tmp_path):
    d = {"output_dir": str(tmp_path), field: value}
    raises(ConfigError, lambda: TrainingArguments.from_dict(d), field, repr(value))


def test_cli_synth_file_system_and_memory_errors_are_one_line(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    rc = cli.main(["synth", "chest-ct", "--out", str(f), "--n", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "NotADirectoryError" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_saved_example_with_wrong_config_types_is_named(tmp_path):
    cfg = _tiny("example")
    model = get_recipe("example").from_config(cfg["recipe"], cfg["model"])
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["config"]["modulus"] = "x"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    raises(ConfigError, lambda: get_recipe("example").from_pretrained(tmp_path), "modulus", "'x'")
    saved["config"] = [1]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    raises(CheckpointError, lambda: get_recipe("example").from_pretrained(tmp_path), "'config'")


# ---------------------------------------------------------------------------------------------
# 2D images: the Rust resampler aborts the whole process when an allocation fails


def test_huge_resize_is_refused_instead_of_aborting_the_process():
    """``resize_bicubic(img, 10**6, 10**6)`` (and a CLIP ``size`` of 10**6) reached the Rust
    resampler, whose failed 3 TB allocation aborted Python (``memory allocation of ... failed``,
    SIGABRT). Run in a child process so a regression shows as a failure, not a dead test run."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from voxlm import image\n"
        "from voxlm.exceptions import ConfigError\n"
        "img = np.zeros((6, 8, 3), np.uint8)\n"
        "for f in (lambda: image.resize_bicubic(img, 10**6, 10**6),\n"
        "          lambda: image.clip_preprocess(img, 10**6, None)):\n"
        "    try:\n"
        "        f()\n"
        "    except ConfigError as e:\n"
        "        assert 'GiB' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
        "print('refused')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "refused" in r.stdout, (r.returncode, r.stderr[-600:])


def test_image_arguments_are_checked():
    from voxlm import image

    img = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    raises(ConfigError, lambda: image.resize_bicubic(img, -1, 4), "height", "-1")
    raises(ConfigError, lambda: image.resize_bicubic(img, 2.5, 4), "height", "2.5")
    raises(ConfigError, lambda: image.resize_bicubic(img, "4", 4), "height", "'4'")
    # a float image was cast to uint8 silently (values in [0, 1] became 0)
    raises(VoxlmTypeError, lambda: image.resize_bicubic(img / 255.0, 4, 4), "uint8", "float64")
    raises(ShapeError, lambda: image.resize_bicubic(img[:0], 4, 4), "non-empty")
    raises(ConfigError, lambda: image.expand2square(img, "abc"), "background", "'abc'")
    raises(ConfigError, lambda: image.expand2square(img, (300, 0, 0)), "[0, 255]", "300")
    raises(ShapeError, lambda: image.expand2square(np.ones((0, 4, 3), np.uint8)), "non-empty")
    raises(VoxlmTypeError, lambda: image.clip_preprocess(None), "images", "NoneType")
    raises(ConfigError, lambda: image.clip_preprocess(img, 0), "size", ">= 1")
    raises(ConfigError, lambda: image.clip_preprocess(img, std=(0, 0, 0)), "std", "got 0")
    raises(ShapeError, lambda: image.clip_preprocess(img, mean=(0.5,)), "mean", "(0.5,)")
    raises(VoxlmTypeError, lambda: image.load_image_2d(5), "path", "int")
    raises(VoxlmTypeError, lambda: image.to_rgb(None), "img", "NoneType")
    assert image.clip_preprocess(img, 8, 8).shape == (1, 3, 8, 8)


# ---------------------------------------------------------------------------------------------
# CLIP checkpoints


def test_clip_checkpoints_and_configs_are_named(tmp_path):
    from voxlm import clip_openai as co

    req = {f"visual.{k}": torch.ones(3) for k in co.OPENAI_REQUIRED}
    raises(CheckpointError, lambda: co.load_openai_clip_vision(req), "rank or shape")
    hf = {k: torch.ones(3) for k in co.HF_REQUIRED}
    raises(CheckpointError, lambda: co.load_openai_clip_vision(hf), "transformers layout")
    raises(VoxlmTypeError, lambda: co.load_openai_clip_vision(5), "source", "int")
    raises(VoxlmTypeError, lambda: co.detect_layout("abc"), "state dict", "str")
    raises(VoxlmTypeError, lambda: co.hf_to_openai({"a": torch.ones(2)}), "CLIPVision", "dict")
    raises(ConfigError, lambda: co.CLIPVisionWithProjection(bogus=1), "bogus")
    raises(ConfigError, lambda: co.CLIPVisionWithProjection(projection_dim="a"), "projection_dim")
    # a HF folder whose weights do not fit its config.json: torch's load_state_dict error was a
    # RuntimeError listing every key
    tower = vision.CLIPVision(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )
    from voxlm import _core

    sd = {k: v.detach() for k, v in tower.state_dict().items()}
    _core.save_safetensors(sd, str(tmp_path / "model.safetensors"))
    cfg = dict(tower.config, hidden_act="quick_gelu")
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 12}))
    raises(CheckpointError, lambda: vision.CLIPVision.from_pretrained(tmp_path), "shape")
    (tmp_path / "config.json").write_text("{nope")
    raises(CheckpointError, lambda: vision.CLIPVision.from_pretrained(tmp_path), "not valid JSON")
    (tmp_path / "config.json").write_text("[1, 2]")
    raises(CheckpointError, lambda: vision.CLIPVision.from_pretrained(tmp_path), "list")
    raises(VoxlmTypeError, lambda: vision.CLIPVision.from_pretrained(5), "path", "int")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert vision.CLIPVision.from_pretrained(tmp_path).config["hidden_size"] == 8


# ---------------------------------------------------------------------------------------------
# GREEN helpers, adapters, the trainer's parts


def test_green_helpers_check_their_text():
    from voxlm import green

    raises(VoxlmTypeError, lambda: green.make_prompt(None, "b"), "reference", "NoneType")
    raises(ConfigError, lambda: green.make_prompt("a", "b", 0), "max_len")
    raises(VoxlmTypeError, lambda: green.clean_responses(None), "response")
    raises(VoxlmTypeError, lambda: green.parse_error_counts(5, green.CATEGORIES[0]), "text")
    raises(VoxlmTypeError, lambda: green.green_score_of(None), "text")
    # a bare string was scored as one response per character
    raises(VoxlmTypeError, lambda: green.scores_from_responses("abc"), "a list of str", "str")
    raises(VoxlmTypeError, lambda: green.scores_from_responses([None]), "responses[0]")
    raises(VoxlmTypeError, lambda: green.chat_prompt(None, "</s>"), "prompt")
    raises(VoxlmTypeError, lambda: green.generate_judgements(None, None, ["x"]), "model")
    raises(ConfigError, lambda: green.green(["a"], ["b"], judge=None, batch_size="8"), "batch")


def _tiny_lm():
    from voxlm import llm

    from ._fixtures import TINY_LM

    return llm.LlamaForCausalLM(llm.LlamaConfig(**TINY_LM))


def test_adapter_functions_check_their_arguments(tmp_path):
    from voxlm import adapters

    cfg = adapters.LoraConfig(r=2, target_modules=["q_proj"])
    raises(VoxlmTypeError, lambda: adapters.add_lora("abc", cfg), "nn.Module", "str")
    raises(VoxlmTypeError, lambda: adapters.add_lora(_tiny_lm(), {"r": 2}), "LoraConfig", "dict")
    bad_re = adapters.LoraConfig(target_modules="(")
    raises(ConfigError, lambda: adapters.add_lora(_tiny_lm(), bad_re), "not a valid regex")
    raises(ConfigError, lambda: adapters.mark_trainable(_tiny_lm(), ["("]), "'('")
    raises(ConfigError, lambda: adapters.mark_trainable(_tiny_lm(), None), "patterns")
    # a bare string is one pattern (it was iterated as single-character regexes)
    m = _tiny_lm()
    n = adapters.mark_trainable(m, "q_proj")
    assert n == 1 and all(("q_proj" in k) == p.requires_grad for k, p in m.named_parameters())
    raises(VoxlmTypeError, lambda: adapters.add_bias_tuning("x"), "nn.Module")
    raises(VoxlmTypeError, lambda: adapters.trainable_parameters("x"), "nn.Module")
    raises(VoxlmTypeError, lambda: adapters.lora_settings("x"), "nn.Module")
    raises(ConfigError, lambda: adapters.add_adaption_prompt(_tiny_lm(), "2", 1), "adapter_len")
    raises(ConfigError, lambda: adapters.add_adaption_prompt(_tiny_lm(), 10**12, 1), "GiB")
    raises(ConfigError, lambda: adapters.PrefixEncoder("a", 4, 8), "in_dim", "'a'")
    raises(ConfigError, lambda: adapters.PrefixEncoder(4, 8, dropout=2), "dropout")
    raises(ConfigError, lambda: adapters.PrefixEncoder(HUGE, HUGE, HUGE), "parameters")
    raises(VoxlmTypeError, lambda: adapters.load_adapter(_tiny_lm(), 5), "path", "int")
    raises(VoxlmTypeError, lambda: adapters.save_adapter(_tiny_lm(), 5), "path", "int")


def test_trainer_parts_check_their_arguments(tmp_path):
    from voxlm.train import (
        Stage,
        Trainer,
        get_scheduler,
        list_checkpoints,
        param_groups,
        run_stages,
    )

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], plot=False)
    ds = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([1, 2, 3])}] * 2
    raises(VoxlmTypeError, lambda: Trainer("abc", args, ds), "model", "str")
    raises(VoxlmTypeError, lambda: Trainer(_tiny_lm(), args, 5), "train_dataset", "int")
    raises(VoxlmTypeError, lambda: Trainer(_tiny_lm(), args, ds, data_collator=5), "callable")
    raises(VoxlmTypeError, lambda: Trainer(_tiny_lm(), args, ds, compute_metrics=5), "callable")
    t = Trainer(_tiny_lm(), args, ds)
    raises(ConfigError, lambda: t.train(resume_from_checkpoint=5), "resume_from_checkpoint", "5")
    raises(ConfigError, lambda: Stage("a", None), "TrainingArguments", "NoneType")
    raises(ConfigError, lambda: Stage(5, args), "Stage.name", "5")
    raises(ConfigError, lambda: Stage("a", args, set_trainable=3), "set_trainable")
    raises(ConfigError, lambda: run_stages(_tiny_lm(), ["a"], ds), "Stage objects", "str")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    raises(VoxlmTypeError, lambda: get_scheduler("linear", "opt", 1, 10), "Optimizer", "str")
    raises(ConfigError, lambda: get_scheduler("linear", opt, -1, 10), "num_warmup_steps", "-1")
    raises(VoxlmTypeError, lambda: param_groups("abc", 0.1), "nn.Module", "str")
    raises(VoxlmTypeError, lambda: list_checkpoints(5), "output_dir", "int")


def test_compute_metrics_must_return_a_mapping(tmp_path):
    from voxlm.train import Trainer

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], plot=False)
    ds = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([1, 2, 3])}] * 2
    t = Trainer(_tiny_lm(), args, ds, ds, compute_metrics=lambda p: 5)
    raises(VoxlmTypeError, t.evaluate, "compute_metrics", "dict", "int")


# ---------------------------------------------------------------------------------------------
# recipe entry points (generate / evaluate / datasets / stages / forward / from_pretrained /
# the collator): checks shared through Recipe.__init_subclass__


@pytest.fixture(scope="module")
def dia():
    cfg = _tiny("dia_llama")
    return get_recipe("dia_llama").from_config(cfg["recipe"], cfg["model"]).eval()


def test_recipe_entry_points_check_their_arguments(dia, tmp_path):
    images = torch.randn(1, 3, *dia.config.image_size)
    name = "DiaLlama"
    for bad, exc, words in [
        (images.numpy(), VoxlmTypeError, ("images", "torch.from_numpy")),
        (None, VoxlmTypeError, ("images", "NoneType")),
        (images.to(torch.complex64), DTypeError, ("complex64",)),
        (images.to("meta"), DeviceError, ("meta",)),
        (images[:0], ShapeError, ("non-empty",)),
    ]:
        raises(exc, lambda b=bad: dia.generate(b, max_new_tokens=2), f"{name}.generate", *words)
    raises(VoxlmTypeError, lambda: dia.evaluate(None), "dataset", "NoneType")
    raises(VoxlmTypeError, lambda: dia.evaluate([1, 2]), "dataset[0]", "int")
    raises(VoxlmTypeError, lambda: dia.evaluate([], output_dir=5), "output_dir")
    raises(ConfigError, lambda: dia.evaluate([], batch_size=0), "batch_size", "0")
    raises(ConfigError, lambda: dia.datasets([1]), "data", "[1]")
    raises(ConfigError, lambda: dia.datasets({"format": "ctrg-chest", "root": 5}), "data.root")
    raises(ConfigError, lambda: dia.stages({"output_dir": "x"}), "TrainingArguments", "dict")
    raises(VoxlmTypeError, lambda: dia.save_pretrained(5), "path", "int")
    raises(CheckpointError, lambda: get_recipe("dia_llama").from_pretrained(5), "path", "5")
    ids = torch.tensor([[1, 2, 3]])
    raises(DataError, lambda: dia(input_ids=ids), "lacks ['images']", "input_ids")
    collate = dia.collator()
    raises(DataError, lambda: collate([]), "empty batch")
    raises(DataError, lambda: collate([1, 2]), "item 0", "int")
    # the checks do not get in the way of a valid call
    assert isinstance(dia.generate(images, max_new_tokens=2)[0], str)
