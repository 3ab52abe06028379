"""recipe vit3d_llama (M3D-LaMed / ViT3D-LLaMA3) end to end on tiny models and hand-made data.

References: MONAI ViT (random weights saved as M3D saves ``pretrained_ViT.bin`` and M3D-CLIP)
for the vision weights, tolerance 1e-5 (fp32, same ops in another order); transformers'
``resize_token_embeddings`` and ``PreTrainedTokenizerFast.add_special_tokens`` for the added
``<im_patch>`` (exact: same RNG draws, same ids); transformers ``LlamaForCausalLM.generate`` +
PEFT for the saved model's generations (token-identical).
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch

import voxlm
from voxlm.adapters import LoraConfig
from voxlm.exceptions import CheckpointError, ConfigError, DataError, ShapeError
from voxlm.llm import LlamaConfig, LlamaForCausalLM
from voxlm.recipes import ViT3DLlama, get_recipe
from voxlm.recipes.vit3d_llama import (
    CAPTION_TEMPLATES,
    Config,
    add_tokens_to_tokenizer_json,
    expand_records,
    load_vision_weights,
    resize_token_embeddings,
)
from voxlm.vision import ViT3D

TINY = dict(
    img_size=[8, 32, 32],
    patch_size=[4, 16, 16],
    vision_hidden_size=32,
    vision_mlp_dim=64,
    vision_layers=2,
    vision_heads=4,
    lora_r=4,
    lora_alpha=8,
    max_new_tokens=6,
    max_length=96,
    meteor=False,
)
TINY_LLM = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def tiny(**over):
    return get_recipe("vit3d_llama").from_config(
        {"name": "vit3d_llama", **TINY, **over}, {"llm": TINY_LLM, "tokenizer": "bundled:ctrg-bpe"}
    )


@pytest.fixture(scope="module")
def llama3_tok(tmp_path_factory):
    """A LLaMA-3-style tokenizer.json (byte-level BPE, <|begin_of_text|> BOS by the post-processor,
    <|end_of_text|> / <|eot_id|> special) trained with `tokenizers` on the bundled reports."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    from voxlm.datasets import dia_llama_results

    d = tmp_path_factory.mktemp("llama3tok")
    data = dia_llama_results()
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok.train_from_iterator(
        data.references, trainers.BpeTrainer(vocab_size=400, special_tokens=specials)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|end_of_text|>",
                "add_bos_token": False,
            }
        )
    )
    return d


# -- config and the class-token fix -------------------------------------------------------------


def test_config_defaults_are_m3d_released_code():
    c = Config()
    assert (c.img_size, c.patch_size, c.vision_hidden_size, c.vision_layers, c.vision_heads) == (
        (32, 256, 256),
        (4, 16, 16),
        768,
        12,
        12,
    )
    assert (
        c.classification
        and c.vision_select_feature == "patch"
        and c.vision_proj_type == "perceptron"
    )
    assert c.num_image_tokens == 256 and c.grid == (8, 16, 16)
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_target_modules) == (
        16,
        32,
        0.05,
        "all-linear",
    )
    assert (c.stage1_learning_rate, c.stage2_learning_rate, c.stage1_epochs, c.warmup_ratio) == (
        1e-4,
        5e-5,
        3,
        0.03,
    )
    assert (
        c.lr_scheduler_type == "cosine"
        and c.train_vision
        and c.max_new_tokens == 256
        and c.num_beams == 1
    )
    assert len(CAPTION_TEMPLATES) == 42


def test_m3d_encoder_with_class_token_reaches_projector_as_256_tokens():
    """M3D's 32x256x256 / 4x16x16 encoder with its class token (2049 tokens) used to hit the
    pooling projector (ShapeError); the 'patch' selection drops the class token."""
    vision = ViT3D(
        img_size=(32, 256, 256),
        patch_size=(4, 16, 16),
        hidden_size=16,
        mlp_dim=32,
        num_layers=1,
        num_heads=2,
        proj_type="perceptron",
        classification=True,
    )
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
        )
    )
    cfg = Config(vision_hidden_size=16, vision_mlp_dim=32, vision_layers=1, vision_heads=2)
    m = ViT3DLlama(vision, llm, image_token_id=5, config=cfg)
    x = torch.rand(1, 1, 32, 256, 256)
    with torch.no_grad():
        tokens, _ = vision(x)
        feats = m.encode_images(x)
    assert tokens.shape == (1, 2049, 16) and feats.shape == (1, 256, 24)
    ref = torch.nn.functional.avg_pool3d(tokens[:, 1:].transpose(1, 2).reshape(1, 16, 8, 16, 16), 2)
    ref = ref.flatten(2).transpose(1, 2)
    p = m.projector.projector
    ref = p[2](torch.nn.functional.gelu(p[0](ref)))
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ShapeError, match="class token"):
        Config(vision_select_feature="cls_patch")


