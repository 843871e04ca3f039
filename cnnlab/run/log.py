"""What a run shows as it goes: the console (rich on a terminal, plain lines otherwise) and train.log,
its plain-text copy; a progress bar per epoch; the end-of-run table."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cnnlab.io import open_append
from cnnlab.run.layout import RunDir

log = logging.getLogger("cnnlab")


def make_console(*, stderr: bool = False) -> Console:
    """Rich's console for cnnlab's output. On a terminal it fits the window; sent to a file or a pipe it
    never wraps (rich would cut lines, and paths in them, at 80 columns)."""
    terminal = Console(stderr=stderr)
    return terminal if terminal.is_terminal else Console(stderr=stderr, width=1000, soft_wrap=True)


def use_rich(progress: str) -> bool:
    return progress == "rich" or (progress == "auto" and sys.stderr.isatty())


class PlainFormatter(logging.Formatter):
    """The message alone; an error as ``cnnlab: error: ...``, as before logging starts."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"cnnlab: error: {text}" if record.levelno >= logging.ERROR else text


class LogFile(logging.FileHandler):
    """``train.log``, opened as every writer of a run opens its files (:func:`cnnlab.io.open_append`: no
    symbolic link followed on the way or at the file)."""

    def _open(self):
        return open_append(Path(self.baseFilename))


def setup_logging(run_dir: Path, *, rich: bool) -> None:
    """Console handler plus the run's ``train.log`` (plain text of what the console showed)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_cnnlab", False):
            root.removeHandler(handler)
            handler.close()
    console = (
        RichHandler(console=make_console(stderr=True), show_path=False) if rich else logging.StreamHandler()
    )
    if not rich:
        console.setFormatter(PlainFormatter())
    run_dir.mkdir(parents=True, exist_ok=True)
    file = LogFile(RunDir(run_dir).log)
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


def result_table(summary: dict, run_dir: Path) -> Table:
    """The end-of-run table of a summary.json's numbers."""
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
