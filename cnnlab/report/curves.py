"""Training curves from a run's metrics.csv: loss, accuracy and learning rate per epoch."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from cnnlab.errors import DataError
from cnnlab.report.figures import new_figure, run_label, save_figure

CURVES_SIZE = (15.0, 4.5)  # inches


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise DataError(f"{run_dir} has no metrics.csv; pass run=<a directory written by cnnlab train>.")
    with path.open(newline="") as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows:
        raise DataError(f"{path} has no epochs yet; let the run finish at least one epoch.")
    return rows


def _number(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def curves_figure(rows: list[dict[str, float]], title: str):
    fig = new_figure(*CURVES_SIZE)
    epochs = [r["epoch"] for r in rows]
    axes = fig.subplots(1, 3)
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [r[f"{split}_{metric}"] for r in rows], style, label=split, markersize=4)
        ax.set(title=label, xlabel="epoch", ylabel=label)
        ax.legend()
        ax.grid(alpha=0.3)
    axes[2].plot(epochs, [r["lr"] for r in rows], "-o", color="tab:green", markersize=4)
    axes[2].set(title="learning rate (at the epoch's start)", xlabel="epoch", ylabel="lr")
    if all(r["lr"] > 0 for r in rows) and max(r["lr"] for r in rows) > 10 * min(r["lr"] for r in rows):
        axes[2].set_yscale("log")
    axes[2].grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_curves(run_dir: Path, *, tb=None) -> Path:
    """``<run_dir>/report/curves.png`` (and a TensorBoard image when ``tb`` is given)."""
    rows = read_metrics(run_dir)
    fig = curves_figure(rows, f"Training curves: {run_label(run_dir)} ({len(rows)} epochs)")
    return save_figure(fig, Path(run_dir) / "report" / "curves.png", tb=tb, tag="report/curves")