# -- pretrained parts ----------------------------------------------------------------------------


def test_m3d_clip_vision_weights_load_into_vit3d(tmp_path):
    from monai.networks.nets import ViT
    from safetensors.torch import save_file

    ref = ViT(
        in_channels=1,
        img_size=(8, 32, 32),
        patch_size=(4, 16, 16),
        hidden_size=32,
        mlp_dim=64,
        num_layers=2,
        num_heads=4,
        proj_type="perceptron",
        classification=True,
        qkv_bias=False,
    ).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.normal_(0, 0.2) if "norm" not in n else p.normal_(1, 0.1)
    # M3D's own ViT has no classification head: its pretrained_ViT.bin holds the encoder keys only
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("classification_head")}
    torch.save(sd, tmp_path / "pretrained_ViT.bin")
    clip = {f"vision_encoder.{k}": v.clone() for k, v in sd.items()}
    clip.update(
        {
            "mm_vision_proj.weight": torch.randn(32, 32),
            "language_encoder.embeddings.word_embeddings.weight": torch.randn(10, 32),
            "logit_scale": torch.tensor(2.0),
        }
    )
    (tmp_path / "clip").mkdir()
    save_file(clip, str(tmp_path / "clip" / "model.safetensors"))
    x = torch.rand(2, 1, 8, 32, 32)
    with torch.no_grad():
        _, hidden = ref(x)
        want = ref.norm(hidden[-1])[:, 1:]
    for src in (
        tmp_path / "pretrained_ViT.bin",
        tmp_path / "clip",
        tmp_path / "clip" / "model.safetensors",
    ):
        m = get_recipe("vit3d_llama").from_config(
            {**TINY}, {"llm": TINY_LLM, "tokenizer": "bundled:ctrg-bpe", "vision": str(src)}
        )
        with torch.no_grad():
            got, _ = m.vision(x)
        torch.testing.assert_close(got[:, 1:], want, rtol=1e-5, atol=1e-5)
    bad = ViT3D(
        img_size=(8, 32, 32),
        patch_size=(4, 16, 16),
        hidden_size=16,
        mlp_dim=64,
        num_layers=2,
        num_heads=4,
        proj_type="perceptron",
        classification=True,
    )
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_vision_weights(bad, tmp_path / "pretrained_ViT.bin")


def test_im_patch_added_to_llama3_tokenizer_as_transformers_adds_it(llama3_tok, tmp_path):
    from transformers import PreTrainedTokenizerFast

    ref = PreTrainedTokenizerFast(
        tokenizer_file=str(llama3_tok / "tokenizer.json"),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
    )
    n0 = len(ref)
    ref.add_special_tokens({"additional_special_tokens": ["<im_patch>", "<bx_start>", "<bx_end>"]})
    ref.add_tokens("[SEG]")
    m = get_recipe("vit3d_llama").from_config(
        {**TINY}, {"llm": TINY_LLM, "tokenizer": str(llama3_tok)}
    )
    tok = m.tokenizer
    assert tok.vocab_size == len(ref) == n0 + 4 and m.llm.config.vocab_size == len(ref)
    assert m.image_token_id == ref.convert_tokens_to_ids("<im_patch>") == n0
    for text in [
        "<im_patch>" * 4 + " What organ is shown? Choices: A. liver B. lung",
        "no [SEG] here <bx_start>",
    ]:
        assert tok.encode(text) == ref(text)["input_ids"]
    emb = m.llm.get_input_embeddings().weight.detach()
    torch.testing.assert_close(
        emb[n0:], emb[:n0].mean(0, keepdim=True).expand(4, -1)
    )  # M3D's exact mean
    with pytest.raises(ConfigError, match="<im_patch>"):
        get_recipe("vit3d_llama").from_config(
            {**TINY, "add_image_token": False}, {"llm": TINY_LLM, "tokenizer": str(llama3_tok)}
        )
    tj = json.loads((llama3_tok / "tokenizer.json").read_text())
    assert add_tokens_to_tokenizer_json(tj, ["<im_patch>"]) == ["<im_patch>"]
    assert add_tokens_to_tokenizer_json(tj, ["<im_patch>"]) == []  # already there


