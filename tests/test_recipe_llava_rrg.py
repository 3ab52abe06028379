"""LLaVA-style RRG24 recipe (voxlm.recipes.llava_rrg) against LLaVA's released code
(haotian-liu/LLaVA) and transformers:

* ``llava/conversation.py``: ``Conversation.get_prompt`` (``SeparatorStyle.TWO``) and
  ``conv_vicuna_v1`` transcribed; the prompt must be byte-identical.
* ``llava/mm_utils.py`` / ``llava/train/train.py``: ``expand2square`` with
  ``tuple(int(x * 255) for x in image_mean)`` then transformers' ``CLIPImageProcessor`` configured
  as clip-vit-large-patch14-336 (the reference implementation, built here without a download).
* ``llava/model/multimodal_encoder/clip_encoder.py``: ``hidden_states[-2][:, 1:]`` of a
  transformers ``CLIPVisionModel`` saved with ``save_pretrained`` and loaded by voxlm.
* ``llava/model/multimodal_projector/builder.py``: ``mlp2x_gelu`` and an ``mm_projector.bin``.

Tolerances: pixel values 1e-6 (same PIL bicubic; float32 arithmetic order); vision features and
projector 1e-5 (libtorch vs transformers' eager attention, float32)."""

from __future__ import annotations

import csv
import json
import pathlib
import re

import numpy as np
import pytest
import torch
from torch import nn

import voxlm  # noqa: F401
from voxlm.exceptions import CheckpointError, ConfigError, ShapeError, VoxlmError
from voxlm.recipes import get_recipe
from voxlm.recipes import llava_rrg as L

transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")


# --------------------------------------------------------------------------------------------
# llava/conversation.py transcription (SeparatorStyle.TWO branch, conv_vicuna_v1)


class _Conv:
    system = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )
    roles = ("USER", "ASSISTANT")
    sep, sep2 = " ", "</s>"

    def __init__(self):
        self.messages = []

    def append_message(self, role, message):
        self.messages.append([role, message])

    def get_prompt(self):
        seps = [self.sep, self.sep2]
        ret = self.system + seps[0]
        for i, (role, message) in enumerate(self.messages):
            if message:
                ret += role + ": " + message + seps[i % 2]
            else:
                ret += role + ":"
        return ret


@pytest.mark.parametrize("answer", [None, "The lungs are clear. No effusion."])
def test_vicuna_v1_byte_identical(answer):
    q = "<image>\nDescribe the findings of the chest X-ray."
    conv = _Conv()
    conv.append_message(conv.roles[0], q)
    conv.append_message(conv.roles[1], answer)
    assert L.vicuna_v1_prompt(q, answer) == conv.get_prompt()


def _clip_processor(size):
    # LLaVA ran transformers 4's PIL CLIPImageProcessor; transformers 5 names it
    # CLIPImageProcessorPil (its default CLIPImageProcessor resizes with torchvision and differs
    # by one grey level in ~0.2 % of pixels)
    cls = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
    return cls(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(L.CLIP_MEAN),
        image_std=list(L.CLIP_STD),
        do_convert_rgb=True,
    )


@pytest.mark.parametrize("hw", [(90, 200), (210, 70), (64, 64)])
def test_pad_and_clip_preprocess_vs_transformers(hw):
    rng = np.random.default_rng(hw[0])
    img = PIL.fromarray(rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8))
    proc = _clip_processor(56)
    # llava/train/train.py: expand2square(image, tuple(int(x*255) for x in processor.image_mean))
    sq = L.expand2square(img, tuple(int(x * 255) for x in proc.image_mean))
    want = proc.preprocess(sq, return_tensors="pt")["pixel_values"][0]
    got = L.clip_preprocess(sq, 56)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert tuple(int(x * 255) for x in proc.image_mean) == (122, 116, 104)


