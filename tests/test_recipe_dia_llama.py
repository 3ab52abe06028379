"""The Dia-LLaMA recipe: prompts and token layout vs the released code, loss, trainable set,
prediction -> prompt -> generation, evaluation files, save/reload, bad input.

Released code: zhi-xuan-chen/Dia-LLaMA ``src/Model/DiaLLaMA/multimodality_model.py``,
``my_embedding_layer.py``, ``src/Dataset/my_dataset/CTRG_dataset.py``, ``dataset_train.py``.
Real data: ``dia_llama_results.csv`` (the released test-set questions, which hold the prompts the
released model wrote) bundled in ``voxlm.datasets``.
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import voxlm
from voxlm.datasets import dia_llama_results
from voxlm.exceptions import CheckpointError, ConfigError, DataError, DTypeError, ShapeError
from voxlm.metrics import CHEXBERT_CONDITIONS, parse_diagnostic_prompt
from voxlm.recipes import get_recipe
from voxlm.recipes.dia_llama import (
    INSTRUCTION,
    DiaLlama,
    DiaLlamaConfig,
    DiaLlamaTransform,
    _tokenizer_file,
    keyword_labeler,
)

from ._fixtures import TINY_LLAMA as LLM
from ._fixtures import tiny_recipe

TINY = dict(
    name="dia_llama",
    image_size=[8, 32, 32],
    vision_patch_size=[4, 8, 8],
    vision_max_size=[16, 64, 64],
    vision_dim=48,
    vision_depth=2,
    vision_heads=4,
    vision_dim_head=12,
    vision_mlp_dim=96,
    perceiver_depth=2,
    perceiver_heads=2,
    perceiver_dim_head=16,
    prototype_dim=32,
    max_new_tokens=8,
    do_sample=False,
    vision_dropout=0.0,
    vision_emb_dropout=0.0,
    lora_dropout=0.0,
)


def tiny(**kw) -> DiaLlama:
    return tiny_recipe(DiaLlama, TINY, **kw)


def items(n: int = 2, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    res = dia_llama_results()
    out = []
    for i in range(n):
        out.append(
            {
                "id": res.ids[i],
                "image": torch.rand(3, 8, 32, 32, generator=g),
                "report": res.references[i][:200],
                "labels": res.labels[i],
            }
        )
    return out


def test_registered_and_released_defaults():
    assert get_recipe("dia_llama") is DiaLlama
    c = DiaLlamaConfig()
    assert (
        c.image_size,
        c.vision_patch_size,
        c.vision_dim,
        c.vision_depth,
        c.vision_heads,
        c.vision_mlp_dim,
    ) == ([64, 256, 256], [4, 32, 32], 768, 12, 8, 2048)
    assert (c.num_image_tokens, c.perceiver_depth, c.temperature_init, c.dp_weight) == (
        32,
        6,
        0.07,
        4.0,
    )
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_target_modules) == (
        8,
        32,
        0.1,
        ["q_proj", "v_proj"],
    )
    assert (
        c.learning_rate,
        c.lr_scheduler_type,
        c.warmup_steps,
        c.gradient_accumulation_steps,
    ) == (5e-5, "constant_with_warmup", 20, 8)
    assert (c.max_new_tokens, c.top_k, c.loss_weighting) == (300, 50, "released")
    assert c.conditions == list(CHEXBERT_CONDITIONS)


def test_prompt_equals_released_questions():
    """The released test CSV's Question = image tokens + the predicted diagnostic prompt + guide;
    voxlm's question for the same labels reproduces the text after ``</image>`` exactly."""
    m = tiny()
    res = dia_llama_results()
    for q in res.prompts[:50]:
        text = q.split("</image>", 1)[1]
        labels = parse_diagnostic_prompt(text)
        assert (labels >= 0).all()
        assert m.prompter.question(labels.tolist()) == text
    assert res.prompts[0].endswith(INSTRUCTION)
    head = res.prompts[0].split("The ", 1)[0]
    assert head == "<image>" + "".join(f"<image{k}>" for k in range(32)) + "</image>"


def test_collator_token_layout_and_label_mask():
    m = tiny()
    its = items(2)
    b = m.collator()(its)
    v = m.llm.config.vocab_size
    tok = m.tokenizer
    for i, it in enumerate(its):
        ids = b["input_ids"][i][b["attention_mask"][i].bool()].tolist()
        assert ids[0] == tok.bos_token_id
        assert ids[1:35] == [v] + [v + 2 + k for k in range(32)] + [
            v + 1
        ]  # <image> <image0..31> </image>
        n_prompt = int((b["labels"][i] == -100).logical_and(b["attention_mask"][i].bool()).sum())
        q = m.prompter.question(np.asarray(it["labels"]).tolist())
        assert tok.decode(ids[35:n_prompt]) == q
        tgt = b["labels"][i][b["labels"][i] != -100].tolist()
        assert tgt[-1] == tok.eos_token_id
        assert tok.decode(tgt[:-1]).strip() == it["report"].replace("•", "").strip()
        assert all(t < v for t in tgt)
    assert torch.equal(b["cls_labels"], torch.as_tensor(np.stack([it["labels"] for it in its])))
    assert (b["labels"][b["attention_mask"] == 0] == -100).all()


