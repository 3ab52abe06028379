"""``make demo`` / ``voxlm demo``: voxlm's main job on bundled data, end to end.

1. CT preprocessing: synthetic chest-CT phantoms written as int16 NIfTI, loaded by the Rust
   pipeline (RAS, HU window -160..240, resize) into one batch tensor.
2. ViT3D -> spatial pooling projector -> LLaMA with LoRA (the M3D / ViT3D-LLaMA3 recipe,
   tiny sizes): stage 1 trains the projector, stage 2 adds LoRA; the model learns to write the
   paired radiology reports (real CTRG-Chest reports bundled from Dia-LLaMA, tokenised by a BPE
   tokenizer trained on them). The phantoms carry no clinical signal: this shows the machinery
   (losses fall, generation runs in Rust), not a clinical result.
3. Report evaluation as the papers do it: Dia-LLaMA's 362 released generated reports against
   the radiologists' (pycocoevalcap BLEU/ROUGE-L/CIDEr-D in Rust; METEOR 1.5 through its jar
   when Java is present) and its diagnostic prompts against the labels (clinical efficacy).
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import torch
from tqdm.auto import tqdm


def _phantoms(out: pathlib.Path, n: int) -> list[pathlib.Path]:
    from .volume import Volume, save_volume

    rng = np.random.default_rng(0)
    paths = []
    z, y, x = np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
    for i in range(n):
        body = (x**2 + (y * 1.3) ** 2) < 0.8
        lungs = body & (((x - 0.35) ** 2 + y**2 < 0.12) | ((x + 0.35) ** 2 + y**2 < 0.12))
        vol = np.where(body, 40, -1000).astype(np.int16)
        vol[lungs] = -850
        if i % 2:  # a nodule in every other case
            c = rng.uniform(-0.3, 0.3, 3)
            vol[((x - 0.35 - c[0] * 0.2) ** 2 + (y - c[1] * 0.3) ** 2 + (z - c[2]) ** 2) < 0.01] = 60
        vol = vol + rng.normal(0, 15, vol.shape).astype(np.int16)
        p = out / f"ct_{i:02d}.nii.gz"
        save_volume(Volume(np.ascontiguousarray(vol.transpose(2, 1, 0)), np.diag([-0.7, -0.7, 2.5, 1.0])), p)
        paths.append(p)
    return paths


def _train_vit3d_llama(out: pathlib.Path, steps: int) -> dict[str, object]:
    from . import transforms as T
    from .adapters import LoraConfig, trainable_parameters
    from .data import load_batch
    from .datasets import HERE, dia_llama_results
    from .llm import LlamaConfig, LlamaForCausalLM, Tokenizer
    from .metrics import report_scores
    from .recipes import ViT3DLlama
    from .vision import ViT3D

    torch.manual_seed(0)
    vol_dir = out / "volumes"
    vol_dir.mkdir(exist_ok=True)
    n = 8
    paths = _phantoms(vol_dir, n)
    t0 = time.perf_counter()
    pipe = T.Compose([T.Orientation("RAS"), T.ScaleIntensityRange(-160, 240, 0, 1, clip=True), T.Resize((32, 64, 64))])
    volumes = load_batch(paths, pipe)
    load_ms = (time.perf_counter() - t0) * 1e3

    tok = Tokenizer(HERE / "ctrg_bpe_tokenizer.json", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    reports = [r.strip()[:300] for r in dia_llama_results().references[:n]]
    vision = ViT3D(in_channels=1, img_size=(32, 64, 64), patch_size=(4, 16, 16), hidden_size=64, mlp_dim=128,
                   num_layers=2, num_heads=4)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       max_position_embeddings=512))
    model = ViT3DLlama(vision, llm, image_token_id=tok.token_to_id("<im_patch>"))
    prompt = model.prompt()
    prompt_ids = tok.encode(prompt)
    seqs = [prompt_ids + tok.encode(r, add_special_tokens=False) + [tok.eos_token_id] for r in reports]
    t = max(len(s) for s in seqs)
    ids = torch.full((n, t), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, t), dtype=torch.long)
    labels = torch.full((n, t), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, len(prompt_ids): len(s)] = torch.tensor(s[len(prompt_ids):])

    losses: list[float] = []
    for stage, n_steps, lr in ((1, steps // 3, 3e-3), (2, steps - steps // 3, 3e-3)):
        model.stage(stage, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
        if stage == 2:
            for p in model.llm.parameters():  # the tiny LLM is random: let it learn the language too
                p.requires_grad_(True)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        model.train()
        for _ in tqdm(range(n_steps), desc=f"stage {stage}", leave=False):
            opt.zero_grad()
            loss = model(volumes, ids, mask, labels).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
    trainable, total, _ = trainable_parameters(model)
    model.eval()
    prompt_batch = torch.tensor([prompt_ids] * 2)
    new = model.generate(volumes[:2], prompt_batch, max_new_tokens=60, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    generated = tok.batch_decode(new)
    scores = report_scores(reports[:2], [g if g.strip() else "<empty>" for g in generated], meteor=False)
    _plot(losses, out / "vit3d_llama_loss.png", stage2_start=steps // 3)
    (out / "generated_reports.json").write_text(json.dumps(
        [{"reference": r, "generated": g} for r, g in zip(reports[:2], generated)], indent=2))
    return {
        "volumes": list(volumes.shape),
        "load_batch_ms": round(load_ms, 1),
        "image_tokens_per_volume": model.num_image_tokens,
        "loss_start": round(losses[0], 3),
        "loss_end": round(losses[-1], 3),
        "steps": len(losses),
        "trainable_params_stage2": trainable,
        "all_params": total,
        "generated_example": generated[0][:160],
        "train_set_scores": {k: round(float(v), 4) for k, v in scores.items()},
    }


def _plot(losses: list[float], path: pathlib.Path, stage2_start: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses)
    ax.axvline(stage2_start, color="grey", linestyle="--", linewidth=1)
    ax.text(stage2_start * 0.5, max(losses), "stage 1:\nprojector", ha="center", va="top", fontsize=8)
    ax.text((stage2_start + len(losses)) * 0.5, max(losses), "stage 2:\n+ LoRA / LLM", ha="center", va="top", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("LM loss")
    ax.set_title("ViT3D -> projector -> LLaMA (+LoRA)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _reports(with_meteor: bool | None) -> dict[str, object]:
    from .datasets import dia_llama_results
    from .metrics import (
        java_available,
        meteor_score,
        multilabel_scores,
        parse_diagnostic_prompt,
        report_scores,
    )

    d = dia_llama_results()
    t0 = time.perf_counter()
    nlg = report_scores(d.references, d.predictions, meteor=False)
    ms = (time.perf_counter() - t0) * 1e3
    if with_meteor or (with_meteor is None and java_available()):
        nlg["METEOR"] = meteor_score([[r] for r in d.references], d.predictions)[0]
    prompts = np.stack([parse_diagnostic_prompt(q) for q in d.prompts])
    ce = multilabel_scores(d.labels, prompts, convention="dia_llama")
    return {
        "n_reports": len(d.ids),
        "nlg": {k: round(float(v), 4) for k, v in nlg.items()},
        "nlg_ms_bleu_rouge_cider": round(ms, 1),
        "prompt_labels_vs_truth": {k: round(float(ce[k]), 4) for k in ("precision_macro", "recall_macro", "f1_macro")},
        "paper_table1": {"BLEU-1": 0.5116, "BLEU-4": 0.2964, "METEOR": 0.2628, "ROUGE-L": 0.4215},
    }


def run(steps: int = 60, out: str = "demo_out", meteor: bool | None = None) -> dict[str, object]:
    """Run the demo, print a summary and write ``summary.json`` (and plots) under ``out``."""
    out_dir = pathlib.Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {
        "vit3d_llama": _train_vit3d_llama(out_dir, steps),
        "dia_llama_reports": _reports(meteor),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"outputs in {out_dir.resolve()}")
    return summary