def test_study_pixels_vs_pillow_path_and_transformers(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, size=(70, 50), dtype=np.uint8)
    b = rng.integers(0, 256, size=(60, 40), dtype=np.uint8)
    paths = []
    for k, im in enumerate((a, b)):
        PIL.fromarray(im).save(tmp_path / f"{k}.png")
        paths.append(str(tmp_path / f"{k}.png"))
    got = L.study_pixels(paths, size=56)
    sq = L.expand2square(PIL.fromarray(L.stitch_study([a, b])).convert("RGB"), (122, 116, 104))
    want = _clip_processor(56).preprocess(sq, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(L.clip_preprocess(sq, 56), want, atol=1e-6, rtol=1e-6)


def test_study_stitch_and_channel_check(tmp_path):
    a = np.full((40, 30), 200, np.uint8)
    b = np.full((30, 20), 100, np.uint8)
    PIL.fromarray(a).save(tmp_path / "a.png")
    PIL.fromarray(b).save(tmp_path / "b.png")
    s = L.stitch_study([a, b])
    assert s.shape == (40, 30 + 10 + 20) and s[20, 35] == 0 and s[20, 45] == 100
    px = L.study_pixels([str(tmp_path / "a.png"), str(tmp_path / "b.png")], size=56)
    assert px.shape == (3, 56, 56)
    with pytest.raises(ShapeError, match=r"different channel counts \[1, 3\]"):
        L.stitch_study([a, np.zeros((10, 10, 3), np.uint8)])


def _hf_clip(tmp_path, seed=0):
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
    )
    torch.manual_seed(seed)
    ref = transformers.CLIPVisionModel(cfg).eval()
    ref.save_pretrained(tmp_path / "clip")
    return ref


def _model(tmp_path, **recipe):
    _hf_clip(tmp_path)
    model = {
        "llm": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        "tokenizer": "bundled:ctrg-bpe",
        "vision": str(tmp_path / "clip"),
    }
    return L.LlavaRRG.from_config(
        {"name": "llava_rrg", "lora_r": 4, "lora_alpha": 8, **recipe}, model
    )


def test_vision_features_and_projector_vs_llava(tmp_path):
    ref = _hf_clip(tmp_path)
    m = _model(tmp_path).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        # clip_encoder.py feature_select: hidden_states[-2][:, 1:]
        want = ref(x, output_hidden_states=True).hidden_states[-2][:, 1:]
        got = m.image_features(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # builder.py mlp2x_gelu, loaded from LLaVA's mm_projector.bin key names
    torch.manual_seed(3)
    proj = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))
    torch.save(
        {f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()},
        tmp_path / "mm_projector.bin",
    )
    m.load_projector(tmp_path / "mm_projector.bin")
    with torch.no_grad():
        torch.testing.assert_close(m.project(want), proj(want), atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match=r"mm_projector\.0\.weight: shape \(64, 16\)"):
        m.load_projector(
            {
                "model.mm_projector.0.weight": torch.zeros(64, 16),
                "model.mm_projector.0.bias": torch.zeros(64),
                "model.mm_projector.2.weight": torch.zeros(64, 64),
                "model.mm_projector.2.bias": torch.zeros(64),
            }
        )


def test_labels_and_image_positions(tmp_path):
    m = _model(tmp_path)
    tok = m.tokenizer
    r = m.encode("No effusion.", "findings", "report")
    ids, img, lab = r["input_ids"], r["image_mask"], r["labels"]
    assert sum(img) == m.num_image_tokens == 16
    prompt = L.vicuna_v1_prompt(m.question("findings"))
    pre, post = prompt.split("<image>")
    start = 1 + len(tok.encode(pre, add_special_tokens=False))
    assert img[start : start + 16] == [True] * 16 and not any(img[:start])
    n_ans = len(tok.encode(" No effusion.", add_special_tokens=False)) + 1
    assert (
        all(v == -100 for v in lab[:-n_ans])
        and lab[-n_ans:] == ids[-n_ans:]
        and ids[-1] == tok.eos_token_id
    )

    def norm(t):  # the bundled CT-report BPE drops apostrophes and newlines
        return re.sub(r"[^0-9A-Za-z:.,]", "", t)

    assert norm(tok.decode([i for i, k in zip(ids, img) if not k])) == norm(
        prompt.replace("<image>", "") + " No effusion."
    )
    # stage 1: LLaVA's plain template, <image> + report + "\n", no EOS
    p = m.encode("No effusion.", "findings", "align")
    assert p["input_ids"][0] == tok.bos_token_id and sum(p["image_mask"]) == 16
    assert (
        p["labels"][:17] == [-100] * 17
        and tok.decode(p["input_ids"][17:]).strip() == "No effusion."
    )


