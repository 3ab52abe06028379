"""torchrun with gloo on CPU: 2 processes (DDP, DistributedSampler, rank-0 writes) end with the
trainable parameters of a 1-process run with gradient_accumulation_steps=2: the logged losses and
gradient norms to 1e-6 relative, the parameters to atol 5e-6 / rtol 1e-4. The all-reduce sums the
two ranks' gradients in another order than accumulation does (float32 rounding, ~1e-7 relative);
AdamW's lr * m / sqrt(v) passes such differences into updates of size lr, which after 6 steps
at lr 2e-2 measured up to 1.4e-6 on weights of magnitude 0.05. Evaluation runs on an eval set
that does not divide over the ranks: each item is evaluated once (eval_loss to 1e-6, the gathered
labels' count and order exactly as in one process). Run as a script (under
torchrun), this file is that training run."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve()


def _model(lora: bool = True):
    from torch import nn

    from voxlm.adapters import LoraConfig, add_lora
    from voxlm.llm import LlamaConfig, LlamaForCausalLM

    class Wrap(nn.Module):  # a Rust-bound LLaMA and a plain-torch projector
        def __init__(self):
            super().__init__()
            self.llm = LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=48,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    max_position_embeddings=64,
                )
            )
            self.proj = nn.Linear(32, 32)

        def forward(self, input_ids, labels=None, **kw):
            h = self.proj(self.llm.get_input_embeddings()(input_ids))
            return self.llm(inputs_embeds=h, labels=labels)

    torch.manual_seed(0)
    m = Wrap()
    if lora:
        add_lora(
            m.llm,
            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
        )
    for p in m.proj.parameters():
        p.requires_grad_(True)
    return m


def _data(n: int = 16):
    from torch.utils.data import Dataset

    class Tok(Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(1)
            self.x = torch.randint(0, 48, (16, 10), generator=g)[:n]

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"input_ids": self.x[i], "labels": self.x[i]}

    return Tok()


# uneven over 2 ranks (7 + 6 items, 3 + 2 batches of 3): repeats would show in eval_loss /
# eval_items
EVAL_N = 13


def _metrics(ep):
    """How many label rows evaluation saw, and an order-sensitive checksum of them."""
    import numpy as np

    lab = np.asarray(ep.label_ids)
    return {"items": int(lab.shape[0]), "order": float((np.arange(len(lab)) * lab[:, 0]).sum())}


def _train(out: str, ga: int, fsdp: bool = False) -> None:
    from voxlm.train import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=out,
        max_steps=6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=ga,
        learning_rate=2e-2,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        warmup_steps=1,
        save_steps=3,
        logging_steps=1,
        seed=3,
        disable_tqdm=True,
        report_to=["csv"],
        plot=False,
        per_device_eval_batch_size=3,
        fsdp=fsdp,
    )
    model = _model()
    trainer = Trainer(model, args, _data(), eval_dataset=_data(EVAL_N), compute_metrics=_metrics)
    trainer.train()
    trainer.evaluate()  # under FSDP: a full-parameter forward outside the sharded root's forward
    rank = int(os.environ.get("RANK", "0"))
    if fsdp and rank == 0:  # what FSDP2 left in this process
        import json

        w = model.llm.model.embed_tokens.weight
        info = {"type": type(w).__name__, "local": list(w.to_local().shape), "full": list(w.shape)}
        pathlib.Path(out, "shard_info.json").write_text(json.dumps(info))
    if fsdp:  # resume under FSDP2: drop what came after checkpoint-3, continue on a fresh model
        import shutil

        import torch.distributed as dist

        o = pathlib.Path(out)
        if rank == 0:
            shutil.copytree(o / "final", o / "uninterrupted")
            shutil.rmtree(o / "final")
            shutil.move(o / "checkpoint-6", o / "later-checkpoint-6")
        dist.barrier()
        resumed = Trainer(
            _model(), args, _data(), eval_dataset=_data(EVAL_N), compute_metrics=_metrics
        )
        resumed.train(resume_from_checkpoint=True)
        resumed.evaluate()


def _torchrun(out, fsdp=False):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE),
        str(out),
        "1",
        "fsdp" if fsdp else "ddp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, gradient_accumulation_steps=2."""
    out = tmp_path_factory.mktemp("one")
    _train(str(out), ga=2)
    return out


