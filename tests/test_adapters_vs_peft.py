"""LoRA against peft on tiny random HF Llama models (LoRA B set non-zero first): logits and the
gradients of every lora_A/lora_B within 1e-5 (fp32), merged == unmerged, disabled == base,
adapter files interchangeable both ways, rsLoRA and dropout semantics; bias and prefix tuning
learn toy tasks with frozen weights bit-identical."""

import copy

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

import voxlm
from voxlm.adapters import (
    LoraConfig,
    PrefixEncoder,
    add_bias_tuning,
    add_lora,
    disable_adapters,
    enable_adapters,
    load_adapter,
    merge_adapter,
    prepend_prefix,
    save_adapter,
    set_adapter,
    trainable_parameters,
    unmerge_adapter,
)
from voxlm.llm import LlamaForCausalLM

from ._fixtures import hf_tiny_llama

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture()
def base(tmp_path):
    torch.manual_seed(0)
    hf = hf_tiny_llama(initializer_range=0.2).eval()
    hf.save_pretrained(tmp_path / "base")
    return hf, tmp_path / "base"


def peft_model(hf, **kw):
    kw = {"lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], **kw}
    cfg = PeftLoraConfig(r=4, lora_alpha=8, **kw)
    pm = get_peft_model(copy.deepcopy(hf), cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return pm


def toy_batch(b=4, t=12):
    """A learnable toy task: alternating tokens 7, 9, 7, 9, ..."""
    return torch.tensor([7, 9] * (t // 2)).repeat(b, 1)


def lora_grads(model):
    return {
        n.replace("base_model.model.", "").replace(".default", ""): p.grad
        for n, p in model.named_parameters()
        if "lora_" in n
    }


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapter_loads_with_equal_logits_and_grads(base, tmp_path, rslora):
    hf, path = base
    pm = peft_model(hf, use_rslora=rslora)
    pm.save_pretrained(tmp_path / "adapter")
    vm = LlamaForCausalLM.from_pretrained(path)
    names = load_adapter(vm, tmp_path / "adapter")
    assert len(names) == 4
    ids = torch.randint(0, 128, (2, 9))
    a = pm(input_ids=ids, labels=ids)
    b = vm(ids, labels=ids)
    torch.testing.assert_close(b.logits, a.logits, **TOL)
    a.loss.backward()
    b.loss.backward()
    ga, gb = lora_grads(pm), lora_grads(vm)
    assert set(ga) == set(gb) and len(ga) == 8
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], **TOL, msg=k)
    t, total, _ = trainable_parameters(vm)
    assert t == sum(p.numel() for n, p in pm.named_parameters() if p.requires_grad)


def test_merge_disable_and_switch(base, tmp_path):
    hf, path = base
    pm = peft_model(hf)
    pm.save_pretrained(tmp_path / "adapter")
    vm = LlamaForCausalLM.from_pretrained(path)
    load_adapter(vm, tmp_path / "adapter")
    ids = torch.randint(0, 128, (1, 7))
    with torch.no_grad():
        unmerged = vm(ids).logits
        w0 = vm.model.layers[0].self_attn.q_proj.base_layer.weight.clone()
        merge_adapter(vm)
        torch.testing.assert_close(vm(ids).logits, unmerged, **TOL)
        unmerge_adapter(vm)
        torch.testing.assert_close(
            vm.model.layers[0].self_attn.q_proj.base_layer.weight, w0, rtol=0, atol=1e-6
        )
        torch.testing.assert_close(vm(ids).logits, unmerged, **TOL)
        disable_adapters(vm)
        torch.testing.assert_close(vm(ids).logits, hf(ids).logits, **TOL)
        enable_adapters(vm)
        torch.testing.assert_close(vm(ids).logits, unmerged, **TOL)
        add_lora(vm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), "second")
        torch.testing.assert_close(vm(ids).logits, hf(ids).logits, **TOL)  # B = 0: base model
        set_adapter(vm, "default")
        torch.testing.assert_close(vm(ids).logits, unmerged, **TOL)


def test_generation_with_unmerged_lora_equals_peft(base, tmp_path):
    """Greedy decoding with an unmerged adapter (dropout configured, inactive at inference): the
    fused CPU decode step (which computes the LoRA branches itself) and the libtorch step both
    give peft's tokens; with the adapter disabled, the base model's."""
    hf, path = base
    pm = peft_model(hf, lora_dropout=0.1, target_modules="all-linear").eval()
    pm.save_pretrained(tmp_path / "adapter")
    vm = LlamaForCausalLM.from_pretrained(path)
    load_adapter(vm, tmp_path / "adapter")
    vm.eval()
    ids = torch.randint(3, 128, (2, 6))
    ref = pm.generate(
        input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    kw = dict(max_new_tokens=12, eos_token_id=[], pad_token_id=0)
    assert torch.equal(vm.generate(ids, **kw), ref)
    assert torch.equal(vm.generate(ids, cpu_kernels=False, **kw), ref)
    disable_adapters(vm)
    base_ref = hf.generate(
        ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert torch.equal(vm.generate(ids, **kw), base_ref)


def test_voxlm_adapter_loads_in_peft(base, tmp_path):
    hf, path = base
    vm = LlamaForCausalLM.from_pretrained(path)
    add_lora(vm, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in vm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    vm.rebind()
    save_adapter(vm, tmp_path / "mine")
    pm = PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "mine").eval()
    ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(vm(ids).logits, pm(input_ids=ids).logits, **TOL)
    adapted = {
        n
        for n, _ in pm.named_modules()
        if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    }
    assert len(adapted) == 14  # all-linear: every projection, not lm_head


def test_dropout_semantics_match_peft_in_training(base):
    hf, path = base
    pm = peft_model(hf).train()
    for m in pm.modules():
        if hasattr(m, "lora_dropout"):
            m.lora_dropout["default"] = torch.nn.Dropout(0.3)
    vm = LlamaForCausalLM.from_pretrained(path)
    add_lora(
        vm, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj", "v_proj"])
    )
    vm.load_state_dict(
        {
            k.replace("base_model.model.", "").replace(".default", ".default"): v
            for k, v in pm.state_dict().items()
        },
        strict=False,
    )
    vm.train()
    ids = torch.randint(0, 128, (2, 8))
    torch.manual_seed(5)
    a = pm(input_ids=ids).logits
    torch.manual_seed(5)
    b = vm(ids).logits
    torch.testing.assert_close(b, a, **TOL)


def test_training_step_updates_only_adapters(base):
    _, path = base
    vm = LlamaForCausalLM.from_pretrained(path)
    add_lora(vm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    frozen = {n: p.clone() for n, p in vm.named_parameters() if not p.requires_grad}
    params = [p for p in vm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2)
    ids = toy_batch(2, 10)
    labels = ids.clone()
    labels[:, :4] = -100
    losses = []
    for _ in range(30):
        opt.zero_grad()
        out = vm(ids, labels=labels)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.3 * losses[0]
    for n, p in vm.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert len(opt.state) == len(params) == 8


def test_bias_tuning_learns_with_frozen_weights(base):
    _, path = base
    vm = LlamaForCausalLM.from_pretrained(path)
    n = add_bias_tuning(vm)
    names = [k for k, p in vm.named_parameters() if p.requires_grad]
    assert all(k.endswith(".bias") or "norm" in k for k in names)
    assert any(k.endswith("q_proj.bias") for k in names) and not any("k_proj" in k for k in names)
    assert n == sum(p.numel() for p in vm.parameters() if p.requires_grad)
    frozen = {k: p.clone() for k, p in vm.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in vm.parameters() if p.requires_grad], lr=2e-2)
    ids = toy_batch()
    start = vm(ids, labels=ids).loss.item()
    for _ in range(25):
        opt.zero_grad()
        vm(ids, labels=ids).loss.backward()
        opt.step()
    assert vm(ids, labels=ids).loss.item() < 0.3 * start
    for k, p in vm.named_parameters():
        if k in frozen:
            assert torch.equal(p, frozen[k]), k


def test_prefix_tuning_learns_with_frozen_llm(base):
    _, path = base
    vm = LlamaForCausalLM.from_pretrained(path)
    for p in vm.parameters():
        p.requires_grad_(False)
    before = {k: p.clone() for k, p in vm.state_dict().items()}
    enc = PrefixEncoder(in_dim=32 + 14, hidden_size=64, num_prefix=4, width=32, depth=1, heads=2)
    opt = torch.optim.AdamW(enc.parameters(), lr=5e-3)
    cond = torch.randn(4, 46)  # image embedding ; multi-label logits
    ids = toy_batch(4, 8)
    emb = vm.get_input_embeddings()(ids)

    def loss():
        e, m, lab = prepend_prefix(enc(cond), emb, None, ids)
        assert e.shape == (4, 12, 64) and m.shape == (4, 12) and (lab[:, :4] == -100).all()
        return vm(inputs_embeds=e, attention_mask=m, labels=lab).loss

    start = loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.3 * start
    for k, p in vm.state_dict().items():
        assert torch.equal(p, before[k]), k


def test_bad_adapter_inputs(base, tmp_path):
    hf, path = base
    vm = LlamaForCausalLM.from_pretrained(path)
    with pytest.raises(voxlm.ConfigError, match="matches no nn.Linear"):
        add_lora(vm, LoraConfig(r=4, target_modules=["qkv"]))
    with pytest.raises(voxlm.ConfigError, match="positive integer rank"):
        LoraConfig(r=0, target_modules=["q_proj"])
    # an adapter for a wider model
    big = hf_tiny_llama(hidden_size=96)
    peft_model(big).save_pretrained(tmp_path / "wide")
    with pytest.raises(voxlm.CheckpointError, match=r"lora_A.weight has shape \(4, 96\)"):
        load_adapter(LlamaForCausalLM.from_pretrained(path), tmp_path / "wide")
    with pytest.raises(voxlm.CheckpointError, match="no adapter_config.json"):
        load_adapter(vm, tmp_path)
    deep = hf_tiny_llama(num_hidden_layers=3)
    peft_model(deep).save_pretrained(tmp_path / "deep")
    with pytest.raises(voxlm.CheckpointError, match="unexpected base_model.model.model.layers.2"):
        load_adapter(LlamaForCausalLM.from_pretrained(path), tmp_path / "deep")


def test_adaption_prompt_equals_peft(base):
    from peft import AdaptionPromptConfig

    from voxlm.adapters import add_adaption_prompt

    hf, path = base
    pm = get_peft_model(
        copy.deepcopy(hf),
        AdaptionPromptConfig(adapter_len=5, adapter_layers=1, task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "adaption_gate" in n:
                p.fill_(0.7)  # zero at init: make the branch visible
    vm = LlamaForCausalLM.from_pretrained(path)
    n = add_adaption_prompt(vm, adapter_len=5, adapter_layers=1)
    assert n == 5 * 64 + 1
    ids = torch.randint(0, 128, (2, 7))
    torch.testing.assert_close(vm(ids).logits, hf(ids).logits, **TOL)  # gate 0: base model
    with torch.no_grad():
        src = dict(pm.named_parameters())
        for k, p in vm.named_parameters():
            if "adaption" in k:
                p.copy_(src[f"base_model.model.{k}"])
    a = pm(input_ids=ids, labels=ids)
    b = vm(ids, labels=ids)
    torch.testing.assert_close(b.logits, a.logits, **TOL)
    a.loss.backward()
    b.loss.backward()
    for k, p in vm.named_parameters():
        if "adaption" in k:
            torch.testing.assert_close(p.grad, src[f"base_model.model.{k}"].grad, **TOL, msg=k)


def test_lora_on_a_vision_module_equals_peft():
    """LoRA is not LLaMA-only: any nn.Module's linears (here MONAI's ViT, as used by M3D)."""
    from monai.networks.nets import ViT

    torch.manual_seed(0)
    vit = ViT(
        in_channels=1,
        img_size=(8, 16, 16),
        patch_size=(4, 8, 8),
        hidden_size=48,
        mlp_dim=96,
        num_layers=2,
        num_heads=4,
        classification=False,
    ).eval()
    cfg = dict(r=4, lora_alpha=8, target_modules=["qkv", "out_proj", "linear1"])
    pm = get_peft_model(copy.deepcopy(vit), PeftLoraConfig(**cfg))
    ours = copy.deepcopy(vit)
    names = add_lora(ours, LoraConfig(**cfg))
    assert len(names) == 6
    with torch.no_grad():
        src = {
            n.replace("base_model.model.", "").replace(".default", ""): p
            for n, p in pm.named_parameters()
        }
        for n, p in ours.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
                src[n.replace(".default", "")].copy_(p)
            elif "lora_A" in n:
                p.copy_(src[n.replace(".default", "")])
    x = torch.randn(2, 1, 8, 16, 16)
    torch.testing.assert_close(ours(x)[0], pm(x)[0], **TOL)


def test_gradient_checkpointing_gives_equal_grads(base):
    _, path = base
    ids = toy_batch(2, 10)
    grads = []
    for ckpt in (False, True):
        vm = LlamaForCausalLM.from_pretrained(path)
        torch.manual_seed(1)
        add_lora(vm, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
        with torch.no_grad():
            for n, p in vm.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.01)
        vm.train()
        if ckpt:
            vm.gradient_checkpointing_enable()
        torch.manual_seed(3)
        loss = vm(ids, labels=ids).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in vm.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-6, msg=k)