@pytest.mark.parametrize(
    "vocab,hidden", [(200, 16), (20, 32)]
)  # covariance positive definite / singular
def test_resize_token_embeddings_equals_transformers(tmp_path, vocab, hidden):
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM as HFLlama

    torch.manual_seed(0)
    hf = HFLlama(
        HFConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            bos_token_id=1,
            eos_token_id=2,
        )
    ).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    m3d = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.manual_seed(7)
    hf.resize_token_embeddings(vocab + 4)
    torch.manual_seed(7)
    assert resize_token_embeddings(ours, vocab + 4, init="transformers") == 4
    assert torch.equal(ours.model.embed_tokens.weight, hf.model.embed_tokens.weight)
    assert torch.equal(ours.lm_head.weight, hf.lm_head.weight)
    ids = torch.tensor([[1, vocab, vocab + 3, 5]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=1e-5, atol=1e-5)
    # M3D: transformers' resize, then the new input and output rows set to the old rows' mean
    with torch.no_grad():
        hf.model.embed_tokens.weight[-4:] = hf.model.embed_tokens.weight[:-4].mean(0, keepdim=True)
        hf.lm_head.weight[-4:] = hf.lm_head.weight[:-4].mean(0, keepdim=True)
    resize_token_embeddings(m3d, vocab + 4, init="m3d")
    assert torch.equal(m3d.model.embed_tokens.weight, hf.model.embed_tokens.weight)
    assert torch.equal(m3d.lm_head.weight, hf.lm_head.weight)


# -- stages ------------------------------------------------------------------------------------


def test_recipe_stages_train_the_right_parameters():
    """(Moved from test_demo_recipe.py.) The parts-level switch ``stage(n)``: projector, then
    projector + LoRA; and the recipe's stages as the released M3D code sets them."""
    vision = ViT3D(
        img_size=(8, 32, 32),
        patch_size=(4, 16, 16),
        hidden_size=16,
        mlp_dim=32,
        num_layers=1,
        num_heads=2,
    )
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
        )
    )
    m = ViT3DLlama(vision, llm, image_token_id=5)
    assert m.num_image_tokens == 1  # 2x2x2 grid pooled by 2
    m.stage(1)
    assert {k.split(".")[0] for k, p in m.named_parameters() if p.requires_grad} == {"projector"}
    m.stage(2, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    names = [k for k, p in m.named_parameters() if p.requires_grad]
    assert any("lora_A" in k for k in names) and not any("vision" in k for k in names)
    ids = torch.tensor([[5, 7, 8, 9]])
    out = m(torch.randn(1, 1, 8, 32, 32), ids, labels=ids)
    out.loss.backward()
    assert m.projector.projector[0].weight.grad is not None

    r = tiny()
    r.set_stage(1)
    assert {k for k, p in r.named_parameters() if p.requires_grad} == {
        "projector.projector.0.weight",
        "projector.projector.0.bias",
        "projector.projector.2.weight",
        "projector.projector.2.bias",
        "llm.model.embed_tokens.weight",
    }
    r.set_stage(2)
    on = {k for k, p in r.named_parameters() if p.requires_grad}
    lora = {k for k in on if ".lora_" in k}
    assert len(lora) == 2 * 7 * 2  # A and B on the 7 linears of both layers (all-linear, no head)
    assert {k for k in on - lora if k.startswith("llm.")} == {
        "llm.model.embed_tokens.weight",
        "llm.lm_head.weight",
    }
    assert all(p.requires_grad for p in r.vision.parameters())
    r2 = tiny(train_vision=False, stage2_train_embeddings=False)
    r2.set_stage(2)
    assert not any(p.requires_grad for p in r2.vision.parameters())
    assert not r2.llm.lm_head.weight.requires_grad
    # the LoRA-vs-frozen ablation: no LoRA, nothing of the LLM trains in stage 2
    r3 = tiny(stage2_lora=False, stage2_train_embeddings=False)
    r3.set_stage(2)
    assert not r3.has_lora()
    assert not any(p.requires_grad for p in r3.llm.parameters())
    assert any(p.requires_grad for p in r3.projector.parameters())
    assert all(p.requires_grad for p in r3.vision.parameters())


def test_stages_for_the_trainer(tmp_path):
    from voxlm.train import Stage, TrainingArguments

    r = tiny()
    st = r.stages(
        TrainingArguments(output_dir=str(tmp_path), learning_rate=1.0, num_train_epochs=9)
    )
    assert [s.name for s in st] == ["stage1-projector", "stage2-lora"] and all(
        isinstance(s, Stage) for s in st
    )
    assert (st[0].args.learning_rate, st[0].args.num_train_epochs, st[1].args.learning_rate) == (
        1e-4,
        3,
        5e-5,
    )
    assert st[0].args.lr_scheduler_type == "cosine" and st[1].args.warmup_ratio == 0.03
    st[1].set_trainable(r)
    assert r.has_lora()


# -- tasks and batches ---------------------------------------------------------------------------


def test_tasks_prompts_and_batches():
    recs = [
        {
            "id": "a",
            "image": "x.nii.gz",
            "report": "chest ok. liver ok.",
            "sections": {"chest": "chest ok.", "abdomen": " liver ok. ", "pelvis": ""},
        },
        {"id": "b", "image": "y.nii.gz", "report": "heart is normal."},
    ]
    s = expand_records(recs, "report")
    assert [(x["id"], x["region"], x["target"]) for x in s] == [
        ("a", "chest", "chest ok."),
        ("a", "abdomen", "liver ok."),
        ("b", "", "heart is normal."),
    ]
    assert s[0]["prompt"].endswith("chest region in this CT scan.") and s[2]["prompt"] is None
    assert len(expand_records(recs, "report", per_region=False)) == 2
    q = [
        {
            "id": "q",
            "image": "z.npy",
            "question": "Which organ is abnormal",
            "question_type": "3",
            "choices": {"A": "liver", "B": "lung", "C": "kidney", "D": "spleen"},
            "answer": "B",
            "answer_text": "lung",
        }
    ]
    c = expand_records(q, "vqa-close")[0]
    assert c["prompt"] == "Which organ is abnormal Choices: A. liver B. lung C. kidney D. spleen"
    assert c["target"] == "B. lung" and expand_records(q, "vqa-open")[0]["target"] == "lung"

    r = tiny()
    img = torch.rand(1, 8, 32, 32)
    items = [{"image": img, **s[0]}, {"image": img, **c}, {"image": img, **s[2]}]
    b = r.collator()(items)
    tok = r.tokenizer
    n_img = (b["input_ids"] == r.image_token_id).sum(1)
    assert n_img.tolist() == [r.num_image_tokens] * 3
    q_text = tok.decode(
        [t for t in b["input_ids"][1].tolist() if t != tok.pad_token_id], skip_special_tokens=True
    )
    assert q_text.startswith(" Which organ is abnormal Choices: A. liver") and q_text.endswith(
        "B. lung"
    )
    lab = b["labels"][1]
    assert tok.decode(lab[lab != -100].tolist()).strip() == "B. lung"
    assert (
        int((lab != -100).sum()) == len(tok.encode(" B. lung", add_special_tokens=False)) + 1
    )  # + EOS
    caption = tok.decode(b["input_ids"][2].tolist(), skip_special_tokens=True)
    assert any(caption.startswith(t) for t in CAPTION_TEMPLATES)
    g = r.collator(generation=True)(items)
    assert g["attention_mask"][:, -1].all() and "labels" not in g
    assert tok.decode(g["input_ids"][2].tolist(), skip_special_tokens=True) == r.config.eval_prompt


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_named_before_training(tmp_path, llama3_tok):
    with pytest.raises(ConfigError, match="lora_rank"):
        tiny(lora_rank=8)
    with pytest.raises(ShapeError, match="cannot patch"):
        tiny(img_size=[10, 32, 32])
    r = tiny()
    with pytest.raises(ShapeError, match=r"expected \[B, 1, 8, 32, 32\]"):
        r.generate_text(torch.rand(1, 1, 8, 30, 32))
    with pytest.raises(ShapeError, match="spatial_size"):
        r.datasets({"format": "ctrg-chest", "root": str(tmp_path), "spatial_size": [8, 30, 32]})
    with pytest.raises(ConfigError, match="unknown field"):
        r.datasets({"format": "ctrg-chest", "root": str(tmp_path), "windw": [0, 1]})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"recipe": "dia_llama"}))
    with pytest.raises(CheckpointError, match="dia_llama"):
        ViT3DLlama.from_pretrained(tmp_path / "other")
    # generation settings, tokenizer files, empty datasets and synth sections: named errors
    for field, bad in (
        ("num_beams", "two"),
        ("num_beams", 0),
        ("max_new_tokens", 2.5),
        ("repetition_penalty", "high"),
        ("do_sample", "yes"),
    ):
        with pytest.raises(ConfigError, match=rf"recipe\.{field}.*{bad!r}"):
            Config(**{**TINY, field: bad})
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    shutil.copyfile(voxlm.datasets.HERE / "ctrg_bpe_tokenizer.json", tok_dir / "tokenizer.json")
    (tok_dir / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="tokenizer_config.json"):
        get_recipe("vit3d_llama").from_config(
            {**TINY}, {"llm": TINY_LLM, "tokenizer": str(tok_dir)}
        )
    with pytest.raises(DataError, match="empty"):
        r.evaluate([])
    for synth, what in (
        ({"kind": "chest-ct"}, r"missing key\(s\) \['n'\]"),
        ({"kind": "chest-ct", "n": 2, "sed": 1}, r"unknown key\(s\) \['sed'\]"),
    ):
        with pytest.raises(ConfigError, match=what):
            r.datasets({"format": "ctrg-chest", "root": str(tmp_path / "synth"), "synth": synth})


