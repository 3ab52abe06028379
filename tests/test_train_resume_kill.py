"""Exact resume after SIGKILL: a real training subprocess (tiny voxlm LLaMA + LoRA with dropout
0.1, gradient accumulation 2, shuffled data, cosine schedule with warmup) is killed mid-run,
resumed with resume_from_checkpoint=True, and ends with trainable parameters bit-identical
(torch.equal) to the same run uninterrupted. Run as a script, this file is that training run."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve()
MAX_STEPS = 12


def _train(out: str, resume: bool, slow: float) -> None:
    from torch.utils.data import Dataset

    from voxlm.adapters import LoraConfig, add_lora
    from voxlm.llm import LlamaConfig, LlamaForCausalLM
    from voxlm.train import Trainer, TrainingArguments

    class Tokens(Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(123)
            self.x = torch.randint(0, 64, (20, 10), generator=g)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            if slow:
                time.sleep(slow)  # leaves the killer time to strike between steps
            return {"input_ids": self.x[i], "labels": self.x[i]}

    torch.manual_seed(0)
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    add_lora(
        llm,
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "down_proj"]
        ),
    )
    args = TrainingArguments(
        output_dir=out,
        max_steps=MAX_STEPS,
        per_device_train_batch_size=3,
        gradient_accumulation_steps=2,
        learning_rate=2e-2,
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        warmup_steps=3,
        save_steps=2,
        save_total_limit=3,
        logging_steps=1,
        seed=7,
        disable_tqdm=True,
        report_to=["csv"],
        plot=False,
    )
    Trainer(llm, args, Tokens()).train(resume_from_checkpoint=True if resume else None)


def _run(out, resume=False, slow=0.0):
    cmd = [sys.executable, str(HERE), str(out), "1" if resume else "0", str(slow)]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _final(out):
    from voxlm.train.checkpoint import load_tensors

    return load_tensors(pathlib.Path(out) / "final" / "model.safetensors")


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    from voxlm.train import list_checkpoints

    full, killed = tmp_path / "full", tmp_path / "killed"
    p_full = _run(full)
    p = _run(killed, slow=0.05)
    t0 = time.time()
    while not (killed / "checkpoint-4").is_dir():
        assert p.poll() is None, p.stdout.read().decode()
        assert time.time() - t0 < 60, "no checkpoint-4 within 60 s"
        time.sleep(0.02)
    time.sleep(0.3)  # a step or two further, possibly inside a checkpoint write
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "final").exists(), "the run finished before it was killed"
    steps = [s for s, _ in list_checkpoints(killed)]
    assert steps and max(steps) < MAX_STEPS
    r = _run(killed, resume=True)
    assert r.wait(timeout=120) == 0, r.stdout.read().decode()
    assert p_full.wait(timeout=120) == 0, p_full.stdout.read().decode()
    a, b = _final(full), _final(killed)
    assert sorted(a) == sorted(b) and any(".lora_A." in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed run's metrics.csv continues the killed one's history without duplicates
    rows = (killed / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, MAX_STEPS + 1))
    assert rows == (full / "metrics.csv").read_text().splitlines()[1:]


if __name__ == "__main__":
    _train(sys.argv[1], sys.argv[2] == "1", float(sys.argv[3]))
