"""bench/recipes, part ``vit3d_llama``: report generation over a small test set with the recipe's
generation settings (batched, beams as configured) vs the same saved model run through
transformers' ``generate`` (HF LLaMA from the saved ``llm/`` folder + the resized embedding rows +
PEFT's LoRA adapter from ``adapter/``), both from the same image embeddings (the recipe's ViT3D +
spatial pooling projector, timed on both sides). Tokens must be identical; CPU, fp32.

``python bench/bench_vit3d_llama.py`` prints the markdown block; ``bench_recipes.run()`` includes
it through :func:`vit3d_llama_generate`.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def vit3d_llama_generate(
    n_volumes: int = 4,
    batch: int = 2,
    new_tokens: int = 32,
    repeats: int = 2,
    beams: tuple[int, ...] = (1, 2),
) -> str:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM as HFLlama

    sys.path.insert(0, str(HERE))
    from common import median_time

    from voxlm.recipes import get_recipe

    torch.manual_seed(0)
    recipe = dict(
        img_size=[16, 64, 64],
        patch_size=[4, 16, 16],
        vision_hidden_size=64,
        vision_mlp_dim=128,
        vision_layers=2,
        vision_heads=4,
        max_new_tokens=new_tokens,
        eval_batch_size=batch,
    )
    llm = dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    m = get_recipe("vit3d_llama").from_config(recipe, {"llm": llm, "tokenizer": "bundled:ctrg-bpe"})
    m.set_stage(2)
    with torch.no_grad():  # a non-trivial adapter (B is zero after initialisation)
        for k, p in m.llm.named_parameters():
            if ".lora_B." in k:
                p.normal_(0, 0.05)
    m.llm.rebind()
    m.eval()
    images = torch.rand(n_volumes, 1, 16, 64, 64)
    coll = m.collator(generation=True)
    batches = [
        coll([{"image": im, "prompt": None, "target": ""} for im in images[s : s + batch]])
        for s in range(0, n_volumes, batch)
    ]
    tok = m.tokenizer
    rows = []
    with tempfile.TemporaryDirectory() as d:
        m.save_pretrained(d)
        hf = HFLlama.from_pretrained(f"{d}/llm")
        e = load_file(f"{d}/embeddings.safetensors")
        hf.resize_token_embeddings(e["embed_tokens"].shape[0])
        with torch.no_grad():
            hf.model.embed_tokens.weight.copy_(e["embed_tokens"])
            hf.lm_head.weight.copy_(e["lm_head"])
        ref = PeftModel.from_pretrained(hf, f"{d}/adapter").eval()
        for nb in beams:

            def ours(nb=nb):
                return [
                    m.generate(b["images"], b["input_ids"], b["attention_mask"], num_beams=nb)
                    for b in batches
                ]

            def theirs(nb=nb):
                out = []
                for b in batches:
                    with torch.no_grad():
                        emb = m.embed(b["images"], b["input_ids"])
                        g = ref.generate(
                            inputs_embeds=emb,
                            attention_mask=b["attention_mask"],
                            max_new_tokens=new_tokens,
                            num_beams=nb,
                            do_sample=False,
                            eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id,
                        )
                    out.append(g)
                return out

            a, b_ = ours(), theirs()
            same = all(
                torch.equal(x, y[:, : x.shape[1]])
                and bool((y[:, x.shape[1] :] == tok.pad_token_id).all())
                for x, y in zip(a, b_)
            )
            n_tok = sum(int((x != tok.pad_token_id).sum()) for x in a)
            t_ours, _ = median_time(ours, repeats)
            t_ref, _ = median_time(theirs, repeats)
            rows.append(
                f"| {nb} | {n_tok / t_ref:.0f} | {n_tok / t_ours:.0f} | {t_ref / t_ours:.2f}x | "
                f"{'yes' if same else 'NO'} |"
            )
    return (
        "### vit3d_llama report generation (recipe vs transformers + PEFT)\n\n"
        f"{n_volumes} volumes 1x16x64x64 in batches of {batch} (ViT3D 64 wide x 2 layers with "
        "class token, "
        f"{m.num_image_tokens} image tokens), LLaMA 256 wide x 4 layers (GQA 8/2), vocabulary "
        f"{m.llm.config.vocab_size} (bundled BPE + M3D's added tokens), LoRA r16 on every linear "
        "(unmerged), "
        f"{new_tokens} new tokens, greedy / beam search; the same image embeddings on both sides "
        "(encoding timed "
        f"on both); median of {repeats}; 1-minute load average {os.getloadavg()[0]:.1f} at the "
        "end.\n\n"
        "| beams | transformers + peft (tok/s) | voxlm recipe (tok/s) | speed-up "
        "| tokens identical |\n"
        "|---:|---:|---:|---:|:---:|\n" + "\n".join(rows) + "\n"
    )


def run() -> str:
    from common import machine

    return f"## Recipes: vit3d_llama\n\n{machine()}\n\n" + vit3d_llama_generate()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    print(run())
