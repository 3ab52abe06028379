"""TrainingArguments (HF names, YAML/JSON, validation), LR schedules vs transformers'
get_scheduler step by step, AdamW weight-decay groups vs Trainer.get_decay_parameter_names."""

import math

import pytest
import torch
from torch import nn

from voxlm.exceptions import ConfigError
from voxlm.train import TrainingArguments, decay_parameter_names, get_scheduler, param_groups
from voxlm.train.schedules import create_optimizer

transformers = pytest.importorskip("transformers")


def test_names_are_transformers_names():
    ours = set(TrainingArguments.__dataclass_fields__)
    hf = set(transformers.TrainingArguments.__dataclass_fields__)
    voxlm_only = {
        "shuffle",
        "skip_nonfinite_steps",
        "plot",
        "fsdp",
        "warmup_ratio",
        "overwrite_output_dir",
    }
    # warmup_ratio, overwrite_output_dir: transformers 4 names (5 folds the first into
    # warmup_steps < 1 and dropped the second); fsdp: a flag here
    assert ours - hf <= voxlm_only, sorted(ours - hf - voxlm_only)
    defaults = transformers.TrainingArguments(output_dir="x")
    for f in (
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "save_total_limit",
        "seed",
        "dataloader_num_workers",
    ):
        assert getattr(TrainingArguments(), f) == getattr(defaults, f), f


def test_yaml_json_roundtrip(tmp_path):
    a = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        learning_rate=3e-4,
        lr_scheduler_type="cosine",
        warmup_ratio=0.1,
        save_total_limit=2,
        shuffle=False,
        report_to=["csv"],
    )
    a.to_yaml(tmp_path / "a.yaml")
    assert TrainingArguments.from_yaml(tmp_path / "a.yaml") == a
    a.to_json(tmp_path / "a.json")
    assert TrainingArguments.from_json(tmp_path / "a.json") == a
    # YAML 1.1 reads 5e-5 as a string: accepted as the number
    b = TrainingArguments.from_yaml("train:\n  learning_rate: 5e-5\n  max_steps: 10\n")
    assert b.learning_rate == 5e-5 and b.max_steps == 10
    assert a.replace(seed=7).seed == 7 and a.seed == 42


@pytest.mark.parametrize(
    "field,value",
    [
        ("learning_rate", -1.0),
        ("lr_scheduler_type", "polynomial"),
        ("per_device_train_batch_size", 0),
        ("gradient_accumulation_steps", 1.5),
        ("warmup_steps", 2.5),
        ("adam_beta2", 1.0),
        ("max_steps", 0),
        ("save_total_limit", 0),
        ("eval_strategy", "sometimes"),
        ("report_to", ["wandb"]),
        ("shuffle", "yes"),
    ],
)
def test_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainingArguments(**{field: value})


def test_unknown_field_and_both_precisions():
    with pytest.raises(ConfigError, match="learnig_rate"):
        TrainingArguments.from_dict({"learnig_rate": 1e-3})
    with pytest.raises(ConfigError, match="bf16, fp16"):
        TrainingArguments(bf16=True, fp16=True)


def _hf_lrs(name, warmup, total, lr=1e-3):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    s = transformers.get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    out = []
    for _ in range(total + 3):
        out.append(s.get_last_lr()[0])
        opt.step()
        s.step()
    return out


def _our_lrs(name, warmup, total, lr=1e-3):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    s = get_scheduler(name, opt, warmup, total)
    out = []
    for _ in range(total + 3):
        out.append(s.get_last_lr()[0])
        opt.step()
        s.step()
    return out


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine"])
@pytest.mark.parametrize("warmup_steps,warmup_ratio", [(0, 0.0), (7, 0.0), (0, 0.1), (0.25, 0.0)])
def test_schedule_equals_transformers(name, warmup_steps, warmup_ratio):
    total = 53
    a = TrainingArguments(
        lr_scheduler_type=name, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio
    )
    w = a.get_warmup_steps(total)
    if warmup_steps:  # transformers 5 reads warmup_steps (count or ratio) the same way
        assert w == transformers.TrainingArguments(
            output_dir="x", warmup_steps=warmup_steps
        ).get_warmup_steps(total)
    else:  # transformers 4's warmup_ratio rule
        assert w == math.ceil(total * warmup_ratio)
    # bit-equal: the same float expressions in the same order
    assert _our_lrs(name, w, total) == _hf_lrs(name, w, total)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.ln = nn.LayerNorm(8)
        self.block = nn.ModuleDict(
            {
                "input_layernorm": nn.Linear(8, 8),
                "proj": nn.Linear(8, 8),
                "q_norm": nn.Linear(8, 8, bias=False),
            }
        )
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(8))
        self.scale = nn.Parameter(torch.ones(1))
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def test_decay_names_equal_transformers():
    from voxlm.llm import LlamaConfig, LlamaForCausalLM

    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            attention_bias=True,
        )
    )
    for m in (Tiny(), llm):
        hf = transformers.Trainer.get_decay_parameter_names(None, m)
        assert decay_parameter_names(m) == hf
    names = decay_parameter_names(llm)
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert not any(
        n.endswith("bias") or "layernorm" in n or n == "model.norm.weight" for n in names
    )


def test_param_groups_only_trainable_and_optimizer_state():
    m = Tiny()
    groups = param_groups(m, 0.1)
    hf_decay = set(transformers.Trainer.get_decay_parameter_names(None, m))
    decay, no = groups[0], groups[1]
    assert decay["weight_decay"] == 0.1 and no["weight_decay"] == 0.0
    assert set(decay["names"]) == {
        n for n, p in m.named_parameters() if p.requires_grad and n in hf_decay
    }
    assert set(no["names"]) == {
        n for n, p in m.named_parameters() if p.requires_grad and n not in hf_decay
    }
    assert not any(n.startswith("frozen") for g in groups for n in g["names"])
    opt = create_optimizer(m, TrainingArguments(weight_decay=0.1))
    x = m.block["proj"](m.ln(m.embed(torch.tensor([1, 2]))) * m.scale * m.norm.weight)
    (x.sum() + m.block["input_layernorm"](x).sum() + m.block["q_norm"](x).sum()).backward()
    opt.step()
    state_ids = {id(p) for p in opt.state}
    assert id(m.frozen.weight) not in state_ids and id(m.frozen.bias) not in state_ids
    assert len(state_ids) == sum(1 for p in m.parameters() if p.requires_grad)