def _released_embedding(m: DiaLlama, input_ids, image_embeds):
    """my_embedding_layer.py, end of forward: one-hot over [weight ; figure_token_weight ;
    vision_x]."""
    B = input_ids.shape[0]
    weight = m.llm.get_input_embeddings().weight
    embedding_weight = torch.cat([weight, m.figure_token_weight], dim=0)
    embedding_weight = embedding_weight.unsqueeze(0).repeat(B, 1, 1)
    embedding_weight = torch.cat([embedding_weight, image_embeds], dim=1)
    text_input = F.one_hot(input_ids, embedding_weight.shape[1]).to(image_embeds.dtype)
    return torch.matmul(text_input, embedding_weight)


def test_embedding_equals_released_one_hot_matmul():
    m = tiny()
    b = m.collator()(items(2))
    with torch.no_grad():
        img = m.image_embeddings(m.vision_tokens(b["images"]))
        got = m.embed(b["input_ids"], img)
        want = _released_embedding(m, b["input_ids"], img)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_loss_weighting_and_trainable_set():
    m = tiny()
    b = m.collator()(items(2))
    m.eval()  # deterministic
    out = m(**b)
    torch.testing.assert_close(out.loss, out.lm_loss + 4 * out.dp_loss)
    # L_DP is the prototype InfoNCE on the disease-attention features with the ground truth
    feats = m.disease_features(m.vision_tokens(b["images"]))
    torch.testing.assert_close(out.dp_loss, m.prototypes.loss(feats, b["cls_labels"]))
    mp = tiny(loss_weighting="paper", lm_weight=0.5).eval()
    o2 = mp(**b)
    torch.testing.assert_close(o2.loss, o2.dp_loss + 0.5 * o2.lm_loss)
    m.train()
    m(**b).loss.backward()
    for n, p in m.named_parameters():
        if n.startswith("llm."):
            assert p.requires_grad == (".lora_" in n), n
        else:
            assert p.requires_grad, n
        if p.requires_grad:
            assert p.grad is not None, n
    lora = [n for n, p in m.llm.named_parameters() if p.requires_grad]
    assert lora and all(re.search(r"(q_proj|v_proj)\.lora_[AB]\.", n) for n in lora)
    frozen = tiny(freeze_vision=True)
    assert not any(p.requires_grad for p in frozen.vision.parameters())


def test_ablation_switches():
    b = tiny().collator()(items(2))
    m = tiny(use_prototypes=False)
    assert m.prototypes is None and m.classifier is not None
    out = m.eval()(**b)
    logits = torch.stack(
        [
            h(m.disease_features(m.vision_tokens(b["images"]))[:, i])
            for i, h in enumerate(m.classifier)
        ],
        1,
    )
    torch.testing.assert_close(
        out.dp_loss, F.cross_entropy(logits.reshape(-1, 2), b["cls_labels"].reshape(-1))
    )
    m = tiny(use_disease_attention=False).eval()
    feats = m.disease_features(torch.randn(2, m.num_vision_tokens, 48))
    assert torch.allclose(feats[:, 0], feats[:, 5])
    m = tiny(use_diagnostic_prompts=False, use_prototypes=False).eval()
    assert not m.has_label_predictor
    b2 = m.collator()(items(2))
    out = m(**b2)
    assert out.dp_loss is None and torch.equal(out.loss, out.lm_loss)
    assert m.prompter.question(None) == INSTRUCTION
    g = m.generate(b2["images"], return_dict=True)
    assert g.prompts == [INSTRUCTION, INSTRUCTION]


@pytest.mark.parametrize("mode", ["released", "pooled"])
def test_generate_uses_predicted_then_given_labels(mode):
    m = tiny(inference_features=mode)
    imgs = torch.stack([it["image"] for it in items(3)])
    g = m.generate(imgs, return_dict=True)
    with torch.no_grad():
        tokens = m.vision_tokens(imgs)
        feats = m.disease_features(tokens) if mode == "pooled" else m.inference_features(tokens)
        pred = m.prototypes.predict(feats)
    assert np.array_equal(g.labels, pred.numpy())
    for row, q in zip(g.labels, g.prompts):
        assert np.array_equal(parse_diagnostic_prompt(q), row)
    assert len(g.reports) == 3 and all(isinstance(r, str) for r in g.reports)
    assert g.tokens.shape[1] <= 8
    given = np.zeros((3, 14), dtype=np.int64)
    given[:, 1] = 1
    g2 = m.generate(imgs, labels=given, return_dict=True)
    assert all('The "cardiomegaly" is positive.' in q for q in g2.prompts)
    # batched generation equals one-by-one generation (left padding is exact)
    singles = [m.generate(imgs[i : i + 1], labels=given[i : i + 1])[0] for i in range(3)]
    assert m.generate(imgs, labels=given) == singles
    # the same labels as bools, a nested list or whole floats; bad labels are named
    assert m.generate(imgs, labels=given.astype(bool)) == singles
    assert m.generate(imgs, labels=given.tolist()) == singles
    assert m.generate(imgs, labels=torch.tensor(given, dtype=torch.float32)) == singles
    for bad in ("x", [["a"] * 14] * 3, given * 0.5, given.astype(complex), object()):
        with pytest.raises(DTypeError, match="labels"):
            m.generate(imgs, labels=bad)
    with pytest.raises(ShapeError, match="labels"):
        m.generate(imgs, labels=given[:, :3])


