"""bench/recipes: the recipes' own hot paths against plain PyTorch / transformers + peft, CPU.
Shared by the recipe engineers: each adds a function returning a markdown block to ``BENCHES``;
``run()`` returns the section.

* ``picg_features``: PICG guideline-feature extraction (3D CLIP domain adapter -> visual queries
  -> adapted, bias-tuned LLaMA, final-norm hidden states of the guideline prompt) for T2W/ADC/DWI
  batches: voxlm's recipe (Rust CLIP/query blocks/first layers, PyTorch adapted layers) vs the
  transcription of PICG's ``llama_adapter_prostate.py`` + ``llama.py`` in
  ``tests/test_recipe_picg.py`` (open_clip ``VisionTransformer``, timm ``Block``, Meta's LLaMA)
  with the same weights (loaded through voxlm's LLaMA-Adapter ``.pth`` mapping): features/s.
* ``llava_stage2``: one LLaVA stage-2 training step (frozen CLIP -> mm_projector -> LLaMA with
  LoRA on every linear; AdamW on the LoRA weights) — voxlm's recipe vs transformers
  ``CLIPVisionModel`` + ``LlamaForCausalLM`` + peft on the same weights; each side in its own
  process for its peak RSS (VmHWM).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def picg_features(batches: int = 3, repeats: int = 3) -> str:
    import torch

    sys.path.insert(0, str(ROOT))
    from common import median_time

    import tests.test_recipe_picg as T  # the transcription of PICG's forward
    from voxlm.clip_openai import load_openai_clip_vision
    from voxlm.llm import LlamaConfig, LlamaForCausalLM
    from voxlm.recipes import picg as P
    from voxlm.recipes.base import build_tokenizer

    torch.manual_seed(0)
    T.DIM, T.HEADS, T.LAYERS, T.QLAYER, T.QLEN, T.VOCAB = 256, 8, 4, 3, 10, 1024
    T.VDIM, T.VDEPTH, T.VHEADS, T.CLIP_W, T.CLIP_OUT = 128, 2, 8, 256, 192
    ref = T._ref_model()
    ref.llama.freqs_cis = T.precompute_freqs_cis(T.DIM // T.HEADS, 2048)
    cfg = P.PICGConfig(
        v_embed_dim=T.VDIM,
        v_depth=T.VDEPTH,
        v_num_heads=T.VHEADS,
        query_len=T.QLEN,
        query_layer=T.QLAYER,
        clip_heads=1,
        max_words=2048,
    )
    inter = ref.llama.layers[0].feed_forward.w1.out_features
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=T.VOCAB,
            hidden_size=T.DIM,
            intermediate_size=inter,
            num_hidden_layers=T.LAYERS,
            num_attention_heads=T.HEADS,
            rms_norm_eps=1e-5,
            max_position_embeddings=2048,
        )
    )
    tok = build_tokenizer("bundled:ctrg-bpe")
    model = P.PICG(cfg, llm, tok, load_openai_clip_vision(T._visual(9).state_dict(), num_heads=1))
    model.load_llama_adapter(ref.state_dict(), strict=True)
    model.eval()
    prompts = [model.prompt(s, "feature") for s in ("t2w", "adc", "dwi")]
    enc = tok(prompts, padding_side="right")
    L = int(enc["attention_mask"].sum(1).min())
    ids = enc["input_ids"][:, :L]  # equal lengths for the reference (no padding mask there)
    vols = torch.randn(3, 1, 84, 84, 98)

    def ours() -> None:
        with torch.no_grad():
            for _ in range(batches):
                model.lm(ids, None, model.visual_query(vols))

    def theirs() -> None:
        with torch.no_grad():
            for _ in range(batches):
                ref(ids, vols)

    with torch.no_grad():
        a, _ = model.lm(ids, None, model.visual_query(vols))
        b = ref(ids, vols)[1]
    err = float((a - b).abs().max())
    t_ours, _ = median_time(ours, repeats)
    t_ref, _ = median_time(theirs, repeats)
    n = 3 * batches
    return (
        "### PICG guideline features (T2W/ADC/DWI batches)\n\n"
        f"CLIP width {T.CLIP_W} (2 layers, 257 tokens from 84x84x98), query blocks "
        f"{T.VDIM}x{T.VDEPTH}, LLaMA "
        f"{T.DIM} wide, {T.LAYERS} layers ({T.QLAYER} adapted), guideline prompt {L} tokens "
        "(bundled BPE); "
        f"{n} features per run, median of {repeats}; max |hidden difference| {err:.1e}.\n\n"
        "| implementation | features/s | speed-up |\n|---|---:|---:|\n"
        "| PICG transcription (open_clip + timm + Meta LLaMA, PyTorch) "
        f"| {n / t_ref:.2f} | 1.00x |\n"
        f"| voxlm `picg` recipe | {n / t_ours:.2f} | {t_ref / t_ours:.2f}x |\n"
    )


LLAVA_CHILD = r"""
import json, statistics, sys, time, torch
def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
side, path, run = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
torch.manual_seed(0)
B, T, N = run["B"], run["T"], run["N"]
px = torch.randn(B, 3, run["S"], run["S"])
ids = torch.randint(4, 1000, (B, T))
img = torch.zeros(B, T, dtype=torch.bool); img[:, 1:1 + N] = True
labels = ids.clone(); labels[:, :1 + N + 8] = -100
proj_sd = torch.load(path + "/proj.pt")
if side == "peft":
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionModel, LlamaForCausalLM
    vis = CLIPVisionModel.from_pretrained(path + "/clip").eval().requires_grad_(False)
    proj = torch.nn.Sequential(
        torch.nn.Linear(run["D"], run["H"]), torch.nn.GELU(), torch.nn.Linear(run["H"], run["H"])
    )
    proj.load_state_dict(proj_sd); proj.requires_grad_(False)
    llm = get_peft_model(
        LlamaForCausalLM.from_pretrained(path + "/llm"),
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"),
    )
    def step_loss():
        with torch.no_grad():
            f = vis(px, output_hidden_states=True).hidden_states[-2][:, 1:]
        e = llm.get_input_embeddings()(ids)
        e = e.masked_scatter(img.unsqueeze(-1), proj(f).reshape(-1, e.shape[-1]))
        return llm(inputs_embeds=e, labels=labels).loss
    params = [p for p in llm.parameters() if p.requires_grad]
