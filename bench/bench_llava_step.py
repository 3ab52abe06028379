"""bench/llava_step: one LLaVA stage-2 training step (frozen CLIP tower -> hidden state -2 without
CLS -> frozen ``mm_projector`` (mlp2x_gelu) -> image tokens spliced into the prompt -> LLaMA with
LoRA on every linear -> loss -> backward -> AdamW), voxlm's ``llava_rrg`` recipe against
transformers ``CLIPVisionModel`` + ``LlamaForCausalLM`` + peft LoRA on the same saved weights
(what LLaVA's ``clip_encoder.py`` / ``llava_arch.py`` run), fp32 CPU.

Speed: both sides built in one process and stepped alternately (peft, voxlm, peft, ...), so that
the machine's load falls on both alike; medians. The first step's losses are compared (LoRA B
starts at zero, so both are the base model's loss). Memory: each side alone in a fresh process
(peak = the process's VmHWM; growth = peak minus the high-water mark after building the model).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, time, torch
torch.manual_seed(0)
mode, path, run = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0

B, T, N = run["B"], run["T"], run["N"]
g = torch.Generator().manual_seed(1)
px = torch.randn(B, 3, run["S"], run["S"], generator=g)
ids = torch.randint(4, run["V"], (B, T), generator=g)
img = torch.zeros(B, T, dtype=torch.bool)
img[:, 1 : 1 + N] = True
labels = ids.clone()
labels[:, : 1 + N + 8] = -100
proj_sd = torch.load(path + "/proj.pt")

def build_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionModel, LlamaForCausalLM

    vis = CLIPVisionModel.from_pretrained(path + "/clip").eval().requires_grad_(False)
    proj = torch.nn.Sequential(
        torch.nn.Linear(run["D"], run["H"]), torch.nn.GELU(), torch.nn.Linear(run["H"], run["H"])
    )
    proj.load_state_dict(proj_sd)
    proj.requires_grad_(False)
    torch.manual_seed(0)
    llm = get_peft_model(
        LlamaForCausalLM.from_pretrained(path + "/llm"),
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"),
    )
    llm.train()

    def loss():
        # llava/model/multimodal_encoder/clip_encoder.py: the whole tower under no_grad,
        # hidden_states[-2], patch tokens
        with torch.no_grad():
            f = vis(px, output_hidden_states=True).hidden_states[-2][:, 1:]
        e = llm.get_input_embeddings()(ids)
        e = e.masked_scatter(img.unsqueeze(-1), proj(f).reshape(-1, e.shape[-1]))
        return llm(inputs_embeds=e, labels=labels).loss

    return loss, [p for p in llm.parameters() if p.requires_grad]

def build_voxlm(early_exit=False):
    import inspect

    from voxlm.llm import LlamaForCausalLM
    from voxlm.recipes.base import build_tokenizer
    from voxlm.recipes.llava_rrg import LlavaRRG, LlavaRRGConfig
    from voxlm.vision import CLIPVision

    cfg = LlavaRRGConfig(lora_r=16, lora_alpha=32, lora_dropout=0.05, sections=("findings",))
    torch.manual_seed(0)
    m = LlavaRRG(
        cfg,
        LlamaForCausalLM.from_pretrained(path + "/llm"),
        build_tokenizer("bundled:ctrg-bpe"),
        CLIPVision.from_pretrained(path + "/clip"),
    )
    m.mm_projector.load_state_dict(proj_sd)
    m.set_stage("report", "findings")
    m.train()
    if early_exit:
        # the change proposed for LlavaRRG.image_features (llava_rrg.py): the tower's
        # hidden_state(x, select_layer) instead of every hidden state of forward(x)
        assert "hidden_state(" not in inspect.getsource(LlavaRRG.image_features)
        dtype = m.vision.vision_model.pre_layrnorm.weight.dtype

        def image_features(pixel_values):
            with torch.no_grad():
                f = m.vision.hidden_state(pixel_values.to(dtype), m.cfg.select_layer)
            return f[:, 1:] if m.cfg.select_feature == "patch" else f

        m.image_features = image_features

    def loss():
        return m(input_ids=ids, image_mask=img, pixel_values=px, labels=labels).loss

    return loss, [p for p in m.parameters() if p.requires_grad]

def step(loss_fn, opt):
    t0 = time.perf_counter()
    loss = loss_fn()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, loss.item()

BUILD = {
    "peft": build_peft,
    "voxlm": build_voxlm,
    "voxlm_exit": lambda: build_voxlm(early_exit=True),
}
if mode == "alternate":
    sides = {k: BUILD[k]() for k in run["SIDES"]}
    opts = {k: torch.optim.AdamW(p, lr=1e-4) for k, (_, p) in sides.items()}
    times = {k: [] for k in sides}
    first = {}
    for i in range(run["WARMUP"] + run["STEPS"]):
        for k, (fn, _) in sides.items():
            dt, loss = step(fn, opts[k])
            first.setdefault(k, loss)
            if i >= run["WARMUP"]:
                times[k].append(dt)
    print(json.dumps({
        "median": {k: statistics.median(v) for k, v in times.items()},
        "times": times,
        "first_loss": first,
        "n_params": {k: sum(p.numel() for p in ps) for k, (_, ps) in sides.items()},
    }))
else:
    fn, params = BUILD[mode]()
    opt = torch.optim.AdamW(params, lr=1e-4)
    base = hwm_kb()
    times = [step(fn, opt)[0] for _ in range(run["WARMUP"] + run["STEPS"])][run["WARMUP"]:]
    peak = hwm_kb()
    print(json.dumps({
        "median": statistics.median(times),
        "peak_mb": peak / 1024,
        "growth_mb": (peak - base) / 1024,
    }))
"""


