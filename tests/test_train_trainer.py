"""The training loop, run folder, checkpoints and bad input (tiny models, CPU)."""

import csv
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from voxlm.exceptions import ConfigError, DataError, TrainingError, VoxlmIOError
from voxlm.train import Stage, Trainer, TrainingArguments, list_checkpoints, run_stages
from voxlm.train import checkpoint as C


class Reg(Dataset):
    """y = x @ w + noise; items {"x": [4], "y": [1]}."""

    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.01 * torch.randn(
            n, 1, generator=g
        )

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 1)

    def forward(self, x, y=None, **kw):
        out = self.head(self.norm(self.proj(x)))
        return {"loss": nn.functional.mse_loss(out, y), "logits": out}


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=4,
        disable_tqdm=True,
        seed=1,
    )
    base.update(kw)
    return TrainingArguments(**base)


def test_run_folder_metrics_events_plot(tmp_path):
    pytest.importorskip("tensorboard")
    args = _args(
        tmp_path,
        eval_strategy="steps",
        eval_steps=4,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        label_names=["y"],
    )
    t = Trainer(
        Lin(),
        args,
        Reg(),
        Reg(8, seed=1),
        compute_metrics=lambda ep: {"mae": float(abs(ep.predictions - ep.label_ids).mean())},
    )
    out = t.train()
    run = tmp_path / "run"
    assert out.global_step == 8
    for name in (
        "training_args.yaml",
        "metrics.csv",
        "loss.png",
        "trainer_state.json",
        "final/model.safetensors",
        "checkpoint-4/optimizer.pt",
        "checkpoint-8/scheduler.pt",
        "checkpoint-8/rng_state_0.pth",
    ):
        assert (run / name).exists(), name
    assert list(run.glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert list(rows[0])[:5] == ["step", "epoch", "loss", "learning_rate", "grad_norm"]
    train_rows = [r for r in rows if r["loss"]]
    assert [int(r["step"]) for r in train_rows] == list(range(1, 9))
    evals = [r for r in rows if r["eval_loss"]]
    assert [int(r["step"]) for r in evals] == [4, 8] and all(r["eval_mae"] for r in evals)
    # learning rate as logged = the rate of that step (transformers 5), cosine with 2 warmup steps
    for r in train_rows:
        s = int(r["step"]) - 1
        lam = s / 2 if s < 2 else max(0.0, 0.5 * (1 + math.cos(math.pi * (s - 2) / 6)))
        assert float(r["learning_rate"]) == pytest.approx(1e-2 * lam, abs=1e-12)
    assert float(train_rows[-1]["loss"]) < float(train_rows[0]["loss"])
    st = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    assert st["global_step"] == 8 and st["data_epoch"] == 1 and st["data_micro_batch"] == 0
    ev = t.evaluate()
    assert set(ev) == {"eval_loss", "eval_mae"}


def test_accumulation_equals_big_batch(tmp_path):
    """batch 2 x accumulation 4 == batch 8 x 1 (same order, shuffle off): equal to float32
    rounding."""

    def run(bs, ga, name):
        m = Lin()
        a = _args(
            tmp_path,
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            max_steps=6,
            shuffle=False,
            report_to=[],
            plot=False,
            save_strategy="no",
        )
        Trainer(m, a, Reg()).train()
        return m

    a, b = run(2, 4, "a"), run(8, 1, "b")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_uneven_accumulation_last_step_of_epoch(tmp_path):
    """10 micro-batches with accumulation 4 -> 3 steps per epoch (4, 4, 2 micro-batches), HF's
    rule."""
    a = _args(
        tmp_path,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_steps=-1,
        num_train_epochs=2,
        report_to=["csv"],
        plot=False,
        save_strategy="epoch",
    )
    out = Trainer(Lin(), a, Reg(20)).train()
    assert out.global_step == 6
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [3, 6]


def test_save_total_limit_and_half_written_checkpoint_ignored(tmp_path):
    a = _args(tmp_path, save_steps=2, save_total_limit=2)
    Trainer(Lin(), a, Reg()).train()
    run = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(run)] == [6, 8]
    # a crash mid-write leaves a tmp folder or a checkpoint folder without trainer_state.json
    (run / ".tmp-checkpoint-10").mkdir()
    (run / "checkpoint-12").mkdir()
    (run / "checkpoint-12" / "model.safetensors").write_bytes(b"garbage")
    assert C.latest_checkpoint(run) == run / "checkpoint-8"


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    a = _args(tmp_path, save_steps=2)
    t = Trainer(Lin(), a, Reg())
    real = C.save_tensors
    calls = {"n": 0}

    def flaky(tensors, path):
        calls["n"] += 1
        if calls["n"] == 3:  # checkpoint-6
            raise OSError(28, "No space left on device")
        real(tensors, path)

    monkeypatch.setattr(C, "save_tensors", flaky)
    with pytest.raises(
        TrainingError,
        match=r"step 6: writing checkpoint-6 failed .*No space left.*checkpoint-4 is intact",
    ):
        t.train()
    run = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    assert not list(run.glob(".tmp-*"))
    C.load_trainable(Lin(), run / "checkpoint-4")  # complete and loadable