def test_two_gloo_processes_equal_one_with_accumulation(tmp_path, one_process):
    from voxlm.train.checkpoint import load_tensors

    r = _torchrun(tmp_path / "ddp")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a = load_tensors(one_process / "final" / "model.safetensors")
    b = load_tensors(tmp_path / "ddp" / "final" / "model.safetensors")
    assert sorted(a) == sorted(b) and any("lora_B" in k for k in a) and "proj.weight" in a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=5e-6, msg=k)
    import csv

    ra = list(csv.DictReader((one_process / "metrics.csv").open()))
    rb = list(csv.DictReader((tmp_path / "ddp" / "metrics.csv").open()))
    for x, y in zip(ra, rb, strict=True):
        cols = ("loss", "grad_norm", "learning_rate") if x["loss"] else ("eval_loss",)
        for col in cols:
            assert float(y[col]) == pytest.approx(float(x[col]), rel=1e-6), (x["step"], col)
        if not x["loss"]:  # every eval item once, in dataset order, over the 2 ranks
            assert float(x["eval_items"]) == float(y["eval_items"]) == EVAL_N
            assert float(y["eval_order"]) == float(x["eval_order"])
    # rank 0 wrote the run folder; every rank its RNG state
    ck = tmp_path / "ddp" / "checkpoint-3"
    assert (ck / "rng_state_0.pth").is_file() and (ck / "rng_state_1.pth").is_file()
    rows = (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 8  # header + 6 steps + the evaluation, written once (by rank 0)


def test_fsdp2_two_gloo_processes(tmp_path, one_process):
    """FSDP2 (fully_shard) on CPU/gloo with a Rust-bound LLaMA (re-bound to the unsharded
    parameters in a forward pre-hook) and a plain-torch projector: same result as the 1-process
    run (same tolerances as DDP), parameters sharded between steps, checkpoint tensors and the
    PEFT adapter full-size and loadable in one process."""
    import json

    from voxlm.adapters import load_adapter
    from voxlm.train.checkpoint import load_tensors

    r = _torchrun(tmp_path / "fsdp", fsdp=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a = load_tensors(one_process / "final" / "model.safetensors")
    b = load_tensors(tmp_path / "fsdp" / "final" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=5e-6, msg=k)
    import csv

    ev_one = [r for r in csv.DictReader((one_process / "metrics.csv").open()) if r["eval_loss"]]
    ev_fsdp = [
        r for r in csv.DictReader((tmp_path / "fsdp" / "metrics.csv").open()) if r["eval_loss"]
    ]
    assert (
        len(ev_one) == 1 and len(ev_fsdp) == 1
    )  # the killed-and-resumed history keeps steps <= 3 only
    assert float(ev_fsdp[0]["eval_loss"]) == pytest.approx(float(ev_one[0]["eval_loss"]), rel=1e-6)
    assert (
        float(ev_fsdp[0]["eval_items"]) == EVAL_N
        and ev_fsdp[0]["eval_order"] == ev_one[0]["eval_order"]
    )
    info = json.loads((tmp_path / "fsdp" / "shard_info.json").read_text())
    assert info == {"type": "DTensor", "local": [24, 32], "full": [48, 32]}
    ck = tmp_path / "fsdp" / "checkpoint-3"
    assert (ck / "optimizer-0.pt").is_file() and (ck / "optimizer-1.pt").is_file()
    # resumed from checkpoint-3 (per-rank sharded optimizer state) == uninterrupted, bit for bit
    u = load_tensors(tmp_path / "fsdp" / "uninterrupted" / "model.safetensors")
    for k in u:
        assert torch.equal(u[k], b[k]), k
    fresh = _model(lora=False)
    load_adapter(fresh.llm, tmp_path / "fsdp" / "final" / "adapters" / "llm")
    for n, p in fresh.named_parameters():
        if ".lora_" in n:
            torch.testing.assert_close(p, a[n], rtol=1e-4, atol=5e-6, msg=n)


if __name__ == "__main__":
    _train(sys.argv[1], int(sys.argv[2]), fsdp=sys.argv[3] == "fsdp")
