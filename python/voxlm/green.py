"""GREEN (Generative Radiology Report Evaluation and Error Notation; Ostmeier et al. 2024), the
ranking metric of AMOS-MM's report generation track, run through voxlm's LLaMA.

Transcribed from the public code of Stanford-AIMI/GREEN (``green_score/utils.py``:
``make_prompt``, ``clean_responses``; ``green_score/green.py``: ``GREEN.get_response``,
``tokenize_batch_as_chat``, ``parse_error_counts``, ``compute_green``, ``compute_accuracy``):

* both reports cut to their first 300 whitespace words, put into GREEN's fixed evaluation prompt
  (explanation, clinically significant and insignificant errors in six categories (a)-(f),
  matched findings);
* GREEN's chat template (``<|user|>\\n{prompt}</s>\\n<|assistant|>\\n</s>\\n<|assistant|>\\n``
  for GREEN's ``[human: prompt, gpt: ""]`` conversation with ``add_generation_prompt``), encoded
  with BOS and ``add_eos_token=True`` as GREEN loads its tokenizer, truncated to 2048 tokens,
  batches of 8 left-padded with EOS;
* greedy decoding up to ``max_length=2048`` tokens in all (prompt included, as transformers'
  ``max_length``), the decoded prompt + answer cleaned by ``clean_responses``;
* parsing by GREEN's regexes per section (``[Clinically Significant Errors]:`` ... up to the next
  blank line); score = matched / (matched + significant errors), 0 when nothing matched.

The judge (GREEN-radllama2-7b, a LLaMA-2 architecture) is read from a local folder; nothing is
downloaded. Not transcribed: GREEN's summary text (it clusters error sentences with a
sentence-transformers model).
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._bind import check_int
from .exceptions import ConfigError, ShapeError, VoxlmTypeError

PathLike = str | os.PathLike[str]

#: ``GREEN.categories`` (green_score/green.py).
CATEGORIES: tuple[str, ...] = (
    "Clinically Significant Errors",
    "Clinically Insignificant Errors",
    "Matched Findings",
)
#: ``GREEN.sub_categories`` (green_score/green.py).
SUB_CATEGORIES: tuple[str, ...] = (
    "(a) False report of a finding in the candidate",
    "(b) Missing a finding present in the reference",
    "(c) Misidentification of a finding's anatomic location/position",
    "(d) Misassessment of the severity of a finding",
    "(e) Mentioning a comparison that isn't in the reference",
    "(f) Omitting a comparison detailing a change from a prior study",
)

BATCH_SIZE = 8  # GREEN.batch_size
MAX_LENGTH = 2048  # GREEN.max_length (tokenizer truncation and generate's max_length)
MAX_WORDS = 300  # make_prompt's max_len


def _text(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise VoxlmTypeError(f"{name}: expected str, got {type(v).__name__}")
    return v


def _texts(vs: Any, name: str) -> list[str]:
    if isinstance(vs, (str, bytes)) or not isinstance(vs, Sequence):
        raise VoxlmTypeError(f"{name}: expected a list of str, got {type(vs).__name__}")
    return [_text(v, f"{name}[{i}]") for i, v in enumerate(vs)]


def make_prompt(reference: str, candidate: str, max_len: int = MAX_WORDS) -> str:
    """GREEN's evaluation prompt (``green_score/utils.py: make_prompt``), each report cut to its
    first ``max_len`` whitespace-separated words."""
    _text(reference, "reference")
    _text(candidate, "candidate")
    check_int(max_len, "max_len")
    text1 = " ".join(reference.split()[:max_len])
    text2 = " ".join(candidate.split()[:max_len])
    return (
        "Objective: Evaluate the accuracy of a candidate radiology report in comparison to a "
        "reference radiology report composed by expert radiologists.\n\n    Process Overview: You "
        "will be presented with:\n\n    1. The criteria for making a judgment.\n    2. The "
        "reference radiology report.\n    3. The candidate radiology report.\n    4. The desired "
        "format for your assessment.\n\n    1. Criteria for Judgment:\n\n    For each candidate "
        "report, determine:\n\n    The count of clinically significant errors.\n    The count of "
        "clinically insignificant errors.\n\n    Errors can fall into one of these "
        "categories:\n\n    a) False report of a finding in the candidate.\n    b) Missing a "
        "finding present in the reference.\n    c) Misidentification of a finding's anatomic "
        "location/position.\n    d) Misassessment of the severity of a finding.\n    e) "
        "Mentioning a comparison that isn't in the reference.\n    f) Omitting a comparison "
        "detailing a change from a prior study.\n    Note: Concentrate on the clinical findings "
        "rather than the report's writing style. Evaluate only the findings that appear in both "
        f"reports.\n\n    2. Reference Report:\n    {text1}\n\n    3. Candidate Report:\n    "
        f"{text2}\n\n    4. Reporting Your Assessment:\n\n    Follow this specific format for your "
        "output, even if no errors are found:\n    ```\n    [Explanation]:\n    "
        "<Explanation>\n\n    [Clinically Significant Errors]:\n    (a) <Error Type>: <The number "
        "of errors>. <Error 1>; <Error 2>; ...; <Error n>\n    ....\n    (f) <Error Type>: <The "
        "number of errors>. <Error 1>; <Error 2>; ...; <Error n>\n\n    [Clinically Insignificant "
        "Errors]:\n    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; "
        "<Error n>\n    ....\n    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; "
        "...; <Error n>\n\n    [Matched Findings]:\n    <The number of matched findings>. "
        "<Finding 1>; <Finding 2>; ...; <Finding n>\n    ```\n"
    )


def chat_prompt(prompt: str, eos_token: str) -> str:
    """GREEN's chat template (``green_score/green.py: GREEN.__init__``) rendered for the
    conversation ``[{"from": "human", "value": prompt}, {"from": "gpt", "value": ""}]`` with
    ``add_generation_prompt=True`` (Jinja with transformers' ``trim_blocks``/``lstrip_blocks``)."""
    _text(prompt, "prompt")
    _text(eos_token, "eos_token")
    return f"<|user|>\n{prompt}{eos_token}\n<|assistant|>\n{eos_token}\n<|assistant|>\n"


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (GREEN sets ``clean_up_tokenization_spaces``)."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def clean_responses(response: str) -> str:
    """``green_score/utils.py: clean_responses``, including its quirk: the condition
    ``("[Explanation]:\\n    <Explanation>\\n" or ...) in response`` tests only the first string."""
    _text(response, "response")
    if "[Explanation]:" in response:
        if "<|assistant|>" in response:
            response = response.split("<|assistant|>")[-1]
        if "[Explanation]:\n    <Explanation>\n" in response:
            response = response.split("[Explanation]:")[1]
        else:
            response = response.split("[Explanation]:")[-1]
    if "<|assistant|>" in response:
        response = response.split("<|assistant|>")[-1]
    return response.replace("</s>", "").replace("<unk>", "")


def parse_error_counts(
    text: str, category: str, for_reward: bool = False
) -> tuple[int | None, list[int] | None]:
    """``GREEN.parse_error_counts``: ``(total, [count (a)..(f)])`` of one section of a judge's
    answer. The section is ``[category]:`` up to the next blank line; a section starting with "No"
    counts 0; Matched Findings reads the leading ``N.``; the error sections read ``(x) ...: N.``
    per sub-category, letters (a)-(f) or, when there are none, digits (1)-(6)."""
    _text(text, "text")
    if category not in CATEGORIES:
        raise ConfigError(f"category: expected one of {list(CATEGORIES)}, got {category!r}")
    m = re.search(rf"\[{category}\]:\s*(.*?)(?:\n\s*\n|\Z)", text, re.DOTALL)
    sum_counts = 0
    sub_counts = [0] * 6
    if not m:
        if for_reward:
            return None, None
        return sum_counts, sub_counts
    body = m.group(1)
    if body.startswith("No"):
        return sum_counts, sub_counts
    if category == "Matched Findings":
        counts = re.findall(r"^\b\d+\b(?=\.)", body)
        if counts:
            sum_counts = int(counts[0])
        return sum_counts, sub_counts
    subs = [s.split(" ", 1)[0] + " " for s in SUB_CATEGORIES]
    matches = sorted(re.findall(r"\([a-f]\) .*", body))
    if not matches:
        matches = sorted(re.findall(r"\([1-6]\) .*", body))
        subs = [f"({i}) " for i in range(1, len(SUB_CATEGORIES) + 1)]
    for position, sub in enumerate(subs):
        for match in matches:
            if match.startswith(sub):
                count = re.findall(r"(?<=: )\b\d+\b(?=\.)", match)
                if count:
                    sub_counts[position] = int(count[0])
    return sum(sub_counts), sub_counts


def green_score_of(response: str) -> float:
    """``GREEN.compute_green`` of one cleaned judge answer: matched / (matched + significant
    errors), 0 when no finding matched."""
    _, sig = parse_error_counts(response, CATEGORIES[0])
    matched, _ = parse_error_counts(response, CATEGORIES[2])
    assert sig is not None and matched is not None  # for_reward=False never gives None
    if matched == 0:
        return 0.0
    return matched / (matched + sum(sig))


def scores_from_responses(responses: Sequence[str]) -> dict[str, Any]:
    """GREEN's per-sample scores and counts from cleaned judge answers (``process_results``,
    ``compute_error_count``, ``compute_accuracy``; mean and std as ``np.mean``/``np.std``)."""
    responses = _texts(responses, "responses")
    scores = [green_score_of(r) for r in responses]
    sig = [parse_error_counts(r, CATEGORIES[0])[1] for r in responses]
    insig = [parse_error_counts(r, CATEGORIES[1])[1] for r in responses]
    matched = [parse_error_counts(r, CATEGORIES[2])[0] for r in responses]
    counts = np.asarray(sig, dtype=np.int64).reshape(len(responses), 6)
    accuracy = (
        {s: float(np.mean(counts[:, i] == 0)) for i, s in enumerate(SUB_CATEGORIES)}
        if len(responses)
        else {}
    )
    return {
        "green": float(np.mean(scores)) if scores else float("nan"),
        "green_std": float(np.std(scores)) if scores else float("nan"),
        "scores": scores,
        "matched_findings": matched,
        "significant_errors": sig,
        "insignificant_errors": insig,
        "accuracy_per_category": accuracy,
    }


def _load_judge(judge: Any, tokenizer: Any, dtype: Any, device: Any) -> tuple[Any, Any]:
    from .llm import LlamaForCausalLM, Tokenizer

    if isinstance(judge, tuple) and len(judge) == 2 and tokenizer is None:
        judge, tokenizer = judge
    if isinstance(judge, (str, os.PathLike)):
        p = pathlib.Path(judge)
        if not (p / "config.json").is_file():
            raise ConfigError(f"judge: {p} is not a local GREEN model folder (no config.json)")
        if tokenizer is None:
            if not (p / "tokenizer.json").is_file():
                raise ConfigError(f"judge: {p} has no tokenizer.json (pass tokenizer=)")
            tokenizer = Tokenizer.from_pretrained(p)
        judge = LlamaForCausalLM.from_pretrained(p, dtype=dtype, device=device or "cpu")
    if not isinstance(judge, LlamaForCausalLM):
        raise VoxlmTypeError(
            "judge: expected a model folder or a voxlm LlamaForCausalLM, got "
            f"{type(judge).__name__}"
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = Tokenizer.from_pretrained(tokenizer)
    if tokenizer is None:
        raise ConfigError("judge: a LlamaForCausalLM judge needs tokenizer=")
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise ConfigError(
            "judge tokenizer: GREEN needs an EOS token (its chat template and padding use it)"
        )
    return judge, tokenizer


def green(
    refs: Sequence[str],
    hyps: Sequence[str],
    judge: Any,
    tokenizer: Any = None,
    batch_size: int = BATCH_SIZE,
    max_length: int = MAX_LENGTH,
    max_words: int = MAX_WORDS,
    dtype: Any = None,
    device: Any = None,
) -> dict[str, Any]:
    """GREEN scores of generated reports ``hyps`` against references ``refs``.

    Args:
        judge: a local folder with the judge (HF ``config.json`` + safetensors + ``tokenizer.json``
            [+ ``tokenizer_config.json``], e.g. GREEN-radllama2-7b), or a voxlm
            :class:`~voxlm.llm.LlamaForCausalLM` (then pass ``tokenizer``), or
            ``(model, tokenizer)``.
        batch_size, max_length, max_words: GREEN's 8, 2048 and 300.
        dtype, device: for loading a judge folder (GREEN loads float16 on the GPU).

    Returns:
        ``{"green": mean, "green_std": std, "scores": [per sample], "matched_findings": [..],
        "significant_errors": [[(a)..(f)] per sample], "insignificant_errors": [..],
        "accuracy_per_category": {sub-category: share of samples with 0 significant errors},
        "completions": [cleaned judge answers]}``.
    """
    refs, hyps = _texts(refs, "refs"), _texts(hyps, "hyps")
    check_int(batch_size, "batch_size")
    check_int(max_length, "max_length", 2)
    check_int(max_words, "max_words")
    if len(refs) != len(hyps):
        raise ShapeError(f"hyps: expected {len(refs)} reports (one per reference), got {len(hyps)}")
    if not refs:
        raise ShapeError("refs: expected at least one report, got none")
    for name, xs in (("refs", refs), ("hyps", hyps)):
        for i, x in enumerate(xs):
            if not isinstance(x, str):
                raise VoxlmTypeError(f"{name}[{i}]: expected str, got {type(x).__name__}")
    if batch_size < 1 or max_length < 2:
        raise ConfigError(
            f"batch_size >= 1 and max_length >= 2 expected, got {batch_size} and {max_length}"
        )
    model, tok = _load_judge(judge, tokenizer, dtype, device)
    completions = generate_judgements(
        model,
        tok,
        [make_prompt(r, h, max_words) for r, h in zip(refs, hyps)],
        batch_size,
        max_length,
    )
    out = scores_from_responses(completions)
    out["completions"] = completions
    return out


def generate_judgements(
    model: Any,
    tok: Any,
    prompts: Sequence[str],
    batch_size: int = BATCH_SIZE,
    max_length: int = MAX_LENGTH,
) -> list[str]:
    """``GREEN.get_response`` over batches: chat template, BOS + text + EOS (``add_eos_token``),
    right truncation to ``max_length``, left padding with EOS, greedy decoding until EOS or
    ``max_length`` tokens in all, decode (special tokens skipped, tokenization spaces cleaned),
    ``clean_responses``."""
    import torch

    prompts = _texts(prompts, "prompts")
    check_int(batch_size, "batch_size")
    check_int(max_length, "max_length", 2)
    for name, obj, attrs in (
        ("model", model, ("generate",)),
        ("tok", tok, ("eos_token_id", "bos_token_id")),
    ):
        if obj is None or not all(hasattr(obj, a) for a in attrs):
            raise VoxlmTypeError(
                f"{name}: expected an object with {', '.join(attrs)} (a voxlm LlamaForCausalLM / "
                f"Tokenizer), got {type(obj).__name__}"
            )
    eos, pad = tok.eos_token_id, tok.eos_token_id
    bos = tok.bos_token_id
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for s in range(0, len(prompts), batch_size):
            seqs = []
            for p in prompts[s : s + batch_size]:
                ids = list(tok._core.encode(chat_prompt(p, tok.eos_token), True))
                if tok.add_bos_token and bos is not None and (not ids or ids[0] != bos):
                    ids.insert(0, bos)
                if not ids or ids[-1] != eos:
                    ids.append(eos)  # GREEN loads its tokenizer with add_eos_token=True
                if len(ids) > max_length:  # truncation keeps the special tokens at both ends
                    ids = ids[: max_length - 1] + [eos]
                seqs.append(ids)
            t = max(len(x) for x in seqs)
            ids_t = torch.full((len(seqs), t), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), t), dtype=torch.long)
            for i, x in enumerate(seqs):
                ids_t[i, t - len(x) :] = torch.tensor(x)
                mask[i, t - len(x) :] = 1
            n_new = max_length - t
            if n_new > 0:
                full = model.generate(
                    ids_t.to(dev),
                    attention_mask=mask.to(dev),
                    max_new_tokens=n_new,
                    eos_token_id=eos,
                    pad_token_id=pad,
                ).cpu()
            else:
                full = ids_t
            for row in full.tolist():
                text = clean_up_tokenization(tok.decode(row, skip_special_tokens=True))
                out.append(clean_responses(text))
    finally:
        model.train(was_training)
    return out


__all__ = [
    "green",
    "make_prompt",
    "chat_prompt",
    "clean_responses",
    "parse_error_counts",
    "green_score_of",
    "scores_from_responses",
    "generate_judgements",
    "CATEGORIES",
    "SUB_CATEGORIES",
]