class NaNAt(Lin):
    def __init__(self, step):
        super().__init__()
        self.calls, self.at = 0, step

    def forward(self, x, y=None, **kw):
        self.calls += 1
        out = super().forward(x, y)
        if self.calls == self.at:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nonfinite_loss_stops_naming_step(tmp_path):
    a = _args(tmp_path, save_steps=2)
    m = NaNAt(5)
    with pytest.raises(
        TrainingError,
        match=r"step 5: the loss or gradient is not finite.*last finite loss [0-9.]+ at step 4"
        r".*checkpoint-4",
    ):
        Trainer(m, a, Reg()).train()
    ck = C.load_tensors(tmp_path / "run" / "checkpoint-4" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in ck.values())
    # skipping instead: the bad step is skipped, the run finishes with finite weights
    m2 = NaNAt(5)
    out = Trainer(
        m2, a.replace(output_dir=str(tmp_path / "skip"), skip_nonfinite_steps=True), Reg()
    ).train()
    assert out.metrics["skipped_steps"] == 1 and out.global_step == 8
    assert all(torch.isfinite(p).all() for p in m2.parameters())


def test_output_dir_with_another_run(tmp_path):
    a = _args(tmp_path, max_steps=2)
    Trainer(Lin(), a, Reg()).train()
    with pytest.raises(ConfigError, match="holds another run"):
        Trainer(Lin(), a, Reg()).train()
    Trainer(Lin(), a.replace(overwrite_output_dir=True), Reg()).train()
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]


def test_resume_with_changed_optimisation_args(tmp_path):
    a = _args(tmp_path, max_steps=4, save_steps=2)
    Trainer(Lin(), a, Reg()).train()
    with pytest.raises(ConfigError, match=r"learning_rate .*seed"):
        Trainer(Lin(), a.replace(learning_rate=0.5, seed=3), Reg()).train(
            resume_from_checkpoint=True
        )
    # unchanged arguments resume (nothing left to do: already at max_steps)
    out = Trainer(Lin(), a, Reg()).train(resume_from_checkpoint=True)
    assert out.global_step == 4


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    m = Lin()
    with pytest.raises(VoxlmIOError, match="output_dir: .* not writable"):
        Trainer(m, _args(tmp_path, output_dir=str(blocker / "run")), Reg()).train()


