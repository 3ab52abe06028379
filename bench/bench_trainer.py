"""bench/trainer: voxlm.train.Trainer's overhead against a hand-written AdamW loop on the same
model and data, and checkpoint save/load time of a LLaMA-shaped LoRA run. CPU, fp32.

Step time: a voxlm LLaMA (2 layers, width 128, vocab 1024) with LoRA r8 on every linear, batch
4 x 64 tokens. The hand-written loop does what the trainer does per step (DataLoader with the same
collator, forward, backward, clip_grad_norm_ 1.0, AdamW, linear schedule, zero_grad, loss.item());
the trainer runs with metrics.csv on, tqdm and checkpoints off. Per-step time is
``(T(2N steps) - T(N steps)) / N`` so that fixed costs (the trainer's run folder, final/) cancel;
median of several repeats, both sides alternating in this one process, one torch thread.

Checkpoints: LLaMA width 512, 4 layers, 8/2 heads, vocab 8192, LoRA r16 on every linear; the
trainer's own checkpoint writer (trainable tensors + PEFT adapter + optimizer/scheduler/RNG,
tmp folder, fsync, rename) and resume loader.
"""

from __future__ import annotations

import pathlib
import shutil
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine  # noqa: E402


def _data(vocab: int, n: int, t: int):  # type: ignore[no-untyped-def]
    import torch
    from torch.utils.data import Dataset

    class Tok(Dataset):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.x = torch.randint(0, vocab, (n, t), generator=g)

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
            return {"input_ids": self.x[i]}

    def collate(items):  # type: ignore[no-untyped-def]
        ids = torch.stack([it["input_ids"] for it in items])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    return Tok(), collate


def _model(cfg: dict, r: int):  # type: ignore[no-untyped-def]
    import torch

    from voxlm.adapters import LoraConfig, add_lora
    from voxlm.llm import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(**cfg, max_position_embeddings=256))
    add_lora(m, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules="all-linear"))
    return m


def _hand_loop(model, ds, collate, steps: int, bs: int) -> float:  # type: ignore[no-untyped-def]
    import torch
    from torch.utils.data import DataLoader

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / steps))
    loader = DataLoader(ds, batch_size=bs, shuffle=True, collate_fn=collate)
    model.train()
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - t0


def _trainer(model, ds, collate, steps: int, bs: int, out: pathlib.Path) -> float:  # type: ignore[no-untyped-def]
    from voxlm.train import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        overwrite_output_dir=True,
        max_steps=steps,
        per_device_train_batch_size=bs,
        learning_rate=1e-4,
        logging_steps=10,
        save_strategy="no",
        report_to=["csv"],
        disable_tqdm=True,
        plot=False,
    )
    t0 = time.perf_counter()
    Trainer(model, args, ds, data_collator=collate).train()
    return time.perf_counter() - t0


def step_overhead(n: int = 20, repeats: int = 5) -> dict[str, float]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # loop overhead, not kernel scaling: one thread is the steadier clock
    try:
        return _step_overhead(n, repeats)
    finally:
        torch.set_num_threads(threads)


def _step_overhead(n: int, repeats: int) -> dict[str, float]:
    cfg = dict(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    ds, collate = _data(1024, 64, 64)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="voxlm-bench-trainer-"))
    hand, trainer = [], []
    try:
        m = _model(cfg, 8)
        _hand_loop(m, ds, collate, 3, 4)  # warm-up
        for _ in range(repeats):
            hand.append(
                (
                    _hand_loop(_model(cfg, 8), ds, collate, 2 * n, 4)
                    - _hand_loop(_model(cfg, 8), ds, collate, n, 4)
                )
                / n
            )
            trainer.append(
                (
                    _trainer(_model(cfg, 8), ds, collate, 2 * n, 4, tmp / "a")
                    - _trainer(_model(cfg, 8), ds, collate, n, 4, tmp / "b")
                )
                / n
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    h, t = statistics.median(hand), statistics.median(trainer)
    return {"hand_ms": h * 1e3, "trainer_ms": t * 1e3, "ratio": t / h}


def fixed_overhead(n: int = 200, repeats: int = 5) -> dict[str, float]:
    """The same comparison with a model that costs almost nothing (an 8-wide embedding and a
    mean), so the difference is the trainer's own per-step cost in microseconds."""
    import torch
    from torch import nn

    class Cheap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.emb = nn.Embedding(1024, 8)

        def forward(self, input_ids, labels=None, **kw):  # type: ignore[no-untyped-def]
            class Out:
                loss = self.emb(input_ids).pow(2).mean()

            return Out()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds, collate = _data(1024, 64, 64)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="voxlm-bench-trainer-"))
    hand, trainer = [], []
    try:
        for _ in range(repeats):
            hand.append(
                (
                    _hand_loop(Cheap(), ds, collate, 2 * n, 4)
                    - _hand_loop(Cheap(), ds, collate, n, 4)
                )
                / n
            )
            trainer.append(
                (
                    _trainer(Cheap(), ds, collate, 2 * n, 4, tmp / "a")
                    - _trainer(Cheap(), ds, collate, n, 4, tmp / "b")
                )
                / n
            )
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    h, t = statistics.median(hand), statistics.median(trainer)
    return {"hand_us": h * 1e6, "trainer_us": t * 1e6}