def test_training_steps_reduce_the_loss():
    m = tiny()
    its = items(2)
    b = m.collator()(its)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=5e-3)
    m.train()
    first = None
    for _ in range(6):
        loss = m(**b).loss
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(m(**b).loss.detach()) < 0.8 * first


def test_save_reload_identical(tmp_path):
    m = tiny()
    with torch.no_grad():  # make LoRA non-zero so the adapter matters
        for n, p in m.llm.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)
    m.llm.rebind()
    imgs = torch.stack([it["image"] for it in items(2)])
    want = m.generate(imgs, return_dict=True)
    m.save_pretrained(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert {
        "config.json",
        "vision.safetensors",
        "perceiver.safetensors",
        "projector.safetensors",
        "disease.safetensors",
        "prototype.safetensors",
        "adapter",
        "tokenizer",
        "llm",
    } <= set(files)
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["recipe"] == "dia_llama"
    adapter = json.loads((tmp_path / "model" / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["peft_type"]) == (8, 32, "LORA")
    r = DiaLlama.from_pretrained(tmp_path / "model")
    got = r.generate(imgs, return_dict=True)
    assert got.reports == want.reports and np.array_equal(got.labels, want.labels)
    assert torch.equal(got.tokens, want.tokens)
    sd0, sd1 = m.state_dict(), r.state_dict()
    assert set(sd0) == set(sd1)
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k


def test_save_references_base_llm_by_path(tmp_path):
    base = voxlm.llm.LlamaForCausalLM(voxlm.llm.LlamaConfig(vocab_size=1024, **LLM))
    base.save_pretrained(tmp_path / "base")
    m = DiaLlama.from_config(TINY, {"llm": str(tmp_path / "base"), "tokenizer": "bundled:ctrg-bpe"})
    m.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model" / "llm").exists()
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["llm"]["path"] == str((tmp_path / "base").resolve())
    adapter = json.loads((tmp_path / "model" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tmp_path / "base")
    r = DiaLlama.from_pretrained(tmp_path / "model")
    imgs = torch.stack([it["image"] for it in items(1)])
    assert r.generate(imgs) == m.generate(imgs)


def test_evaluate_writes_files(tmp_path):
    m = tiny()
    res = m.evaluate(items(3), tmp_path / "ev", batch_size=2, meteor=False)
    for k in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert k in res
    ce = res["clinical_efficacy_keyword"]
    assert res["labeler"] == "keyword (voxlm.synth templates)" and res["clinical_efficacy"] == ce
    assert {"precision_macro", "recall_macro", "f1_macro", "precision_micro", "f1_micro"} <= set(ce)
    assert set(ce["per_label"]) == set(CHEXBERT_CONDITIONS)
    assert "prompt_labels" in res and "clinical_efficacy_vs_dataset_labels" in res
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["n"] == 3 and saved["BLEU-1"] == pytest.approx(res["BLEU-1"])
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    assert len(rows) == 3 and rows[0]["id"] == dia_llama_results().ids[0]
    assert np.array_equal(
        parse_diagnostic_prompt(rows[0]["prompt"]), json.loads(rows[0]["predicted_labels"])
    )
    # a labeler callable is used for both sides
    seen = []

    def lab(reports):
        seen.append(len(reports))
        return np.ones((len(reports), 14), dtype=np.int64)

    r2 = m.evaluate(items(2), labeler=lab, meteor=False)
    assert seen == [2, 2] and r2["clinical_efficacy"]["f1_micro"] == pytest.approx(1.0, abs=1e-5)
    assert r2["labeler"] == "lab" and "clinical_efficacy_keyword" not in r2


def test_evaluate_refuses_records_without_reports_before_generating():
    """A record without its reference report was scored against "" (silently wrong scores)."""
    m = tiny()
    recs = items(2)
    del recs[1]["report"]
    calls = []
    m.generate = lambda *a, **k: calls.append(1)  # must not be reached
    with pytest.raises(DataError, match=r"has no reference 'report'"):
        m.evaluate(recs, batch_size=2, meteor=False)
    assert calls == []


def test_keyword_labeler():
    reports = [
        "The heart is enlarged. No pleural effusion is seen.",
        "A solid nodule is seen in the right upper lobe, about 5mm. No pneumothorax.",
        "Thorax is symmetrical. No abnormality.",
    ]
    codes = keyword_labeler(reports)
    idx = {c: i for i, c in enumerate(CHEXBERT_CONDITIONS)}
    assert codes[0, idx["cardiomegaly"]] == 1 and codes[0, idx["pleural effusion"]] == 2
    assert codes[1, idx["lung lesion"]] == 1 and codes[1, idx["pneumothorax"]] == 2
    assert codes[2, idx["no finding"]] == 1 and codes[0, idx["no finding"]] == 0
    assert codes.shape == (3, 14)


def test_keyword_labeler_agrees_with_the_synthetic_benchmark():
    """Positive labels == voxlm.synth's own template labeler on synthetic chest-CT reports
    (and on the real released reports, where both are keyword matchers)."""
    from voxlm import synth
    from voxlm.synth.chest_ct import generate_case, sample_codes

    rng = np.random.default_rng(5)
    codes = sample_codes(rng, 12)
    reports = [generate_case(i, codes[i], seed=3, shape=(16, 16, 8)).report for i in range(12)]
    real = dia_llama_results().references[:100]
    for texts in (reports, real):
        assert np.array_equal(keyword_labeler(texts) == 1, synth.label_reports(texts) == 1)


def test_transform_volume_layout_and_scaling():
    data = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)  # [x, y, z]
    vol = voxlm.Volume(data, np.eye(4))
    t = DiaLlamaTransform((8, 6, 4), channels=3)(vol)  # same size: no resampling
    assert t.shape == (3, 8, 6, 4)
    assert torch.equal(t[0], torch.from_numpy(data.transpose(2, 1, 0) / data.max()))
    assert torch.equal(t[0], t[2])
    t2 = DiaLlamaTransform((4, 12, 8), channels=1)(torch.rand(1, 8, 6, 4) * 100)
    assert t2.shape == (1, 4, 12, 8) and float(t2.min()) == 0.0 and float(t2.max()) == 1.0


def test_bad_input():
    with pytest.raises(ConfigError, match="unknown field"):
        tiny(learning_rat=1e-4)
    with pytest.raises(ConfigError, match="unknown field"):
        DiaLlama.from_config(TINY, {"llm": LLM, "tokenizr": "x"})
    with pytest.raises(ShapeError, match="not divisible by the patch"):
        tiny(image_size=[8, 30, 32])
    with pytest.raises(ShapeError, match="position table"):
        tiny(image_size=[8, 128, 128])  # 16 patch rows > the 8 of vision_max_size
    m = tiny()
    with pytest.raises(ShapeError, match="expected"):
        m.generate(torch.rand(1, 3, 8, 32, 16))
    bad = items(1)
    bad[0]["labels"] = np.zeros(5, dtype=np.int64)
    with pytest.raises(ShapeError, match="5 labels"):
        m.collator()(bad)
    nolab = items(1)
    del nolab[0]["labels"]
    with pytest.raises(DataError, match="no 'labels'"):
        m.collator()(nolab)
    with pytest.raises(ConfigError, match="unknown setting"):
        m.generate(torch.rand(1, 3, 8, 32, 32), max_tokens=3)
    # generation settings of the wrong type are named at construction
    for field, bad in (
        ("num_beams", "two"),
        ("num_beams", 0),
        ("max_new_tokens", 1.5),
        ("temperature", "hot"),
        ("top_k", -1),
        ("do_sample", "yes"),
        ("seed", "s"),
    ):
        with pytest.raises(ConfigError, match=rf"recipe\.{field}.*{bad!r}"):
            DiaLlamaConfig.from_dict({**TINY, field: bad})
    with pytest.raises(ConfigError, match="model.tokenizer: expected a path"):
        _tokenizer_file(5)


def test_synth_section_is_checked_and_ensure_reuses_a_matching_set(tmp_path):
    m = tiny()
    root = tmp_path / "ct"
    for synth, what in (
        ({"kind": "chest-ct"}, r"missing key\(s\) \['n'\]"),
        ({"kind": "chest-ct", "n": 2, "sed": 1}, r"unknown key\(s\) \['sed'\]"),
    ):
        with pytest.raises(ConfigError, match=what):
            m.datasets({"format": "ctrg-chest", "root": str(root), "synth": synth})
    assert not root.exists()
    spec = {"kind": "chest-ct", "n": 4, "seed": 1, "shape": [16, 16, 8]}
    d = {"format": "ctrg-chest", "root": str(root), "synth": spec, "eval_split": None}
    train, _ = m.datasets(d)
    assert (root / "synth.json").is_file() and len(train) >= 1
    again, _ = m.datasets(d)  # root exists: ensure checks it holds the same set and reuses it
    assert [again[i]["id"] for i in range(len(again))] == [
        train[i]["id"] for i in range(len(train))
    ]
    with pytest.raises(
        ConfigError, match="different synthetic dataset"
    ):  # no longer silently skipped
        m.datasets({**d, "synth": {**spec, "seed": 2}})


def test_refuses_another_recipes_folder(tmp_path):
    d = tmp_path / "other"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"recipe": "rad3d_prefix"}))
    with pytest.raises(CheckpointError, match="rad3d_prefix"):
        DiaLlama.from_pretrained(d)
    with pytest.raises(CheckpointError, match="no config.json"):
        DiaLlama.from_pretrained(tmp_path / "nothing")


