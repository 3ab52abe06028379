"""The main job (``make demo``) end to end, small: NIfTI phantoms -> Rust load_batch -> ViT3D ->
projector -> LLaMA + LoRA training -> generation -> scoring; plus the recipe's stage switching."""

import json

import torch

from voxlm.adapters import LoraConfig
from voxlm.demo import run
from voxlm.llm import LlamaConfig, LlamaForCausalLM
from voxlm.recipes import ViT3DLlama
from voxlm.vision import ViT3D


def test_demo_runs_and_learns(tmp_path):
    s = run(steps=45, out=str(tmp_path), meteor=False)
    v = s["vit3d_llama"]
    assert v["volumes"] == [8, 1, 32, 64, 64]
    assert v["loss_end"] < 0.6 * v["loss_start"]
    assert json.loads((tmp_path / "summary.json").read_text())["dia_llama_reports"]["n_reports"] == 362
    assert (tmp_path / "generated_reports.json").is_file()


def test_recipe_stages_train_the_right_parameters():
    vision = ViT3D(img_size=(8, 32, 32), patch_size=(4, 16, 16), hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                       num_attention_heads=4))
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