def test_bad_input_named_before_training(tmp_path):
    m = Lin()
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(DataError, match="empty"):
        Trainer(m, _args(tmp_path), Reg(0)).train()
    m.requires_grad_(False)
    with pytest.raises(TrainingError, match="no trainable parameters"):
        Trainer(m, _args(tmp_path, output_dir=str(tmp_path / "r2")), Reg()).train()
    m.requires_grad_(True)

    class Strict(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(4, 1)

        def forward(self, x, labels):
            return nn.functional.mse_loss(self.w(x), labels)

    with pytest.raises(
        TrainingError,
        match=r"step 1: the model rejected the first batch "
        r"\{x: float32\[4, 4\], y: float32\[4, 1\]\}",
    ):
        Trainer(Strict(), _args(tmp_path, output_dir=str(tmp_path / "r3")), Reg()).train()

    class NoLoss(Lin):
        def forward(self, x, y=None, **kw):
            return {"loss": None}

    with pytest.raises(TrainingError, match="loss None"):
        Trainer(NoLoss(), _args(tmp_path, output_dir=str(tmp_path / "r4")), Reg()).train()
    with pytest.raises(DataError, match="expected a dict"):
        Trainer(
            Lin(),
            _args(tmp_path, output_dir=str(tmp_path / "r5")),
            Reg(),
            data_collator=lambda items: [i["x"] for i in items],
        ).train()
    for p, q in zip(before, m.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ConfigError, match="fp16"):
        Trainer(Lin(), _args(tmp_path, fp16=True, use_cpu=True), Reg())


def test_bf16_autocast_on_cpu(tmp_path):
    """bf16: plain-torch parts run under autocast (bfloat16 activations), the Rust LLaMA in its
    float32 weights' dtype; parameters stay float32 (master weights); gradient checkpointing on."""
    from voxlm.llm import LlamaConfig, LlamaForCausalLM

    class Tok(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            x = torch.arange(i, i + 8) % 32
            return {"input_ids": x, "labels": x}

    class ProjLM(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.llm = LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=32,
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    max_position_embeddings=32,
                )
            )
            self.proj = nn.Linear(16, 16)
            self.seen = set()

        def forward(self, input_ids, labels=None, **kw):
            h = self.proj(self.llm.get_input_embeddings()(input_ids))
            self.seen.add(h.dtype)
            return self.llm(inputs_embeds=h, labels=labels)

    m = ProjLM()
    a = _args(tmp_path, bf16=True, max_steps=3, learning_rate=1e-2, gradient_checkpointing=True)
    out = Trainer(m, a, Tok()).train()
    assert math.isfinite(out.training_loss)
    assert m.seen == {torch.bfloat16}
    assert m.llm.gradient_checkpointing
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert "forward" not in m.llm.__dict__  # the patch is undone after training


def test_stages_resume_skips_finished_stage(tmp_path):
    def stages(m, base):
        def first(model):
            model.requires_grad_(False)
            model.proj.requires_grad_(True)

        def second(model):
            model.requires_grad_(False)
            model.head.requires_grad_(True)

        return [
            Stage("one", base.replace(max_steps=4), first),
            Stage("two", base.replace(max_steps=6), second),
        ]

    base = _args(tmp_path, save_steps=2)
    m1 = Lin()
    run_stages(m1, stages(m1, base), Reg())
    run = tmp_path / "run"
    assert (run / "one" / "final").is_dir() and (run / "two" / "checkpoint-6").is_dir()
    # simulate a run that died in stage two after checkpoint-2
    import shutil

    shutil.copytree(run, tmp_path / "part")
    part = tmp_path / "part"
    for p in ("final", "checkpoint-4", "checkpoint-6", "trainer_state.json"):
        q = part / "two" / p
        shutil.rmtree(q) if q.is_dir() else q.unlink()
    m2 = Lin()
    with torch.no_grad():
        for p in [*m2.proj.parameters(), *m2.head.parameters()]:
            p.add_(
                1.0
            )  # a different start: stage one must come from its final/, two from checkpoint-2
    run_stages(m2, stages(m2, base.replace(output_dir=str(part))), Reg(), resume=True)
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p, q), n
    # a finished stage whose final/ lacks a tensor that stage trains: CheckpointError naming it
    from voxlm.exceptions import CheckpointError
    from voxlm.train.checkpoint import load_tensors, save_tensors

    w = part / "one" / "final" / "model.safetensors"
    sd = load_tensors(w)
    save_tensors({k: v for k, v in sd.items() if k != "proj.bias"}, w)
    with pytest.raises(CheckpointError, match=r"stage 'one'.*proj\.bias"):
        m3 = Lin()
        run_stages(m3, stages(m3, base.replace(output_dir=str(part))), Reg(), resume=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_cuda(tmp_path, precision):
    """CUDA: bf16 autocast / fp16 autocast with GradScaler; float32 master weights; the loss
    follows the float32 run's to mixed-precision rounding."""

    def run(**kw):
        m = Lin()
        a = _args(
            tmp_path,
            output_dir=str(tmp_path / str(kw)),
            max_steps=6,
            report_to=[],
            plot=False,
            save_strategy="no",
            **kw,
        )
        t = Trainer(m, a, Reg())
        return t.train(), m

    ref, _ = run()
    out, m = run(**{precision: True})
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in m.parameters())
    assert out.training_loss == pytest.approx(ref.training_loss, rel=5e-2)