def test_config_files_parse():
    import pathlib

    import yaml

    from voxlm.train import TrainingArguments

    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("dia_llama-*.yaml"))
    assert {f.name for f in files} >= {"dia_llama-tiny.yaml", "dia_llama-ctrg.yaml"}
    for f in files:
        cfg = yaml.safe_load(f.read_text())
        assert cfg["recipe"]["name"] == "dia_llama"
        DiaLlamaConfig.from_dict(cfg["recipe"])
        TrainingArguments.from_dict(cfg["train"])
        assert cfg["data"]["format"] in ("ctrg-chest", "ct-rate")


def test_cli_train_and_evaluate_tiny_config(tmp_path):
    """``python -m voxlm train configs/dia_llama-tiny.yaml --output-dir RUN`` then ``voxlm
    evaluate RUN``: the tiny config as shipped, shortened (2 steps, 12 smaller synthetic cases,
    8 new tokens) to keep the test fast."""
    import os
    import pathlib
    import subprocess
    import sys

    import yaml

    root = pathlib.Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "configs" / "dia_llama-tiny.yaml").read_text())
    cfg["data"]["root"] = str(tmp_path / "data")
    cfg["data"]["synth"] = {"kind": "chest-ct", "n": 12, "seed": 0, "shape": [32, 32, 16]}
    cfg["train"]["max_steps"] = 2
    cfg["recipe"]["max_new_tokens"] = 8
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
    assert json.loads((run / "model" / "config.json").read_text())["recipe"] == "dia_llama"
    assert (run / "finetune" / "metrics.csv").is_file()
    p = subprocess.run(
        [sys.executable, "-m", "voxlm", "evaluate", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert ev["n"] >= 1 and "BLEU-4" in ev and "clinical_efficacy" in ev
    assert (run / "eval" / "predictions.csv").is_file()


# ------------------------------------------------------------------------------------------
# the whole method vs a transcription of the released model
#
# Transcribed from zhi-xuan-chen/Dia-LLaMA src/Model/DiaLLaMA/helpers.py (PerceiverAttention,
# PerceiverResampler; einops_exts.rearrange_many written as one rearrange per tensor),
# my_embedding_layer.py (MyEmbedding: the two hard-coded views ``view(-1, 1024, 768)`` take the
# token count and width as parameters, the rest verbatim) and multimodality_model.py
# (MultiLLaMAForCausalLM.forward without its rank-0 print; the LLM is transformers'
# LlamaForCausalLM wrapped by peft.get_peft_model with the released LoraConfig). The ViT is the
# RadFM transcription of tests/test_radfm_vit_vs_reference.py.


def _ref_modules():
    from einops import rearrange, repeat
    from torch import einsum, nn

    def exists(val):
        return val is not None

    def FeedForward(dim, mult=4):
        inner_dim = int(dim * mult)
        return nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, inner_dim, bias=False),
            nn.GELU(),
            nn.Linear(inner_dim, dim, bias=False),
        )

    class PerceiverAttention(nn.Module):
        def __init__(self, *, dim, dim_head=64, heads=8):
            super().__init__()
            self.scale = dim_head**-0.5
            self.heads = heads
            inner_dim = dim_head * heads
            self.norm_media = nn.LayerNorm(dim)
            self.norm_latents = nn.LayerNorm(dim)
            self.to_q = nn.Linear(dim, inner_dim, bias=False)
            self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
            self.to_out = nn.Linear(inner_dim, dim, bias=False)

        def forward(self, x, latents):
            x = self.norm_media(x)
            latents = self.norm_latents(latents)
            h = self.heads
            q = self.to_q(latents)
            kv_input = torch.cat((x, latents), dim=-2)
            k, v = self.to_kv(kv_input).chunk(2, dim=-1)
            q, k, v = (rearrange(t, "b t n (h d) -> b h t n d", h=h) for t in (q, k, v))
            q = q * self.scale
            sim = einsum("... i d, ... j d  -> ... i j", q, k)
            sim = sim - sim.amax(dim=-1, keepdim=True).detach()
            attn = sim.softmax(dim=-1)
            out = einsum("... i j, ... j d -> ... i d", attn, v)
            out = rearrange(out, "b h t n d -> b t n (h d)", h=h)
            return self.to_out(out)

    class PerceiverResampler(nn.Module):
        def __init__(
            self,
            *,
            dim,
            depth=6,
            dim_head=64,
            heads=8,
            num_latents=64,
            max_num_media=None,
            max_num_frames=None,
            ff_mult=4,
        ):
            super().__init__()
            self.latents = nn.Parameter(torch.randn(num_latents, dim))
            self.frame_embs = (
                nn.Parameter(torch.randn(max_num_frames, dim)) if exists(max_num_frames) else None
            )
            self.media_time_embs = (
                nn.Parameter(torch.randn(max_num_media, 1, dim)) if exists(max_num_media) else None
            )
            self.layers = nn.ModuleList([])
            for _ in range(depth):
                self.layers.append(
                    nn.ModuleList(
                        [
                            PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads),
                            FeedForward(dim=dim, mult=ff_mult),
                        ]
                    )
                )
            self.norm = nn.LayerNorm(dim)

        def forward(self, x):
            b, T, F_, v = x.shape[:4]
            if exists(self.frame_embs):
                frame_embs = repeat(self.frame_embs[:F_], "F d -> b T F v d", b=b, T=T, v=v)
                x = x + frame_embs
            x = rearrange(x, "b T F v d -> b T (F v) d")
            if exists(self.media_time_embs):
                x = x + self.media_time_embs[:T]
            latents = repeat(self.latents, "n d -> b T n d", b=b, T=T)
            for attn, ff in self.layers:
                latents = attn(x, latents) + latents
                latents = ff(latents) + latents
            return self.norm(latents)

    class MyEmbedding(nn.Module):
        def __init__(
            self,
            vit,
            n_tokens,
            num_embeddings,
            embedding_dim,
            perceiver_num=32,
            vis_dim=768,
            proj_dim=768,
            perceiver_kw=None,
        ):
            super().__init__()
            self.n_tokens = n_tokens
            self.num_embeddings = num_embeddings
            self.embedding_dim = embedding_dim
            self.weight = nn.Parameter(
                torch.torch.randn((num_embeddings, embedding_dim)), requires_grad=True
            )
            self.figure_token_weight = nn.Parameter(
                torch.randn((2, embedding_dim)), requires_grad=True
            )
            self.vision_encoder = vit
            self.vis_dim = vis_dim
            self.perceiver = PerceiverResampler(
                dim=self.vis_dim, num_latents=perceiver_num, **(perceiver_kw or {})
            )
            self.fc = nn.Linear(self.vis_dim, self.embedding_dim)
            self.prototype = nn.Parameter(torch.randn((14, n_tokens)), requires_grad=True)
            self.group_cls_head = nn.ModuleList([nn.Linear(self.vis_dim, 2) for _ in range(14)])
            self.proj = nn.Linear(self.vis_dim, proj_dim)
            self.pos_sample_memory = nn.Parameter(torch.randn(14, 1, proj_dim))
            self.neg_sample_memory = nn.Parameter(torch.randn(14, 1, proj_dim))
            self.temp = nn.Parameter(0.07 * torch.ones([]))

        def forward(
            self, vision_x, cls_labels=None, text_input=None, key_words_query=None, mode=None
        ):
            B, S, C, H, W, D = vision_x.shape
            vision_x = rearrange(vision_x, "b S c h w d-> (b S) c h w d")
            vision_x, pos_embedding = self.vision_encoder(vision_x)
            prototype = self.prototype.unsqueeze(0).unsqueeze(-1)
            prototype = F.softmax(prototype, dim=-2)
            group_vision_x = vision_x.unsqueeze(1)
            group_vision_x = group_vision_x * prototype
            cls_logits = []
            for i in range(14):
                cls_logits.append(self.group_cls_head[i](group_vision_x[:, i].sum(dim=1)))
            cls_logits = torch.cat(cls_logits, dim=1)
            cls_logits = cls_logits.view(-1, 14, 2)
            cls_logits = cls_logits.permute(0, 2, 1).contiguous()
            if mode == "train":
                group_vision_x = group_vision_x.view(-1, self.n_tokens, self.vis_dim)
                group_vision_x = group_vision_x.sum(dim=1)
                all_memory_samples = []
                for i in range(B):
                    cls_label = cls_labels[i]
                    for n, j in enumerate(cls_label):
                        memory_samples = []
                        if j == 0:
                            memory_samples.append(self.neg_sample_memory[n])
                            memory_samples.append(self.pos_sample_memory[n])
                            all_memory_samples.append(torch.cat(memory_samples, dim=0))
                        else:
                            memory_samples.append(self.pos_sample_memory[n])
                            memory_samples.append(self.neg_sample_memory[n])
                            all_memory_samples.append(torch.cat(memory_samples, dim=0))
                all_memory_samples = torch.stack(all_memory_samples, dim=0)
                all_memory_samples_feats = F.normalize(all_memory_samples, dim=-1)
                group_vision_x = self.proj(group_vision_x)
                group_vision_x = group_vision_x.unsqueeze(1)
                current_sample_feats = F.normalize(group_vision_x, dim=-1)
                sim = torch.matmul(
                    current_sample_feats, all_memory_samples_feats.transpose(-1, -2)
                ).squeeze(1)
                sim = sim / self.temp
            elif mode == "cls":
                group_vision_x = group_vision_x.sum(dim=1)
                all_sim = []
                for i in range(14):
                    current_sample = group_vision_x[:, i]
                    memory_samples = []
                    memory_samples.append(self.pos_sample_memory[i])
                    memory_samples.append(self.neg_sample_memory[i])
                    memory_samples = torch.cat(memory_samples, dim=0)
                    memory_samples = memory_samples.unsqueeze(0).repeat(B, 1, 1)
                    memory_samples_feats = F.normalize(memory_samples, dim=-1)
                    current_sample_feats = F.normalize(
                        self.proj(current_sample).unsqueeze(1), dim=-1
                    )
                    sim = torch.matmul(
                        current_sample_feats, memory_samples_feats.transpose(-1, -2)
                    ).squeeze(1)
                    all_sim.append(sim)
                all_sim = torch.stack(all_sim, dim=1)
                return all_sim
            vision_x = rearrange(vision_x, "(b s F) v d -> b s F v d", b=B, s=S, F=1)
            vision_x = self.perceiver(vision_x)
            n = vision_x.shape[2]
            vision_x = rearrange(vision_x, "b s n d -> (b s n) d")
            vision_x = self.fc(vision_x)
            vision_x = rearrange(vision_x, "(b T) d -> b T d", b=B, T=n * S)
            embedding_weight = torch.cat([self.weight, self.figure_token_weight], dim=0)
            embedding_weight = embedding_weight.unsqueeze(0).repeat(B, 1, 1)
            embedding_weight = torch.cat([embedding_weight, vision_x], dim=1)
            text_input = (
                F.one_hot(text_input, embedding_weight.shape[1])
                .to(vision_x.dtype)
                .to(vision_x.device)
            )
            out_put = torch.matmul(text_input, embedding_weight)
            if mode == "train":
                return out_put, sim
            else:
                return out_put

    class MultiLLaMAForCausalLM(nn.Module):
        def __init__(self, lang_model, embedding_layer):
            super().__init__()
            self.lang_model = lang_model
            self.embedding_layer = embedding_layer
            self.embedding_layer.weight = self.lang_model.get_input_embeddings().weight

        def forward(
            self,
            lang_x,
            vision_x,
            cls_labels,
            attention_mask,
            labels,
            loss_reweight,
            key_words_query,
        ):
            B = vision_x.shape[0]
            input_embedding, sim = self.embedding_layer(
                vision_x, cls_labels, lang_x, key_words_query, mode="train"
            )
            output = self.lang_model(
                inputs_embeds=input_embedding, attention_mask=attention_mask, labels=labels
            )
            targets = torch.zeros(B * 14).to(sim.device)
            ctr_loss = F.cross_entropy(sim, targets.long())
            return dict(loss=output["loss"] + ctr_loss * 4)

    return MyEmbedding, MultiLLaMAForCausalLM


