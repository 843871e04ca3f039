"""Training curves from a run's metrics.csv: loss, accuracy and learning rate per epoch."""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import DataError
from cnnlab.report.figures import new_figure, run_label, save_figure
from cnnlab.run.layout import RunDir

CURVES_SIZE = (15.0, 4.5)  # inches


def read_curves(folder: RunDir) -> list[dict[str, float]]:
    """The epochs of metrics.csv; a one-line DataError when there are none yet."""
    if not folder.metrics.is_file():
        raise DataError(f"{folder} has no metrics.csv; pass run=<a directory written by cnnlab train>.")
    rows = folder.read_metrics()
    if not rows:
        raise DataError(f"{folder.metrics} has no epochs yet; let the run finish at least one epoch.")
    return rows


def curves_figure(rows: list[dict[str, float]], title: str):
    fig = new_figure(*CURVES_SIZE)
    epochs = [r["epoch"] for r in rows]
    axes = fig.subplots(1, 3)
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [r.get(f"{split}_{metric}", float("nan")) for r in rows], style, label=split,
                    markersize=4)  # fmt: skip
        ax.set(title=label, xlabel="epoch", ylabel=label)
        ax.legend()
        ax.grid(alpha=0.3)
    lrs = [r.get("lr", float("nan")) for r in rows]
    axes[2].plot(epochs, lrs, "-o", color="tab:green", markersize=4)
    axes[2].set(title="learning rate (at the epoch's start)", xlabel="epoch", ylabel="lr")
    if all(lr > 0 for lr in lrs) and max(lrs) > 10 * min(lrs):
        axes[2].set_yscale("log")
    axes[2].grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_curves(folder: RunDir | Path, *, tb=None) -> Path:
    """``report/curves.png`` of the run (and a TensorBoard image when ``tb`` is given)."""
    folder = folder if isinstance(folder, RunDir) else RunDir(folder)
    rows = read_curves(folder)
    fig = curves_figure(rows, f"Training curves: {run_label(folder.path)} ({len(rows)} epochs)")
    return save_figure(fig, folder.report_file("curves.png"), tb=tb, tag="report/curves")