def _child(mode: str, d: str, run: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, d, json.dumps(run)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode:
        raise RuntimeError(f"bench_llava_step child {mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(steps: int = 7, warmup: int = 2) -> str:
    import inspect
    import os

    import torch
    import transformers
    from common import machine, write_llava_parts

    cfg = dict(B=2, T=256, S=168, N=144, D=256, H=512, V=1024, STEPS=steps, WARMUP=warmup)
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        write_llava_parts(d, cfg["S"], cfg["D"], cfg["H"], cfg["V"])
        from voxlm.recipes.llava_rrg import LlavaRRG

        # the recipe's own image_features, and, until llava_rrg.py takes it, the same recipe with
        # image features from CLIPVision.hidden_state (stops after the selected layer)
        pending = "hidden_state(" not in inspect.getsource(LlavaRRG.image_features)
        cfg["SIDES"] = ["peft", "voxlm"] + (["voxlm_exit"] if pending else [])
        load0 = os.getloadavg()
        alt = _child("alternate", d, cfg)
        mem = {side: _child(side, d, cfg) for side in cfg["SIDES"]}
        load1 = os.getloadavg()
    med, fl = alt["median"], alt["first_loss"]
    names = {
        "peft": "transformers + peft",
        "voxlm": "voxlm `llava_rrg`",
        "voxlm_exit": "voxlm `llava_rrg`, image features from `CLIPVision.hidden_state(x, -2)` "
        "(change pending in `llava_rrg.image_features`)",
    }
    rows = []
    for k in cfg["SIDES"]:
        ts = ", ".join(f"{t:.3f}" for t in alt["times"][k])
        ratio = med["peft"] / med[k]
        rows.append(
            f"| {names[k]} | {med[k]:.3f} | {ts} | **{ratio:.2f}x** | {mem[k]['peak_mb']:.0f} "
            f"| {mem[k]['growth_mb']:.0f} | {mem[k]['median']:.3f} |"
        )
    losses = " / ".join(f"{fl[k]:.6f}" for k in cfg["SIDES"])
    return "\n".join(
        [
            "## llava_step: LLaVA stage-2 training step (frozen CLIP, mlp2x_gelu, LoRA on the "
            "LLM), voxlm vs transformers + peft",
            "",
            f"Machine: {machine()}; transformers {transformers.__version__}. CLIP {cfg['D']} "
            f"wide x 4 layers at {cfg['S']} px ({cfg['N']} patch tokens from hidden state -2), "
            f"mlp2x_gelu {cfg['D']}->{cfg['H']}, LLaMA {cfg['H']} wide x 4 layers (vocab "
            f"{cfg['V']}), batch {cfg['B']} x {cfg['T']} tokens, LoRA r16/a32 on every LLM linear "
            f"(trainable {alt['n_params']['voxlm']:,} voxlm / {alt['n_params']['peft']:,} peft), "
            f"AdamW, fp32. Speed: the sides in one process, stepped alternately, median of "
            f"{steps} steps after {warmup} warm-up; memory: each side alone in a fresh process "
            f"(its own median step time in the last column). Load average {load0[0]:.1f} before, "
            f"{load1[0]:.1f} after. First-step losses (rows in order): {losses}.",
            "",
            "| implementation | step s (median) | steps (s) | speed-up | peak RSS MB (alone) "
            "| RSS growth MB | step s alone |",
            "|---|---:|---|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    print(run())