#: The RadFM ``vit_3d`` transcription at the sizes of :data:`TINY` (64 x 64 x 16 voxels, 8 x 8 x 4
#: patches, width 48, 2 layers).
REF_VIT = dict(
    image_size=64,
    image_patch_size=8,
    frames=16,
    frame_patch_size=4,
    dim=48,
    depth=2,
    heads=4,
    mlp_dim=96,
    channels=3,
    dim_head=12,
)


def released_reference(m: DiaLlama, llm: dict = LLM, lora_b_std: float = 0.05):
    """The released model for recipe ``m`` (built from :data:`TINY` and ``llm``):
    ``MultiLLaMAForCausalLM(lang, MyEmbedding)`` of :func:`_ref_modules` over transformers'
    ``LlamaForCausalLM`` (vocabulary 1024, untied) with peft's LoRA as released (r 8, alpha 32,
    dropout 0.1, PEFT's LLaMA targets q/v) and the :data:`REF_VIT` encoder; LoRA B drawn from
    ``N(0, lora_b_std)`` so the branch is visible. Returns ``(ref, emb)``. Shared with
    ``bench/bench_recipes.py``."""
    import transformers
    from peft import LoraConfig, get_peft_model

    from .test_radfm_vit_vs_reference import RefViT

    MyEmbedding, MultiLLaMAForCausalLM = _ref_modules()
    hf_cfg = transformers.LlamaConfig(vocab_size=1024, **llm, tie_word_embeddings=False)
    lang = get_peft_model(
        transformers.LlamaForCausalLM(hf_cfg),
        LoraConfig(
            task_type="CAUSAL_LM", inference_mode=False, r=8, lora_alpha=32, lora_dropout=0.1
        ),
    )
    emb = MyEmbedding(
        RefViT(**REF_VIT),
        m.num_vision_tokens,
        1024,
        llm["hidden_size"],
        perceiver_num=32,
        vis_dim=48,
        proj_dim=32,
        perceiver_kw=dict(depth=2, heads=2, dim_head=16),
    )
    ref = MultiLLaMAForCausalLM(lang, emb)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "lora_B" in n:
                p.normal_(0, lora_b_std)
    return ref, emb