def checkpoint_times(repeats: int = 5) -> dict[str, float]:
    from voxlm.train import Trainer, TrainingArguments
    from voxlm.train import checkpoint as C

    cfg = dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    ds, collate = _data(8192, 8, 32)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="voxlm-bench-ckpt-"))
    try:
        model = _model(cfg, 16)
        args = TrainingArguments(
            output_dir=str(tmp / "run"),
            max_steps=1,
            per_device_train_batch_size=4,
            save_steps=1,
            report_to=[],
            disable_tqdm=True,
            plot=False,
        )
        tr = Trainer(model, args, ds, data_collator=collate)
        tr.train()
        ck = C.latest_checkpoint(tmp / "run")
        assert ck is not None
        size = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file())
        saves, loads = [], []
        for i in range(repeats):
            tr.global_step = 100 + i
            t0 = time.perf_counter()
            tr._save_checkpoint(0, 0)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            tr._load_checkpoint(tmp / "run" / f"checkpoint-{100 + i}")
            loads.append(time.perf_counter() - t0)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "save_ms": statistics.median(saves) * 1e3,
        "load_ms": statistics.median(loads) * 1e3,
        "mb": size / 2**20,
        "trainable": trainable,
        "total": total,
    }


def run(n: int = 10, repeats: int = 3) -> str:
    s = step_overhead(n, repeats)
    f = fixed_overhead(20 * n, repeats)
    c = checkpoint_times(repeats)
    return (
        "## trainer: voxlm.train.Trainer vs a hand-written AdamW loop; checkpoint save/load\n\n"
        f"Machine: {machine()}. Per-step time = (T({2 * n} steps) - T({n} steps)) / {n}, median of "
        f"{repeats} repeats, both sides alternating in one process (tiny LLaMA 2x128, vocab 1024, "
        "LoRA r8 "
        "all-linear, batch 4x64, fp32 CPU, 1 thread; the trainer with metrics.csv, without "
        "tqdm/checkpoints).\n\n"
        "| | hand-written loop | voxlm Trainer | ratio |\n|---|---|---|---|\n"
        f"| step time | {s['hand_ms']:.2f} ms | {s['trainer_ms']:.2f} ms | {s['ratio']:.3f} |\n"
        f"| step time, near-free model ({20 * n} vs {40 * n} steps) | {f['hand_us']:.0f} us "
        f"| {f['trainer_us']:.0f} us | "
        f"+{f['trainer_us'] - f['hand_us']:.0f} us/step |\n\n"
        "Checkpoint of a LLaMA-shaped LoRA run (4x512, vocab 8192, LoRA r16 all-linear: "
        f"{c['trainable']:,} of "
        f"{c['total']:,} parameters trainable; {c['mb']:.1f} MiB on disk with optimizer state and "
        "the PEFT "
        f"adapter), median of {repeats}: save (tmp folder, fsync, rename) {c['save_ms']:.1f} ms, "
        f"resume load {c['load_ms']:.1f} ms.\n"
    )


if __name__ == "__main__":
    print(run(*(int(a) for a in sys.argv[1:3])))