# -- train, save, reload, generate, evaluate ----------------------------------------------------


def _volumes(tmp_path, n):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        hu = np.full((40, 36, 12), -1000, np.int16)  # air around a body
        hu[6:34, 5:31, 2:10] = rng.integers(-100, 200, (28, 26, 8))
        p = tmp_path / f"ct_{i}.nii.gz"
        voxlm.save_volume(voxlm.Volume(hu, np.diag([0.8, 0.8, 2.5, 1.0])), p)
        paths.append(str(p))
    return paths


def _train(r, ds, steps=4, lr=3e-3):
    coll = r.collator()
    for stage in (1, 2):
        r.set_stage(stage)
        opt = torch.optim.AdamW([p for p in r.parameters() if p.requires_grad], lr=lr)
        r.train()
        for i in range(steps):
            b = coll([ds[(2 * i) % len(ds)], ds[(2 * i + 1) % len(ds)]])
            loss = r(**b).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    r.eval()
    return loss.item()


def test_train_save_reload_identical_generations_and_evaluate(tmp_path):
    from voxlm.metrics import report_scores

    paths = _volumes(tmp_path, 3)
    texts = ["the lungs are clear.", "small right pleural effusion.", "the heart is enlarged."]
    recs = [
        {
            "id": f"s{i}",
            "image": p,
            "report": t,
            "sections": {"chest": t, "abdomen": "liver normal.", "pelvis": ""},
        }
        for i, (p, t) in enumerate(zip(paths, texts))
    ]
    r = tiny(num_beams=2)
    ds = r.samples(recs)
    assert len(ds) == 6 and ds[0]["image"].shape == (1, 8, 32, 32)
    x = ds[0]["image"]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    loss = _train(r, ds)
    assert math.isfinite(loss)
    out = tmp_path / "model"
    r.save_pretrained(out)
    meta = json.loads((out / "config.json").read_text())
    assert meta["recipe"] == "vit3d_llama" and meta["embeddings"] == "full" and meta["lora"]
    assert (out / "adapter" / "adapter_config.json").is_file() and (
        out / "llm" / "config.json"
    ).is_file()
    images = torch.stack([ds[i]["image"] for i in range(4)])
    prompts = [ds[i]["prompt"] for i in range(4)]
    before = r.generate_text(images, prompts)
    back = ViT3DLlama.from_pretrained(out)
    assert back.generate_text(images, prompts) == before
    assert back.generate_text(images[:1], prompts[:1], num_beams=1) == r.generate_text(
        images[:1], prompts[:1], num_beams=1
    )
    res = back.evaluate(ds, tmp_path / "eval")
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (
        saved == res and res["task"] == "report" and set(res["per_region"]) == {"chest", "abdomen"}
    )
    import csv

    rows = list(csv.DictReader(open(tmp_path / "eval" / "predictions.csv", encoding="utf-8")))
    assert len(rows) == 6 and {r_["region"] for r_ in rows} == {"chest", "abdomen"}
    again = report_scores(
        [r_["reference"] for r_ in rows], [r_["prediction"] for r_ in rows], meteor=False
    )
    for k in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert res[k] == pytest.approx(again[k], abs=1e-12)


