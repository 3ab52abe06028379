"""The RAD3D-Prefix recipe (no public code: design in voxlm/recipes/rad3d_prefix.py): frozen
encoder (MONAI ViT weights load, output == MONAI), diagnostic head (BCE), anomaly-aware prefix
prepended to a frozen LLaMA, trainable set, stages, generate, evaluate, save/reload, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voxlm import _core
from voxlm.exceptions import CheckpointError, ConfigError, DataError, ShapeError
from voxlm.llm import LlamaConfig
from voxlm.recipes import get_recipe
from voxlm.recipes.rad3d_prefix import LLAMA_3_2_1B, Rad3dPrefix, Rad3dPrefixConfig

from ._fixtures import TINY_LLAMA as LLM
from ._fixtures import tiny_recipe

TINY = dict(
    name="rad3d_prefix",
    image_size=[8, 32, 32],
    vision_patch_size=[4, 8, 8],
    vision_dim=48,
    vision_depth=2,
    vision_heads=4,
    vision_dim_head=12,
    vision_mlp_dim=96,
    image_tokens=8,
    prefix_length=6,
    projector_width=32,
    projector_heads=4,
    projector_dropout=0.0,
    max_new_tokens=6,
)


def tiny(**kw) -> Rad3dPrefix:
    return tiny_recipe(Rad3dPrefix, TINY, **kw)


def items(n: int = 2, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    reports = [
        "Thorax is symmetrical. The heart shadow is enlarged.",
        "A solid nodule is seen in the right upper lobe.",
        "No pleural effusion.",
        "Bilateral pleural effusion, small in amount.",
    ]
    out = []
    for i in range(n):
        lab = np.zeros(14, dtype=np.int64)
        lab[(3 * i) % 14] = 1
        out.append(
            {
                "id": f"c{i}",
                "image": torch.rand(1, 8, 32, 32, generator=g),
                "report": reports[i % 4],
                "labels": lab,
            }
        )
    return out


def test_registered_and_llama_3_2_1b_default():
    assert get_recipe("rad3d_prefix") is Rad3dPrefix
    c = LlamaConfig(**LLAMA_3_2_1B)
    assert (
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
    ) == (2048, 16, 32, 8, 128256)
    assert c.head_dim == 64 and c.rope_scaling["rope_type"] == "llama3" and c.tie_word_embeddings
    d = Rad3dPrefixConfig()
    assert d.anomaly_aware and d.vision == "vit3d" and d.image_size == [32, 256, 256]


def test_only_head_and_projector_train():
    m = tiny()
    b = m.collator()(items(2))
    m.train()
    m(**b).loss.backward()
    for n, p in m.named_parameters():
        trainable = n.startswith(("head.", "projector."))
        assert p.requires_grad == trainable, n
        if trainable:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        else:
            assert p.grad is None, n


def test_loss_prefix_and_head():
    m = tiny().eval()
    b = m.collator()(items(2))
    out = m(**b)
    tokens = m.encode(b["images"])
    logits = m.head(tokens)
    torch.testing.assert_close(
        out.bce_loss, F.binary_cross_entropy_with_logits(logits, b["cls_labels"].float())
    )
    torch.testing.assert_close(out.loss, out.lm_loss + 1.0 * out.bce_loss)
    # the LLM sees [prefix ; text] and the loss skips the prefix and the instruction
    prefix = m.projector(tokens, logits)
    assert prefix.shape == (2, 6, 64)
    emb = torch.cat([prefix, m.llm.get_input_embeddings()(b["input_ids"])], 1)
    mask = torch.cat([torch.ones(2, 6, dtype=torch.long), b["attention_mask"]], 1)
    ref = m.llm(inputs_embeds=emb, attention_mask=mask)
    torch.testing.assert_close(out.logits, ref.logits)
    lab = torch.cat([torch.full((2, 6), -100), b["labels"]], 1)
    torch.testing.assert_close(
        out.lm_loss,
        F.cross_entropy(
            ref.logits[:, :-1].reshape(-1, ref.logits.shape[-1]),
            lab[:, 1:].reshape(-1),
            ignore_index=-100,
        ),
    )
    n_prompt = len(m.prompt_ids())
    assert (b["labels"][:, :n_prompt] == -100).all()
    assert m.tokenizer.decode(b["input_ids"][0, 1:n_prompt]) == m.config.instruction


def test_anomaly_awareness_and_detach():
    m = tiny().eval()
    tokens = m.encode(torch.stack([it["image"] for it in items(2)]))
    lo = torch.full((2, 14), -4.0)
    hi = torch.full((2, 14), 4.0)
    assert not torch.allclose(m.projector(tokens, lo), m.projector(tokens, hi))
    # detach_logits: the LM loss does not reach the head; without it, it does
    b = m.collator()(items(2))
    m.train()
    out = m(**b)
    out.lm_loss.backward()
    assert m.head.fc.weight.grad is None
    m2 = tiny(detach_logits=False).train()
    m2(**b).lm_loss.backward()
    assert m2.head.fc.weight.grad is not None and m2.head.fc.weight.grad.abs().sum() > 0
    plain = tiny(anomaly_aware=False)
    assert plain.head is None and not hasattr(plain.projector, "label_embed")
    bp = plain.collator()(items(2))
    assert "cls_labels" not in bp
    o = plain(**bp)
    assert o.bce_loss is None and torch.equal(o.loss, o.lm_loss)


def test_stages_and_training(tmp_path):
    from voxlm.train import TrainingArguments, run_stages

    m = tiny(diagnosis_max_steps=2)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        logging_steps=1,
        save_strategy="no",
        report_to=["csv"],
        disable_tqdm=True,
        learning_rate=3e-3,
        warmup_steps=1,
    )
    st = m.stages(args)
    assert [s.name for s in st] == ["diagnosis", "prefix"]
    assert st[0].args.max_steps == 2 and st[1].args.max_steps == 3
    assert st[1].args.learning_rate == 3e-3  # explicit train value wins
    assert st[1].args.lr_scheduler_type == "cosine"  # the recipe's default fills the rest
    st[0].set_trainable(m)
    assert all(not p.requires_grad for p in m.projector.parameters())
    assert all(p.requires_grad for p in m.head.parameters())
    m.train()
    out = m(**m.collator()(items(2)))
    assert out.lm_loss is None and out.loss is out.bce_loss
    proj0 = {k: v.clone() for k, v in m.projector.state_dict().items()}
    res = run_stages(m, st, items(4), None, data_collator=m.collator())
    assert res["diagnosis"].global_step == 2 and res["prefix"].global_step == 3
    assert any(not torch.equal(v, m.projector.state_dict()[k]) for k, v in proj0.items())
    assert (tmp_path / "run" / "prefix" / "metrics.csv").is_file()


def test_vit3d_weights_from_monai(tmp_path):
    """A MONAI ViT saved as safetensors (under M3D-CLIP's ``vision_encoder.`` prefix) loads as
    the frozen encoder; the recipe's features equal MONAI's output (float32, 1e-5)."""
    from monai.networks.nets import ViT

    torch.manual_seed(1)
    ref = ViT(
        in_channels=1,
        img_size=(8, 32, 32),
        patch_size=(4, 8, 8),
        hidden_size=48,
        mlp_dim=96,
        num_layers=2,
        num_heads=4,
        proj_type="conv",
        classification=False,
        qkv_bias=False,
    ).eval()
    sd = {f"vision_encoder.{k}": v.contiguous() for k, v in ref.state_dict().items()}
    _core.save_safetensors(sd, str(tmp_path / "vit.safetensors"))
    m = Rad3dPrefix.from_config(TINY, {"llm": LLM, "vision": str(tmp_path / "vit.safetensors")})
    x = torch.rand(2, 1, 8, 32, 32)
    with torch.no_grad():
        want, _ = ref(x)
    torch.testing.assert_close(m.encode(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError):
        Rad3dPrefix.from_config(
            {**TINY, "vision_dim": 24, "vision_heads": 2},
            {"llm": LLM, "vision": str(tmp_path / "vit.safetensors")},
        )


def test_generate_evaluate_save_reload(tmp_path):
    m = tiny()
    with torch.no_grad():
        m.projector.out.weight.normal_(0, 0.5)
    imgs = torch.stack([it["image"] for it in items(3)])
    g = m.generate(imgs, return_dict=True)
    assert len(g.reports) == 3 and g.labels.shape == (3, 14)
    assert np.array_equal(g.labels, m.predict_labels(imgs))
    res = m.evaluate(items(3), tmp_path / "ev", batch_size=2, meteor=False)
    assert {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "clinical_efficacy", "prompt_labels"} <= set(
        res
    )
    assert (
        res["labeler"] == "keyword (voxlm.synth templates)" and "clinical_efficacy_keyword" in res
    )
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["n"] == 3
    assert len(list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))) == 3
    m.save_pretrained(tmp_path / "model")
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert {
        "config.json",
        "vision.safetensors",
        "head.safetensors",
        "projector.safetensors",
        "tokenizer",
    } <= names
    assert "adapter" not in names  # the LLM is frozen: no adapter
    r = Rad3dPrefix.from_pretrained(tmp_path / "model")
    g2 = r.generate(imgs, return_dict=True)
    assert (
        g2.reports == g.reports
        and torch.equal(g2.tokens, g.tokens)
        and np.array_equal(g2.labels, g.labels)
    )
    from voxlm.recipes.dia_llama import DiaLlama

    with pytest.raises(CheckpointError, match="rad3d_prefix"):
        DiaLlama.from_pretrained(tmp_path / "model")


def test_bad_input():
    with pytest.raises(ConfigError, match="unknown field"):
        tiny(prefix_len=3)
    with pytest.raises(ShapeError, match="not divisible"):
        tiny(image_size=[8, 30, 32])
    with pytest.raises(ConfigError, match="divisible by projector_heads"):
        tiny(projector_width=30)
    with pytest.raises(ConfigError, match="diagnosis stage needs"):
        tiny(anomaly_aware=False, diagnosis_max_steps=3)
    m = tiny()
    with pytest.raises(ShapeError, match="expected"):
        m.generate(torch.rand(1, 1, 8, 32, 16))
    bad = items(1)
    del bad[0]["labels"]
    with pytest.raises(DataError, match="no 'labels'"):
        m.collator()(bad)
    with pytest.raises(ConfigError, match="unknown field"):
        Rad3dPrefix.from_config(TINY, {"llm": LLM, "encoder": "x"})
    # generation settings of the wrong type are named at construction (not a ValueError at generate)
    for field, bad in (
        ("num_beams", "two"),
        ("max_new_tokens", 0),
        ("top_p", "x"),
        ("prefix_length", "6"),
    ):
        with pytest.raises(ConfigError, match=rf"recipe\.{field}.*{bad!r}"):
            Rad3dPrefixConfig.from_dict({**TINY, field: bad})


def test_config_files_parse():
    import pathlib

    import yaml

    from voxlm.train import TrainingArguments

    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("rad3d_prefix-*.yaml"))
    assert {f.name for f in files} >= {"rad3d_prefix-tiny.yaml", "rad3d_prefix-ctrate.yaml"}
    for f in files:
        cfg = yaml.safe_load(f.read_text())
        assert cfg["recipe"]["name"] == "rad3d_prefix"
        c = Rad3dPrefixConfig.from_dict(cfg["recipe"])
        TrainingArguments.from_dict(cfg["train"])
        if cfg["data"]["format"] == "ct-rate":
            assert len(c.conditions) == 18


def test_cli_train_and_evaluate_tiny_config(tmp_path):
    """``python -m voxlm train configs/rad3d_prefix-tiny.yaml`` + ``voxlm evaluate``: the shipped
    tiny config shortened (2 + 2 steps, 12 smaller synthetic cases, 8 new tokens); the data goes
    through the ctrg-chest reader and the recipe's preprocessing."""
    import os
    import pathlib
    import subprocess
    import sys

    import yaml

    root = pathlib.Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "configs" / "rad3d_prefix-tiny.yaml").read_text())
    cfg["data"]["root"] = str(tmp_path / "data")
    cfg["data"]["synth"] = {"kind": "chest-ct", "n": 12, "seed": 1, "shape": [32, 32, 16]}
    cfg["train"]["max_steps"] = 2
    cfg["recipe"].update(diagnosis_max_steps=2, max_new_tokens=8)
    f = tmp_path / "tiny.yaml"
    f.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(root / "python")}
    run = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "voxlm", "train", str(f), "--output-dir", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert (run / "diagnosis" / "metrics.csv").is_file() and (
        run / "prefix" / "metrics.csv"
    ).is_file()
    assert json.loads((run / "model" / "config.json").read_text())["recipe"] == "rad3d_prefix"
    p = subprocess.run(
        [sys.executable, "-m", "voxlm", "evaluate", str(run), "--out", str(tmp_path / "ev")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["n"] >= 1 and {
        "BLEU-1",
        "ROUGE-L",
        "CIDEr",
        "clinical_efficacy",
        "prompt_labels",
    } <= set(ev)