def test_stage_trainables_and_adapter_switch(tmp_path):
    m = _model(tmp_path)
    m.set_stage("align")
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names == {
        "mm_projector.0.weight",
        "mm_projector.0.bias",
        "mm_projector.2.weight",
        "mm_projector.2.bias",
    }
    m.set_stage("report", "impression")
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names and all(".lora_A.impression." in n or ".lora_B.impression." in n for n in names)
    # the two adapters give different outputs once they differ, and switching is exact
    with torch.no_grad():
        for n, p in m.llm.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.5)
    b = m.collator()(
        [{"id": "x", "pixel_values": torch.randn(3, 56, 56), "findings": "a", "impression": "b"}]
    )
    from voxlm.adapters import set_adapter

    m.eval()  # no LoRA dropout
    with torch.no_grad():
        set_adapter(m.llm, "findings")
        f1 = m(**b).logits
        set_adapter(m.llm, "impression")
        i1 = m(**b).logits
        set_adapter(m.llm, "findings")
        f2 = m(**b).logits
    assert (f1 - i1).abs().max() > 1e-3
    torch.testing.assert_close(f1, f2, atol=0, rtol=0)


def _tiny(tmp_path):
    import yaml

    cfg = yaml.safe_load(
        (
            pathlib.Path(__file__).resolve().parents[1] / "configs" / "llava_rrg-tiny.yaml"
        ).read_text()
    )
    cfg["data"]["root"] = str(tmp_path / "data")
    cfg["train"]["output_dir"] = str(tmp_path / "run")
    return cfg