def test_whole_model_vs_released_transcription(tmp_path):
    """The released MultiLLaMAForCausalLM (transcribed; real transformers + peft LLM), saved as
    its pytorch_model.bin, loads through ``DiaLlama.load_released``; on the same batch the loss
    (L_LM + 4 L_DP), the inference-time predictions (``inference_features="released"``) and the
    greedy generations (transformers' ``generate`` on the released embedding) agree. Tolerance:
    float32, 1e-5 on the loss (voxlm's Rust LLaMA / perceiver vs transformers / einsum may reorder
    sums; observed equal to the printed digits)."""
    m = tiny(inference_features="released")
    c = m.config
    torch.manual_seed(7)
    ref, emb = released_reference(m)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    skipped = m.load_released(tmp_path / "pytorch_model.bin")
    assert "embedding_layer.weight" in skipped and any("group_cls_head" in k for k in skipped)
    ref.eval()
    m.eval()
    b = m.collator()(items(2))
    vision_x = b["images"].permute(0, 1, 3, 4, 2)[:, None]  # [B, S=1, C, H, W, D]
    with torch.no_grad():
        want = ref(
            b["input_ids"], vision_x, b["cls_labels"], b["attention_mask"], b["labels"], None, None
        )["loss"]
        got = m(**b).loss
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        all_sim = emb(vision_x=vision_x, mode="cls")
        _, indice = torch.sort(all_sim, dim=2, descending=True)
        released = torch.where(indice[:, :, 0] == 0, torch.ones(1, 14), torch.zeros(1, 14)).long()
        tokens = m.vision_tokens(b["images"])
        assert torch.equal(m.predict_labels(m.inference_features(tokens)), released)
    assert c.inference_features == "released"
    assert np.array_equal(m.generate(b["images"], return_dict=True).labels, released.numpy())
    # prediction -> prompt -> generation: the released path (its embedding, transformers + peft
    # generate, greedy) writes the same tokens as the recipe
    for i in range(2):
        ids = torch.tensor([m.prompter.prompt_ids(m.prompter.question(released[i].tolist()))])
        with torch.no_grad():
            emb_in = emb(vision_x=vision_x[i : i + 1], text_input=ids)
            hf = ref.lang_model.generate(
                inputs_embeds=emb_in,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=m.prompter.eos,
                pad_token_id=m.prompter.pad,
            )
        ours = m.generate(b["images"][i : i + 1], return_dict=True, max_new_tokens=8).tokens
        assert ours[0, : hf.shape[1]].tolist() == hf[0].tolist()


