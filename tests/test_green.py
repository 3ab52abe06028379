"""voxlm.green (GREEN, Stanford-AIMI/GREEN green_score/utils.py + green.py transcribed).

* Parsing and the score formula on canned judge answers covering every branch of
  ``parse_error_counts`` / ``compute_green``; the expected numbers were produced by running
  GREEN's own ``GREEN.parse_error_counts`` / ``compute_green`` (extracted from green.py at
  Stanford-AIMI/GREEN d72c195) on these strings. Exact.
* The chat template against transformers' ``apply_chat_template`` with GREEN's template string.
* End to end with a tiny random LLaMA saved in HF format: voxlm's ``green(..., judge=folder)``
  against GREEN's ``get_response`` flow run with transformers (chat template, BOS + text + EOS as
  transformers-4 ``LlamaTokenizerFast(add_eos_token=True)`` encodes, left padding with EOS,
  greedy ``generate(max_length=...)``, ``batch_decode(skip_special_tokens=True)`` with
  ``clean_up_tokenization_spaces``, ``clean_responses``): identical completions and scores.
"""

import json

import pytest
import torch

from voxlm.exceptions import ConfigError, ShapeError, VoxlmTypeError
from voxlm.green import (
    CATEGORIES,
    SUB_CATEGORIES,
    chat_prompt,
    clean_responses,
    green,
    green_score_of,
    make_prompt,
    parse_error_counts,
    scores_from_responses,
)

GREEN_CHAT_TEMPLATE = "{% for message in messages %}\n{% if message['from'] == 'human' %}\n{{ '<|user|>\n' + message['value'] + eos_token }}\n{% elif message['from'] == 'system' %}\n{{ '<|system|>\n' + message['value'] + eos_token }}\n{% elif message['from'] == 'gpt' %}\n{{ '<|assistant|>\n'  + message['value'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"  # noqa: E501

CANNED = [
    # every section, letters (a)-(f)
    "\n[Explanation]:\nThe candidate misses the effusion.\n\n[Clinically Significant Errors]:\n(a) "
    "False report of a finding in the candidate: 1. Nodule.\n(b) Missing a finding present in the "
    "reference: 2. Effusion; edema.\n(c) Misidentification of a finding's anatomic "
    "location/position: 0.\n(d) Misassessment of the severity of a finding: 0.\n(e) Mentioning a "
    "comparison that isn't in the reference: 0.\n(f) Omitting a comparison detailing a change from "
    "a prior study: 0.\n\n[Clinically Insignificant Errors]:\n(a) False report of a finding in the "
    "candidate: 0.\n(b) Missing a finding present in the reference: 1. Granuloma.\n\n[Matched "
    "Findings]:\n3. Cardiomegaly; atelectasis; line.\n",
    # a section starting with "No"
    "[Explanation]: fine\n\n[Clinically Significant Errors]:\nNo errors.\n\n[Matched "
    "Findings]:\n2. A; B.",
    # digits (1)-(6) instead of letters
    "[Clinically Significant Errors]:\n(1) False report: 1. x\n(3) Misidentification: 4. "
    "y\n\n[Matched Findings]:\n5. all",
    # nothing matched -> 0
    "[Clinically Significant Errors]:\n(a) False report of a finding in the candidate: 2. "
    "x\n\n[Matched Findings]:\n0. none",
    # no sections at all
    "garbage with no sections",
    # matched count not leading
    "[Matched Findings]:\nThe findings match. 3. here",
    # an error count without its period is not read
    "[Clinically Significant Errors]:\n(b) Missing a finding present in the reference: 2 "
    "effusion\n\n[Matched Findings]:\n1. heart",
    # section at the end of the text (\Z), no blank line after it
    "[Matched Findings]:\n4. a; b; c; d",
]
# GREEN.compute_green and GREEN.compute_error_count (sig (a)-(f) + matched) on CANNED
EXPECTED_SCORE = [0.5, 1.0, 0.5, 0, 0, 0, 1.0, 1.0]
EXPECTED_COUNTS = [
    [1, 2, 0, 0, 0, 0, 3],
    [0, 0, 0, 0, 0, 0, 2],
    [1, 0, 4, 0, 0, 0, 5],
    [2, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 1],
    [0, 0, 0, 0, 0, 0, 4],
]


def test_parsing_and_formula_on_canned_answers():
    for text, score, counts in zip(CANNED, EXPECTED_SCORE, EXPECTED_COUNTS):
        assert green_score_of(text) == score
        _, sig = parse_error_counts(text, CATEGORIES[0])
        matched, _ = parse_error_counts(text, CATEGORIES[2])
        assert sig + [matched] == counts
    assert parse_error_counts(CANNED[0], CATEGORIES[1]) == (1, [0, 1, 0, 0, 0, 0])
    assert parse_error_counts(CANNED[4], CATEGORIES[0], for_reward=True) == (None, None)
    with pytest.raises(ConfigError, match="category"):
        parse_error_counts("x", "Errors")
    s = scores_from_responses(CANNED)
    assert s["green"] == pytest.approx(sum(EXPECTED_SCORE) / 8) and s["scores"] == EXPECTED_SCORE
    assert s["accuracy_per_category"][SUB_CATEGORIES[0]] == pytest.approx(
        5 / 8
    )  # samples without an (a) error


