"""voxlm's Trainer against transformers.Trainer on the same model and data: same AdamW
groups (weight decay 0.1, none on biases/norms), linear warmup schedule, gradient accumulation 2
(with a short last step each epoch), clipping to 0.5, 2 epochs, fixed data order
(transformers' sampler replaced by a SequentialSampler, voxlm's shuffle=False). The parameters
after training agree to float32 rounding (rtol 1e-5, atol 1e-6; measured: equal), and so do the
logged rows (loss to transformers' 4-decimal rounding, grad_norm, learning rate, epoch)."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, SequentialSampler

from voxlm.train import Trainer, TrainingArguments

transformers = pytest.importorskip("transformers")


class Reg(Dataset):
    def __init__(self, n=22):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.randn(6, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 2)

    def forward(self, x, y=None, **kw):
        return {"loss": nn.functional.mse_loss(self.out(torch.tanh(self.norm(self.inp(x)))), y)}


def collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "y": torch.stack([i["y"] for i in items])}


COMMON = dict(
    num_train_epochs=2,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=2,
    learning_rate=3e-2,
    weight_decay=0.1,
    adam_beta1=0.9,
    adam_beta2=0.99,
    adam_epsilon=1e-8,
    max_grad_norm=0.5,
    lr_scheduler_type="linear",
    warmup_steps=2,
    seed=5,
    logging_steps=1,
)


def test_parameters_equal_transformers_trainer(tmp_path):
    class SequentialHF(transformers.Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    hf_model = Net()
    hf_args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        optim="adamw_torch",
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **COMMON,
    )
    hf = SequentialHF(model=hf_model, args=hf_args, train_dataset=Reg(), data_collator=collate)
    hf.train()

    ours = Net()
    args = TrainingArguments(
        output_dir=str(tmp_path / "ours"),
        shuffle=False,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        plot=False,
        **COMMON,
    )
    trainer = Trainer(ours, args, Reg(), data_collator=collate)
    out = trainer.train()
    # 22 items / batch 4 = 6 micro-batches per epoch -> 3 steps per epoch -> 6 steps
    assert out.global_step == hf.state.global_step == 6
    for (n, p), (_, q) in zip(ours.named_parameters(), hf_model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    # the logged rows: loss (transformers rounds it to 4 decimals), grad norm, learning rate
    theirs = [r for r in hf.state.log_history if "loss" in r]
    mine = [r for r in trainer.log.rows if "loss" in r]
    assert [r["step"] for r in theirs] == [r["step"] for r in mine] == list(range(1, 7))
    for a, b in zip(mine, theirs):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["grad_norm"] == pytest.approx(float(b["grad_norm"]), rel=1e-5)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-12)
        assert a["epoch"] == pytest.approx(b["epoch"], abs=1e-3)