def test_vit3d_encoder_option():
    m = tiny(vision="vit3d", vision_heads=4, vision_dim_head=12)
    assert type(m.vision).__name__ == "ViT3D" and m.num_vision_tokens == 2 * 4 * 4
    b = m.collator()(items(2))
    out = m(**b)
    assert torch.isfinite(out.loss)
    with pytest.raises(ConfigError, match="vision_heads x vision_dim_head"):
        tiny(vision="vit3d", vision_heads=4, vision_dim_head=16)


def test_radfm_weights_load_into_the_recipe(tmp_path):
    """A RadFM-style checkpoint (``embedding_layer.vision_encoder.*`` + ``embedding_layer.
    perceiver.*``; RadFM's fc maps to another width and is left out) loads through
    ``model.vision``; the recipe's vision tokens equal the RadFM transcription's output."""
    from .test_radfm_vit_vs_reference import RefViT

    torch.manual_seed(3)
    ref = RefViT(**REF_VIT).eval()
    donor = tiny()
    sd = {f"embedding_layer.vision_encoder.{k}": v for k, v in ref.state_dict().items()}
    sd.update(
        {
            f"embedding_layer.perceiver.{k}": torch.randn_like(v)
            for k, v in donor.perceiver.state_dict().items()
        }
    )
    sd["embedding_layer.fc.weight"] = torch.zeros(5120, 48)
    sd["embedding_layer.fc.bias"] = torch.zeros(5120)
    torch.save(sd, tmp_path / "radfm.bin")
    m = DiaLlama.from_config(TINY, {"llm": LLM, "vision": str(tmp_path / "radfm.bin")})
    m.eval()
    x = torch.rand(2, 3, 8, 32, 32)
    with torch.no_grad():
        want, _ = ref(x.permute(0, 1, 3, 4, 2))
        torch.testing.assert_close(m.vision_tokens(x), want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(m.perceiver.latents, sd["embedding_layer.perceiver.latents"])
    with pytest.raises(CheckpointError, match="no RadFM vit_3d keys"):
        torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.bin")
        DiaLlama.from_config(TINY, {"llm": LLM, "vision": str(tmp_path / "bad.bin")})


def test_ct_rate_labels(tmp_path):
    """CT-RATE (18 abnormality labels): ``conditions: ct-rate`` reads its records; the CheXbert
    default on that data is refused before training (ConfigError naming both label sets)."""
    from voxlm import synth

    synth.chest_ct(tmp_path / "ctrate", 6, seed=0, layout="ct-rate", shape=(32, 32, 16))
    data = {"format": "ct-rate", "root": str(tmp_path / "ctrate")}
    m = tiny(conditions="ct-rate")
    assert len(m.config.conditions) == 18
    train, ev = m.datasets(data)
    it = train[0]
    assert it["image"].shape == (3, 8, 32, 32) and float(it["image"].max()) == 1.0
    b = m.collator()([train[0], train[1]])
    assert b["cls_labels"].shape == (2, 18) and torch.isfinite(m(**b).loss)
    with pytest.raises(ConfigError, match="differ from the dataset's labels"):
        tiny().datasets(data)
