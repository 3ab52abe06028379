"""voxlm.llm.Tokenizer (Rust tokenizers crate) against transformers' PreTrainedTokenizerFast on a
BPE tokenizer.json trained on the bundled report corpus; templates and image placeholders."""

import pytest
import torch
from tokenizers import Tokenizer as HFTok
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import voxlm
from voxlm.datasets import dia_llama_results
from voxlm.llm import Tokenizer, format_prompt, image_placeholder, splice_image_tokens


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    data = dia_llama_results()
    tok = HFTok(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=["<unk>", "<s>", "</s>", "<im_patch>"]
    )
    tok.train_from_iterator(data.references + data.predictions, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        '{"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "add_bos_token": true}'
    )
    return d


def test_encode_decode_equal_transformers(tok_dir):
    from transformers import PreTrainedTokenizerFast

    ref = PreTrainedTokenizerFast(
        tokenizer_file=str(tok_dir / "tokenizer.json"), bos_token="<s>", eos_token="</s>"
    )
    tok = Tokenizer.from_pretrained(tok_dir)
    texts = dia_llama_results().predictions[:20] + ["Lung: clear. 肺 é", ""]
    for t in texts:
        assert tok.encode(t) == ref(t)["input_ids"]
        assert (
            tok.encode(t, add_special_tokens=False) == ref(t, add_special_tokens=False)["input_ids"]
        )
        ids = tok.encode(t)
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.vocab_size == len(ref)


def test_batch_left_padding(tok_dir):
    tok = Tokenizer.from_pretrained(tok_dir)
    batch = tok(["no effusion", "the lung is clear and the heart is normal"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and mask[0, 0] == 0 and mask[1].all()
    assert ids[0, mask[0] == 0].eq(tok.pad_token_id).all()
    assert tok.batch_decode(ids)[0] == "no effusion"


def test_templates_and_placeholders(tok_dir):
    tok = Tokenizer.from_pretrained(tok_dir)
    img = image_placeholder(4)
    p = format_prompt("vicuna", "Describe the scan.", image=img)
    assert p.endswith(
        "USER: <im_patch><im_patch><im_patch><im_patch>\nDescribe the scan. ASSISTANT:"
    )
    ids = torch.tensor([tok.encode(p)])
    assert int((ids == tok.token_to_id("<im_patch>")).sum()) == 4
    assert format_prompt("alpaca", "Score PI-RADS.").endswith(
        "### Instruction:\nScore PI-RADS.\n\n### Response:"
    )
    assert "<|start_header_id|>assistant<|end_header_id|>" in format_prompt("llama3", "Hi")
    with pytest.raises(voxlm.ConfigError):
        format_prompt("chatml", "x")


def test_splice_image_tokens():
    emb = torch.zeros(2, 6, 4)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 1:4] = True
    img = torch.randn(2, 3, 4, requires_grad=True)
    out = splice_image_tokens(emb, img, mask)
    assert (
        torch.equal(out[0, 1:4], img[0])
        and torch.equal(out[1, 1:4], img[1])
        and out[:, 0].eq(0).all()
    )
    out.sum().backward()
    assert img.grad is not None and img.grad.eq(1).all()
    with pytest.raises(voxlm.ShapeError, match="placeholders"):
        splice_image_tokens(emb, torch.randn(2, 2, 4), mask)


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(voxlm.CheckpointError, match="no such tokenizer.json"):
        Tokenizer(tmp_path / "missing.json")
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(voxlm.CheckpointError, match="not a valid tokenizer.json"):
        Tokenizer(tmp_path / "t.json")