else:
    import voxlm
    from voxlm.recipes.llava_rrg import LlavaRRG, LlavaRRGConfig
    from voxlm.llm import LlamaForCausalLM
    from voxlm.vision import CLIPVision
    from voxlm.recipes.base import build_tokenizer
    cfg = LlavaRRGConfig(lora_r=16, lora_alpha=32, lora_dropout=0.05, sections=("findings",))
    m = LlavaRRG(
        cfg,
        LlamaForCausalLM.from_pretrained(path + "/llm"),
        build_tokenizer("bundled:ctrg-bpe"),
        CLIPVision.from_pretrained(path + "/clip"),
    )
    m.mm_projector.load_state_dict(proj_sd)
    m.set_stage("report", "findings"); m.train()
    step_loss = lambda: m(input_ids=ids, image_mask=img, pixel_values=px, labels=labels).loss
    params = [p for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
base = hwm_kb(); times = []
for i in range(run["WARMUP"] + run["STEPS"]):
    t0 = time.perf_counter()
    loss = step_loss(); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    if i >= run["WARMUP"]:
        times.append(time.perf_counter() - t0)
print(json.dumps({
    "step_s": statistics.median(times),
    "peak_mb": hwm_kb() / 1024,
    "n_params": sum(p.numel() for p in params),
}))
"""


def llava_stage2(steps: int = 5, warmup: int = 1) -> str:
    import torch
    from common import write_llava_parts

    run = dict(B=2, T=192, S=112, N=64, D=256, H=512, STEPS=steps, WARMUP=warmup)
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        write_llava_parts(d, run["S"], run["D"], run["H"], 1024)
        res = {}
        for side in ("peft", "voxlm"):
            out = subprocess.run(
                [sys.executable, "-c", LLAVA_CHILD, side, d, json.dumps(run)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            )
            res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    p, v = res["peft"], res["voxlm"]
    return (
        "### LLaVA stage-2 training step (LoRA on every linear)\n\n"
        f"CLIP {run['D']} wide x 4 layers at {run['S']} px ({run['N']} patch tokens, layer -2), "
        "mlp2x_gelu, LLaMA "
        f"{run['H']} wide x 4 layers, batch {run['B']} x {run['T']} tokens, LoRA r16 "
        f"(trainable {v['n_params']:,} vs "
        f"{p['n_params']:,}), AdamW, fp32; median of {steps} steps after {warmup} warm-up; "
        "peak RSS per process.\n\n"
        "| implementation | step (s) | speed-up | peak RSS (MB) |\n|---|---:|---:|---:|\n"
        f"| transformers + peft | {p['step_s']:.3f} | 1.00x | {p['peak_mb']:.0f} |\n"
        f"| voxlm `llava_rrg` | {v['step_s']:.3f} | {p['step_s'] / v['step_s']:.2f}x "
        f"| {v['peak_mb']:.0f} |\n"
    )


def dia_llama_generate(
    cases: int = 8, batch: int = 4, new_tokens: int = 48, repeats: int = 3
) -> str:
    """Dia-LLaMA report generation over a test set (prediction -> prompt -> greedy report,
    batches of ``batch``): the recipe vs the released path (the transcription of
    ``MultiLLaMAForCausalLM`` / ``MyEmbedding`` in ``tests/test_recipe_dia_llama.py``,
    transformers ``LlamaForCausalLM`` + peft LoRA, ``generate(inputs_embeds=...)``) with the
    same weights (loaded through ``DiaLlama.load_released``; the reference is built by
    ``released_reference`` there, as the test builds it); tokens compared."""
    import torch

    sys.path.insert(0, str(ROOT))
    from common import median_time

    import tests.test_recipe_dia_llama as T  # the transcription and its builder
    from voxlm.recipes.dia_llama import DiaLlama

    llm = dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    m = DiaLlama.from_config(
        {**T.TINY, "max_new_tokens": new_tokens}, {"llm": llm, "tokenizer": "bundled:ctrg-bpe"}
    )
    ref, emb = T.released_reference(m, llm, lora_b_std=0.02)
    m.load_released(ref.state_dict())
    m.eval()
    ref.eval()
    images = torch.rand(cases, 3, *m.config.image_size)
    labels = torch.zeros(cases, 14, dtype=torch.long)
    labels[:, 3] = 1  # one prompt for every case: equal lengths, no padding on either side
    pr = m.prompter
    ids = torch.tensor([pr.prompt_ids(pr.question(labels[0].tolist()))] * batch)

    def ours() -> list[list[int]]:
        out = []
        for i in range(0, cases, batch):
            out += m.generate(
                images[i : i + batch], labels=labels[i : i + batch], return_dict=True
            ).tokens.tolist()
        return out

    def theirs() -> list[list[int]]:
        out = []
        with torch.no_grad():
            for i in range(0, cases, batch):
                vx = images[i : i + batch].permute(0, 1, 3, 4, 2)[:, None]
                e = emb(vision_x=vx, text_input=ids[: vx.shape[0]])
                g = ref.lang_model.generate(
                    inputs_embeds=e,
                    attention_mask=torch.ones(e.shape[:2], dtype=torch.long),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    eos_token_id=pr.eos,
                    pad_token_id=pr.pad,
                )
                out += g.tolist()
        return out

    a, b = ours(), theirs()
    same = all(x[: len(y)] == y for x, y in zip(a, b))
    t_ours, _ = median_time(ours, repeats)
    t_ref, _ = median_time(theirs, repeats)
    ntok = cases * new_tokens
    return (
        f"### Dia-LLaMA report generation ({cases} cases, batches of {batch}, {new_tokens} new "
        "tokens, greedy)\n\n"
        f"LLM hidden {llm['hidden_size']}, {llm['num_hidden_layers']} layers, LoRA r8 on q/v; "
        "prompt "
        f"{ids.shape[1]} tokens (32 image tokens + 14 diagnostic sentences + instruction). "
        "Tokens identical: "
        f"{'yes' if same else 'NO'}.\n\n"
        "| | s per test set | tokens/s | speed-up |\n|---|---|---|---|\n"
        f"| released path (transformers + peft generate) | {t_ref:.2f} | {ntok / t_ref:.0f} "
        "| 1.00x |\n"
        f"| voxlm `dia_llama` | {t_ours:.2f} | {ntok / t_ours:.0f} | {t_ref / t_ours:.2f}x |\n"
    )


BENCHES = [picg_features, llava_stage2, dia_llama_generate]


def vit3d_llama_generate() -> str:
    """recipe vit3d_llama: report generation vs transformers + PEFT (bench/bench_vit3d_llama.py)."""
    sys.path.insert(0, str(HERE))
    from bench_vit3d_llama import vit3d_llama_generate as bench

    return bench()


BENCHES.append(vit3d_llama_generate)


def run() -> str:
    from common import machine

    parts = [f"## Recipes\n\n{machine()}\n"]
    for fn in BENCHES:
        parts.append(fn())
    return "\n".join(parts)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    print(run())
