"""A checkpoint's LoRA adapter folder loads with peft.PeftModel.from_pretrained onto a
transformers LlamaForCausalLM built from the same base (saved with save_pretrained), and gives
the trained model's logits."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from voxlm.train import Trainer, TrainingArguments
from voxlm.train import checkpoint as C

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


class Tok(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 48, (12, 10), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


class WithLLM(nn.Module):
    """A recipe-like wrapper: the LoRA sits on a submodule (``llm``)."""

    def __init__(self, llm):
        super().__init__()
        self.llm = llm
        self.extra = nn.Linear(4, 4)

    def forward(self, input_ids, labels=None, **kw):
        return self.llm(input_ids=input_ids, labels=labels)


def test_checkpoint_adapter_loads_in_peft(tmp_path):
    from voxlm.adapters import LoraConfig, add_lora
    from voxlm.llm import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=48,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    llm = LlamaForCausalLM(cfg)
    llm.save_pretrained(tmp_path / "base")
    add_lora(
        llm,
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "gate_proj"]
        ),
    )
    model = WithLLM(llm)
    model.extra.requires_grad_(False)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        save_steps=4,
        disable_tqdm=True,
        report_to=[],
        plot=False,
    )
    Trainer(model, args, Tok()).train()
    ck = tmp_path / "run" / "checkpoint-4"
    ad = ck / "adapters" / "llm"
    assert (ad / "adapter_config.json").is_file() and (ad / "adapter_model.safetensors").is_file()
    # model.safetensors: exactly the trainable (LoRA) tensors
    sd = C.load_tensors(ck / "model.safetensors")
    assert sorted(sd) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert all(".lora_" in k for k in sd) and any(
        v.abs().sum() > 0 for k, v in sd.items() if "lora_B" in k
    )

    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    pm = peft.PeftModel.from_pretrained(hf, ad).eval()
    llm.eval()
    ids = torch.randint(0, 48, (2, 9))
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
        ours = llm(input_ids=ids).logits
    # float32, same weights, different kernels: agree to float32 rounding
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # the final/ folder holds the same adapter
    assert (tmp_path / "run" / "final" / "adapters" / "llm" / "adapter_model.safetensors").is_file()