def test_vqa_close_accuracy(tmp_path):
    from voxlm.metrics import vqa_accuracy

    paths = _volumes(tmp_path, 2)
    ch = {"A": "liver", "B": "lung", "C": "kidney", "D": "spleen"}
    recs = [
        {
            "id": f"q{i}",
            "image": p,
            "question": "Which organ?",
            "choices": ch,
            "answer": "AB"[i],
            "answer_text": ch["AB"[i]],
            "question_type": str(i + 3),
        }
        for i, p in enumerate(paths)
    ]
    r = tiny()
    ds = r.samples(recs)
    _train(r, ds, steps=2)
    res = r.evaluate(ds, tmp_path / "vqa")
    import csv

    rows = list(csv.DictReader(open(tmp_path / "vqa" / "predictions.csv", encoding="utf-8")))
    assert res["task"] == "vqa-close" and res["n"] == 2
    assert res["accuracy"] == vqa_accuracy([x["prediction"] for x in rows], ["A", "B"], [ch, ch])
    assert res["accuracy_m3d"] == np.mean([x["answer"] + "." in x["prediction"] for x in rows])
    assert set(res["accuracy_per_type"]) == {"3", "4"}
    # open-ended VQA (M3D-VQA's answer text as the target) is scored with the report metrics
    r.config.task = "vqa-open"
    res_open = r.evaluate(r.samples(recs), tmp_path / "vqa-open")
    assert res_open["task"] == "vqa-open" and {"BLEU-1", "ROUGE-L", "CIDEr"} <= set(res_open)
    rows = list(csv.DictReader(open(tmp_path / "vqa-open" / "predictions.csv", encoding="utf-8")))
    assert [x["reference"] for x in rows] == ["liver", "lung"] and rows[0][
        "question"
    ] == "Which organ?"
    # a dataset mixing tasks (close-ended VQA + a report) is scored per task with its own metrics
    r.config.task = "auto"
    mixed = torch.utils.data.ConcatDataset(
        [ds, r.samples([{"id": "rep", "image": paths[0], "report": "lungs clear."}])]
    )
    res_mixed = r.evaluate(mixed, tmp_path / "mixed")
    assert res_mixed["task"] == "mixed" and res_mixed["n"] == 3
    per = res_mixed["per_task"]
    assert (
        set(per) == {"vqa-close", "report"}
        and per["vqa-close"]["n"] == 2
        and per["report"]["n"] == 1
    )
    assert (
        "BLEU-1" not in per["vqa-close"]
        and "accuracy" not in per["report"]
        and "CIDEr" in per["report"]
    )
    rows = list(csv.DictReader(open(tmp_path / "mixed" / "predictions.csv", encoding="utf-8")))
    vqa = [x for x in rows if x["task"] == "vqa-close"]
    assert [x["task"] for x in rows] == ["vqa-close", "vqa-close", "report"]
    assert per["vqa-close"]["accuracy"] == vqa_accuracy(
        [x["prediction"] for x in vqa], ["A", "B"], [ch, ch]
    )


