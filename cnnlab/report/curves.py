"""Training curves from a run's metrics.csv: loss, accuracy and learning rate per epoch."""

from __future__ import annotations

import math
from pathlib import Path

from cnnlab.errors import DataError
from cnnlab.report.figures import class_colors, new_figure, run_label, save_figure
from cnnlab.report.files import CURVES
from cnnlab.run.layout import RunDir

CURVES_SIZE = (15.0, 4.5)  # inches
OVERLAID = (("val_acc", "validation accuracy"), ("val_loss", "validation loss"), ("train_loss", "train loss"))


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
    return save_figure(fig, folder.report_file(CURVES), tb=tb, tag="report/curves")


def overlay_figure(series: list[tuple[str, list[dict[str, float]]]], title: str):
    """Validation accuracy, validation loss and train loss per epoch of several runs, one colour each."""
    fig = new_figure(CURVES_SIZE[0], CURVES_SIZE[1] + 0.25 * ((len(series) + 3) // 4))
    axes = fig.subplots(1, 3)
    for (label, rows), color in zip(series, class_colors(len(series)), strict=True):
        epochs = [r["epoch"] for r in rows]
        for ax, (key, _) in zip(axes, OVERLAID, strict=True):
            ax.plot(
                epochs, [r.get(key, math.nan) for r in rows], "-o", color=color, markersize=3, label=label
            )
    for ax, (_, name) in zip(axes, OVERLAID, strict=True):
        ax.set(title=name, xlabel="epoch", ylabel=name.split()[-1])
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=min(len(series), 4), fontsize=9, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.25 * ((len(series) + 3) // 4) / fig.get_figheight(), 1, 1))
    return fig


def write_overlay(path: Path, runs: list[tuple[str, Path]], *, title: str) -> Path | None:
    """:func:`overlay_figure` of the runs (label, folder) whose metrics.csv can be read, at ``path``;
    None (and nothing written) when no run's can."""
    series = []
    for label, run_dir in runs:
        try:
            series.append((label, read_curves(RunDir(run_dir))))
        except DataError:  # a missing, empty or broken metrics.csv
            continue
    if not series:
        return None
    return save_figure(overlay_figure(series, title), Path(path))
