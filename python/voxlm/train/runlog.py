"""What a run writes while it trains: ``metrics.csv``, TensorBoard events, the loss-curve PNG."""

from __future__ import annotations

import csv
import os
import pathlib
from collections.abc import Sequence
from typing import Any

BASE_COLUMNS = ["step", "epoch", "loss", "learning_rate", "grad_norm"]


class RunLog:
    """Rows of ``{"step", "epoch", "loss", "learning_rate", "grad_norm"}`` and
    ``{"step", "epoch", "eval_loss", "eval_*"...}`` into ``output_dir/metrics.csv`` (one header,
    the union of the columns, blank where a row has no value) and, when ``"tensorboard"`` is in
    ``report_to`` and the tensorboard package is installed, ``events.out.tfevents.*`` in
    ``output_dir`` (tags ``train/loss``, ``train/learning_rate``, ``eval/loss``, ...).

    ``history`` are the rows a resumed run restores from its checkpoint: the CSV is rewritten with
    them (rows logged after that checkpoint by the killed run are dropped) and TensorBoard events
    from later steps are purged."""

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        report_to: Sequence[str],
        enabled: bool = True,
        history: list[dict[str, Any]] | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.dir = pathlib.Path(output_dir)
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = list(history or [])
        self.csv = "csv" in report_to
        self.columns = list(BASE_COLUMNS)
        self.tb = None
        self._file: Any = None
        self._writer: Any = None
        if not enabled:
            return
        for r in self.rows:
            self._grow(r)
        if self.csv:
            self._rewrite()
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: CSV and PNG only
                SummaryWriter = None  # type: ignore[assignment,misc]
            if SummaryWriter is not None:
                self.tb = SummaryWriter(log_dir=os.fspath(self.dir), purge_step=resume_step)

    @property
    def path(self) -> pathlib.Path:
        return self.dir / "metrics.csv"

    def _grow(self, row: dict[str, Any]) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns += new
        return bool(new)

    def _rewrite(self) -> None:
        """The whole file again (new columns, or a resumed history), atomically; then append."""
        if self._file is not None:
            self._file.close()
        tmp = self.path.with_name(".metrics.csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, restval="")
            w.writeheader()
            w.writerows(self.rows)
        tmp.replace(self.path)
        self._file = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, restval="")

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        if self.csv:
            if self._grow(row) or self._writer is None:
                self._rewrite()
            else:
                self._writer.writerow(row)
                self._file.flush()  # type: ignore[union-attr]  # in the OS's hands: survives a kill
        if self.tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k in ("step", "epoch") or not isinstance(v, (int, float)) or isinstance(v, bool):
                    continue
                tag = f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"
                self.tb.add_scalar(tag, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def plot_loss(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> pathlib.Path | None:
    """Training loss (and eval loss) against the optimizer step, as a PNG (matplotlib, Agg);
    None when there is nothing to plot or matplotlib is not installed."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") not in (None, "")]
    ev = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") not in (None, "")]
    if not train and not ev:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # matplotlib is optional: metrics.csv / TensorBoard still have the curve
        return None

    fig = Figure(figsize=(6, 3.5), dpi=100)  # no pyplot: leaves a notebook's backend alone
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss")
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = pathlib.Path(path)
    fig.savefig(out)
    return out