def test_end_to_end_tiny(tmp_path, monkeypatch):
    from voxlm.train import TrainingArguments, run_stages

    cfg = _tiny(tmp_path)
    cls = get_recipe("llava_rrg")
    model = cls.from_config(cfg["recipe"], cfg["model"])
    train, ev = model.datasets(cfg["data"])
    assert len(train) > 0 and ev is not None
    p0 = model.mm_projector[0].weight.detach().clone()
    out = run_stages(
        model,
        model.stages(TrainingArguments.from_dict(cfg["train"]).replace(max_steps=2)),
        train,
        ev,
        data_collator=model.collator(),
    )
    assert list(out) == ["stage1_projector", "stage2_findings", "stage2_impression"]
    assert not torch.equal(p0, model.mm_projector[0].weight)
    lb = {
        s: sum(
            float(p.detach().abs().sum())
            for n, p in model.llm.named_parameters()
            if f".lora_B.{s}." in n
        )
        for s in ("findings", "impression")
    }
    assert lb["findings"] > 0 and lb["impression"] > 0

    def n_words(refs, hyps):  # a scorer callable (as BERTScore / F1-RadGraph would be passed)
        return {"mean_words": float(np.mean([len(h.split()) for h in hyps]))}

    res = model.evaluate(ev, tmp_path / "eval", scorers={"length": n_words})
    assert {"BLEU-4", "ROUGE-L", "length", "n"} <= set(res["findings"])
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == res
    # eval.json says what was computed and which of RRG24's metrics were not (no scorer for them)
    assert res["metrics"] == {
        "computed": ["BLEU-4", "ROUGE-L", "length"],
        "not_computed": ["BERTScore", "F1-CheXbert", "F1-RadGraph"],
    }
    # scorers by import path in the recipe config (how the CLI gets them)
    (tmp_path / "word_count.py").write_text(
        "def mean_words(refs, hyps):\n    return sum(len(h.split()) for h in hyps) / len(hyps)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model.cfg.scorers = ["word_count:mean_words"]
    res2 = model.evaluate(ev)
    assert res2["findings"]["mean_words"] == pytest.approx(res["findings"]["length"]["mean_words"])
    assert res2["metrics"]["computed"] == ["BLEU-4", "ROUGE-L", "mean_words"]
    model.cfg.scorers = {"words": "word_count:no_such_fn"}
    with pytest.raises(ConfigError, match="word_count:no_such_fn"):
        model.evaluate(ev)
    model.cfg.scorers = []
    # one split through the per-split builder (the CLI's --split test path)
    assert [r["id"] for r in model.dataset(cfg["data"], "validation").records] == [
        r["id"] for r in ev.records
    ]
    rows = list(csv.DictReader(open(tmp_path / "eval" / "predictions.csv")))
    assert {"findings_generated", "impression_generated", "findings_reference"} <= set(rows[0])
    model.save_pretrained(tmp_path / "model")
    saved = sorted(p.name for p in (tmp_path / "model" / "adapters").iterdir())
    assert saved == ["findings", "impression"]
    assert re.search(
        "mm_projector.0.weight",
        (tmp_path / "model" / "mm_projector.safetensors").read_bytes()[:400].decode("latin1"),
    )
    again = cls.from_pretrained(tmp_path / "model")
    model.eval()
    again.eval()
    px = torch.stack([ev[0]["pixel_values"]])
    for s in ("findings", "impression"):
        assert again.generate(px, s) == model.generate(px, s)
    b = model.collator()([train[0]])
    with torch.no_grad():
        torch.testing.assert_close(again(**b).logits, model(**b).logits, atol=0, rtol=0)


def test_forward_vs_transformers_peft_llava_flow(tmp_path):
    """The whole stage-2 forward against transformers + peft on the same weights, as LLaVA's
    ``encode_images`` + ``prepare_inputs_labels_for_multimodal`` compose them: CLIPVisionModel
    hidden_states[-2][:, 1:] -> mm_projector -> image embeddings in place of ``<image>`` ->
    LlamaForCausalLM with the saved PEFT adapter. Tolerance 1e-4 (float32, 2 layers)."""
    peft = pytest.importorskip("peft")
    ref_clip = _hf_clip(tmp_path)
    m = _model(tmp_path, lora_dropout=0.0).eval()
    with torch.no_grad():
        for n, p in m.llm.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.2)
    m.save_pretrained(tmp_path / "saved")
    base = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "saved" / "llm").eval()
    ref = peft.PeftModel.from_pretrained(
        base, tmp_path / "saved" / "adapters" / "impression"
    ).eval()
    proj = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))
    proj.load_state_dict(m.mm_projector.state_dict())
    m.set_stage("report", "impression")
    m.eval()
    items = [
        {"id": str(i), "pixel_values": torch.randn(3, 56, 56), "findings": "x", "impression": t}
        for i, t in enumerate(["No acute disease.", "Small left effusion. No pneumothorax."])
    ]
    b = m.collator()(items)
    with torch.no_grad():
        got = m(**b)
        feats = ref_clip(b["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:]
        emb = ref.get_input_embeddings()(b["input_ids"])
        emb = emb.masked_scatter(b["image_mask"].unsqueeze(-1), proj(feats).reshape(-1, 64))
        want = ref(inputs_embeds=emb, attention_mask=b["attention_mask"], labels=b["labels"])
    valid = b["attention_mask"].bool()
    torch.testing.assert_close(got.logits[valid], want.logits[valid], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)


def test_config_and_data_errors_are_named(tmp_path):
    for field, value in (
        ("max_images", "x"),
        ("sections", 5),
        ("num_beams", 2.5),
        ("lora_r", None),
        ("lora_r", 0),
        ("max_new_tokens", -1),
    ):
        with pytest.raises(
            ConfigError, match=rf"recipe\.{field}: expected .*got {re.escape(repr(value))}"
        ):
            L.LlavaRRGConfig.from_dict({field: value})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['lora_rank'\]"):
        L.LlavaRRGConfig.from_dict({"name": "llava_rrg", "lora_rank": 8})
    with pytest.raises(ConfigError, match="module:function"):
        L.LlavaRRGConfig.from_dict({"scorers": ["no_colon"]})
    model = _model(tmp_path)
    data = {"format": "mimic-cxr", "root": str(tmp_path / "cxr")}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sectoin'\].*'views'"):
        model.datasets({**data, "sectoin": "findings"})  # a typo of a reader option
    for synth, msg in (
        ({"kind": "chest-xray"}, r"missing key\(s\) \['n'\]"),
        ({"kind": "chest-xray", "n": 2, "sede": 1}, r"unknown key\(s\) \['sede'\]"),
    ):
        with pytest.raises(ConfigError, match=msg):
            model.datasets({**data, "synth": synth})
    assert not (tmp_path / "cxr").exists()
    # the reader registry itself checks options against the reader's signature
    from voxlm.datasets import read_records

    with pytest.raises(
        ConfigError, match=r"\['colour'\].*'mimic-cxr' reader; it accepts: section, "
    ):
        read_records("mimic-cxr", tmp_path, colour=True)


def test_unreadable_image_is_a_voxlm_error(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(VoxlmError, match="broken.png"):
        L.read_image(str(bad))  # no silent second decoder
    ok = tmp_path / "ok.png"
    PIL.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(ok)
    np.testing.assert_array_equal(
        L.read_image(str(ok)), np.arange(48, dtype=np.uint8).reshape(6, 8)
    )