def test_saved_model_generates_as_transformers_and_peft(tmp_path):
    """The saved folder is real formats: the base LLM (HF), the PEFT adapter and the resized
    embedding rows; transformers + PEFT on the recipe's prompt embeddings generate the same
    tokens as the recipe (greedy and beam 2)."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM as HFLlama

    r = tiny()
    paths = _volumes(tmp_path, 2)
    ds = r.samples(
        [{"id": str(i), "image": p, "report": "clear lungs."} for i, p in enumerate(paths)]
    )
    _train(r, ds, steps=2)
    r.save_pretrained(tmp_path / "m")
    hf = HFLlama.from_pretrained(tmp_path / "m" / "llm")
    from safetensors.torch import load_file

    e = load_file(str(tmp_path / "m" / "embeddings.safetensors"))
    hf.resize_token_embeddings(e["embed_tokens"].shape[0])
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(e["embed_tokens"])
        hf.lm_head.weight.copy_(e["lm_head"])
    peft = PeftModel.from_pretrained(hf, tmp_path / "m" / "adapter").eval()
    b = r.collator(generation=True)([ds[0], ds[1]])
    with torch.no_grad():
        emb = r.embed(b["images"], b["input_ids"])
    for beams in (1, 2):
        ours = r.generate(b["images"], b["input_ids"], b["attention_mask"], num_beams=beams)
        ref = peft.generate(
            inputs_embeds=emb,
            attention_mask=b["attention_mask"],
            max_new_tokens=6,
            num_beams=beams,
            do_sample=False,
            eos_token_id=r.tokenizer.eos_token_id,
            pad_token_id=r.tokenizer.pad_token_id,
        )
        assert torch.equal(ours, ref[:, : ours.shape[1]])


def test_cli_train_then_evaluate(tmp_path, monkeypatch):
    """``voxlm train configs/vit3d_llama-tiny.yaml --output-dir RUN`` (synthetic CTRG-Chest made
    by data.synth) then ``voxlm evaluate RUN``, through the CLI entry point."""
    import pathlib

    from voxlm.cli import main

    cfg = pathlib.Path(__file__).resolve().parents[1] / "configs" / "vit3d_llama-tiny.yaml"
    monkeypatch.chdir(tmp_path)  # data.root is relative: the synthetic data go under tmp_path
    assert main(["train", str(cfg), "--output-dir", "run"]) == 0
    for f in (
        "config.yaml",
        "model/config.json",
        "model/adapter/adapter_model.safetensors",
        "stage1-projector/final",
        "stage2-lora/final",
    ):
        assert (tmp_path / "run" / f).exists(), f
    assert main(["evaluate", "run"]) == 0
    res = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert res["task"] == "report" and res["n"] >= 1 and 0.0 <= res["BLEU-4"] <= 1.0
    assert (tmp_path / "run" / "eval" / "predictions.csv").is_file()


def test_amos_mm_reader_per_region_and_vqa(tmp_path):
    """AMOS-MM's layout (report_generation_train_val.json, vqa_train_val.json, imagesTr/) through
    the amos-mm reader: one sample per non-empty region (also from the reader's region="each"
    records), and close-ended VQA."""
    paths = _volumes(tmp_path, 2)
    (tmp_path / "amos" / "imagesTr").mkdir(parents=True)
    items, qa = [], []
    for i, p in enumerate(paths):
        img = f"./imagesTr/amos_{i:04d}.nii.gz"
        (tmp_path / "amos" / img).write_bytes(open(p, "rb").read())
        items.append(
            {
                "image": img,
                "meta": {},
                "labels": {
                    "report": {
                        "findings": {
                            "chest": "lungs clear.",
                            "abdomen": "liver normal." if i else "",
                            "pelvis": "bladder normal.",
                        }
                    }
                },
            }
        )
        qa.append(
            {
                "image": img,
                "labels": {
                    "qa": [
                        {
                            "question": "Which organ is enlarged?",
                            "options": {"A": "liver", "B": "spleen", "C": "kidney", "D": "heart"},
                            "answer": "B",
                            "type": "organ",
                        }
                    ]
                },
            }
        )
    (tmp_path / "amos" / "report_generation_train_val.json").write_text(
        json.dumps({"training": items, "validation": items[:1]})
    )
    (tmp_path / "amos" / "vqa_train_val.json").write_text(
        json.dumps({"training": qa, "validation": qa[:1]})
    )
    r = tiny()
    data = {"format": "amos-mm", "root": str(tmp_path / "amos")}
    train, val = r.datasets(data)
    assert sorted((x["id"], x["region"]) for x in train.records) == [
        ("amos_0000", "chest"),
        ("amos_0000", "pelvis"),
        ("amos_0001", "abdomen"),
        ("amos_0001", "chest"),
        ("amos_0001", "pelvis"),
    ]
    assert len(val) == 2 and train[0]["image"].shape == (1, 8, 32, 32)
    each, _ = r.datasets({**data, "options": {"region": "each"}})
    assert sorted(x["target"] for x in each.records) == sorted(x["target"] for x in train.records)
    vqa, _ = r.datasets({**data, "options": {"task": "vqa"}})
    assert [x["task"] for x in vqa.records] == ["vqa-close"] * 2 and vqa.records[0][
        "target"
    ] == "B. spleen"