def test_prompt_chat_template_and_cleaning():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    p = make_prompt("word " * 400, "a  b\nc")
    assert (
        "\n    2. Reference Report:\n    "
        + " ".join(["word"] * 300)
        + "\n\n    3. Candidate Report:\n    a b c\n"
        in p
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, "<unk>")),
        eos_token="</s>",
    )
    tok.chat_template = GREEN_CHAT_TEMPLATE
    ref = tok.apply_chat_template(
        [{"from": "human", "value": p}, {"from": "gpt", "value": ""}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert chat_prompt(p, "</s>") == ref
    # clean_responses: the answer after the last <|assistant|> / its own [Explanation]:
    assert clean_responses("<|user|>\nP<|assistant|>\n[Explanation]: fine</s>") == " fine"
    assert (
        clean_responses("[Explanation]:\n    <Explanation>\n x [Explanation]: y")
        == "\n    <Explanation>\n x "
    )


def _green_reference(model_dir, refs, hyps, max_length):
    """GREEN's get_response + process_results with transformers (green_score/green.py)."""
    from tokenizers import Tokenizer, processors
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    def clean_responses_green(response):  # green_score/utils.py, verbatim
        if "[Explanation]:" in response:
            if "<|assistant|>" in response:
                response = response.split("<|assistant|>")[-1]
            if (
                "[Explanation]:\n    <Explanation>\n" or "[Explanation]:\n<Explanation>"
            ) in response:
                response = response.split("[Explanation]:")[1]
            else:
                response = response.split("[Explanation]:")[-1]
        if "<|assistant|>" in response:
            response = response.split("<|assistant|>")[-1]
        return response.replace("</s>", "").replace("<unk>", "")

    t = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # transformers-4 LlamaTokenizerFast(add_eos_token=True).update_post_processor: "<s> $A </s>"
    t.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token="<s>", eos_token="</s>", padding_side="left"
    )
    tokenizer.chat_template = GREEN_CHAT_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.clean_up_tokenization_spaces = True
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    prompts = [make_prompt(r, h) for r, h in zip(refs, hyps)]
    out = []
    for s in range(0, len(prompts), 8):
        batch = [
            [{"from": "human", "value": p}, {"from": "gpt", "value": ""}]
            for p in prompts[s : s + 8]
        ]
        batch = [
            tokenizer.apply_chat_template(i, tokenize=False, add_generation_prompt=True)
            for i in batch
        ]
        batch = tokenizer(
            batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length
        )
        outputs = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            max_length=max_length,
            do_sample=False,
            temperature=None,
            top_p=None,
        )
        # transformers 4 (GREEN's) applied clean_up_tokenization to BPE output too; transformers 5
        # skips it for BPE, so it is applied explicitly with transformers' own function
        responses = tokenizer.batch_decode(
            outputs, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        out += [clean_responses_green(tokenizer.clean_up_tokenization(r)) for r in responses]
    return out


def test_green_end_to_end_equals_greens_transformers_flow(tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM as HFLlama

    from voxlm.datasets import dia_llama_results

    d = tmp_path / "green-tiny"
    data = dia_llama_results()
    tok = HFTok(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = data.references + [make_prompt("a", "b")] * 5
    tok.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", "</s>"])
    )
    tok.add_tokens(["<|user|>", "<|assistant|>"])  # plain added tokens: they survive decoding
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True})
    )
    torch.manual_seed(0)
    HFLlama(
        HFConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=4096,
            bos_token_id=1,
            eos_token_id=2,
        )
    ).save_pretrained(d)
    refs, hyps = data.references[:3], data.predictions[:3]
    longest = (
        max(len(tok.encode(chat_prompt(make_prompt(r, h), "</s>")).ids) for r, h in zip(refs, hyps))
        + 1
    )
    max_length = longest + 12
    got = green(refs, hyps, judge=d, max_length=max_length)
    want = _green_reference(d, refs, hyps, max_length)
    assert got["completions"] == want
    assert got["scores"] == [green_score_of(w) for w in want]
    assert len(got["significant_errors"]) == 3 and all(
        len(x) == 6 for x in got["significant_errors"]
    )
    # the loaded judge can be passed as (model, tokenizer)
    from voxlm.llm import LlamaForCausalLM, Tokenizer

    again = green(
        refs,
        hyps,
        judge=(LlamaForCausalLM.from_pretrained(d), Tokenizer.from_pretrained(d)),
        max_length=max_length,
    )
    assert again["completions"] == want


def test_green_bad_input(tmp_path):
    with pytest.raises(ShapeError, match="one per reference"):
        green(["a"], ["b", "c"], judge=tmp_path)
    with pytest.raises(ShapeError, match="at least one"):
        green([], [], judge=tmp_path)
    with pytest.raises(VoxlmTypeError, match=r"hyps\[0\]"):
        green(["a"], [None], judge=tmp_path)
    with pytest.raises(ConfigError, match="not a local GREEN model folder"):
        green(["a"], ["b"], judge=tmp_path)
    with pytest.raises(VoxlmTypeError, match="judge"):
        green(["a"], ["b"], judge=3.0)
