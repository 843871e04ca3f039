"""What a run writes as it goes: console (rich on a terminal, plain lines otherwise), train.log,
metrics.csv and TensorBoard events."""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cnnlab.io import atomic_write

log = logging.getLogger("cnnlab")

METRIC_FIELDS = [
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
    "data_s", "compute_s", "eval_s", "img_per_s", "grad_norm",
]  # fmt: skip
TB_SCALARS = {
    "train_loss": "loss", "val_loss": "loss", "ema_val_loss": "loss", "train_acc": "acc", "val_acc": "acc",
    "ema_val_acc": "acc", "lr": "lr", "img_per_s": "speed",
}  # fmt: skip
EMA_FIELDS = ["ema_val_loss", "ema_val_acc", "weights"]  # with trainer.ema: which weights were monitored


def use_rich(progress: str) -> bool:
    return progress == "rich" or (progress == "auto" and sys.stderr.isatty())


def setup_logging(run_dir: Path, *, rich: bool) -> None:
    """Console handler plus ``run_dir/train.log`` (plain text of what the console showed)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_cnnlab", False):
            root.removeHandler(handler)
            handler.close()
    console = RichHandler(console=Console(stderr=True), show_path=False) if rich else logging.StreamHandler()
    if not rich:
        console.setFormatter(logging.Formatter("%(message)s"))
    run_dir.mkdir(parents=True, exist_ok=True)
    file = logging.FileHandler(run_dir / "train.log")
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for handler in (console, file):
        handler._cnnlab = True
        root.addHandler(handler)
    root.setLevel(logging.INFO)


class EpochProgress:
    """A rich progress bar per epoch with live loss on a terminal; nothing per step otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def start(self, epoch: int, max_epochs: int, total: int):
        if not self.enabled:
            return None
        self.bar = Progress(
            TextColumn(f"epoch {epoch}/{max_epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), transient=True,
            console=Console(stderr=True),
        )  # fmt: skip
        self.bar.start()
        task = self.bar.add_task("train", total=total, loss="-")

        def update(step, _total, loss):
            if step % 20 == 0 or step == total:
                self.bar.update(task, completed=step, loss=f"{float(loss):.4f}")

        return update

    def stop(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class MetricsWriter:
    """metrics.csv (one row per epoch, appended and flushed) and TensorBoard scalars.

    ``global_step`` counts optimizer steps over the whole run (the x axis of the per-step learning
    rate); it is checkpointed so a resumed run continues the same curves. With ``enabled=False``
    (data-parallel ranks other than 0) it counts steps but writes nothing.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool, ema: bool = False, enabled: bool = True):
        self.path = run_dir / "metrics.csv"
        self.fields = METRIC_FIELDS + (EMA_FIELDS if ema else [])
        self.global_step = 0
        self.enabled = enabled
        self.tb = None
        if tensorboard and enabled:
            from torch.utils.tensorboard import SummaryWriter  # lazy: seconds of import time

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def resume(self, epochs_done: int, best_epoch: int) -> dict:
        """Drop rows of epochs the checkpoint does not hold (written just before a kill).

        Returns the accuracies of the best epoch's row, for the summary.
        """
        rows = [r for r in self.read() if int(r["epoch"]) <= epochs_done]

        def write(f):
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            f.write(text.getvalue().encode())

        if self.enabled:
            atomic_write(self.path, write)
        best = next((r for r in rows if int(r["epoch"]) == best_epoch), {})
        return {k: float(v) for k, v in best.items() if k.endswith("acc") and v}

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.fields})
        if self.tb is not None:
            for key, group in TB_SCALARS.items():
                if key in row:
                    self.tb.add_scalar(f"{group}/{key}", row[key], row["epoch"])

    def lr_logger(self, optimizer):
        """A per-optimizer-step callback: counts steps and logs the learning rate to TensorBoard."""

        def on_step() -> None:
            self.global_step += 1
            if self.tb is not None:
                self.tb.add_scalar("lr/step", optimizer.param_groups[0]["lr"], self.global_step)

        return on_step

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self, cfg: DictConfig | None = None, overrides: list[str] = (), summary: dict | None = None):
        """Log the run's hyperparameters and final metrics for TensorBoard's hparams view, then close.

        ``run_name="."`` keeps them in the run's own tb/ folder, so ``tensorboard --logdir multirun/...``
        lists every job of a sweep as one row of the hparams table.
        """
        if self.tb is not None:
            if cfg is not None and summary is not None:
                self.tb.add_hparams(run_hparams(cfg, list(overrides)), final_metrics(summary), run_name=".")
            self.tb.close()


def run_hparams(cfg: DictConfig, overrides: list[str]) -> dict:
    """What to compare runs by: model, data, optimizer, lr, batch size, seed, and every overridden key.

    An overridden key is logged with its value in the composed config (``optimizer.lr`` -> 0.01);
    a group choice (``optimizer=sgd``) or a list is logged as the text the user wrote.
    """
    hparams = {
        "model": str(cfg.model.name), "dataset": str(cfg.dataset.name), "optimizer": str(cfg.optimizer.name),
        "lr": float(cfg.optimizer.lr), "batch_size": int(cfg.trainer.batch_size), "seed": int(cfg.seed),
    }  # fmt: skip
    for item in overrides:
        key, sep, text = item.lstrip("+~").partition("=")
        if not sep or key.startswith("hydra"):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        hparams[key] = value if isinstance(value, bool | int | float | str) else text
    return hparams


def final_metrics(summary: dict) -> dict:
    """The hparams view's metric columns (TensorBoard wants numbers: metrics a run lacks are left out)."""
    final = {
        "hparam/best_val_acc": summary["best_val_acc"],
        "hparam/test_acc": summary["test_acc"],
        f"hparam/best_{summary['monitor']}": summary["best_value"],
        "hparam/epochs_run": summary["epochs_run"],
    }
    return {key: float(value) for key, value in final.items() if value is not None}


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def summary_table(summary: dict, run_dir: Path) -> Table:
    table = Table(title="cnnlab train: summary", show_header=False)
    rows = [
        ("best epoch", summary["best_epoch"]),
        ("best val acc", f"{summary['best_val_acc']:.4f}"),
        ("test acc", "-" if summary["test_acc"] is None else f"{summary['test_acc']:.4f}"),
        ("test loss", "-" if summary["test_loss"] is None else f"{summary['test_loss']:.4f}"),
        ("epochs run", f"{summary['epochs_run']} ({summary['stop_reason']})"),
        ("time", f"{summary['seconds']:.1f} s"),
        ("run dir", str(run_dir)),
    ]
    if summary["monitor"] != "val_acc":
        rows.insert(1, (f"best {summary['monitor']}", f"{summary['best_value']:.4f}"))
    for key, value in rows:
        table.add_row(key, str(value))
    return table
