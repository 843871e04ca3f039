"""The test-split report of a run: metrics.json, per-class and confusion CSVs, and figures.

Written at the end of ``cnnlab train`` (from the probabilities that gave summary.json's test accuracy,
so the two agree exactly) and by ``cnnlab evaluate``; both score through :class:`cnnlab.run.load.Predictor`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cnnlab.io import write_csv, write_json
from cnnlab.report.curves import write_curves
from cnnlab.report.figures import WRONG, grid_figure, new_figure, run_label, save_figure, tensorboard_writer
from cnnlab.report.files import CONFUSION, CONFUSION_CSV, MISCLASSIFIED, PER_CLASS, RELIABILITY
from cnnlab.report.html import write_run_page
from cnnlab.report.metrics import classification_report
from cnnlab.run.layout import REPORT_METRICS, RunDir
from cnnlab.run.load import Predictor

log = logging.getLogger("cnnlab")


@dataclass
class Scored:
    """Test images scored once: the images, their labels and the model's log-probabilities."""

    x: torch.Tensor  # uint8 (N, C, H, W), on any device
    labels: torch.Tensor  # (N,) int64, on the CPU
    log_probs: torch.Tensor  # (N, classes) float32, on the CPU
    classes: list[str]
    checkpoint: Path
    epoch: int
    precision: str
    tta: str | int | None

    @classmethod
    def score(
        cls, predictor: Predictor, x: torch.Tensor, labels: torch.Tensor, *, checkpoint: Path
    ) -> Scored:
        log_probs = torch.cat([predictor.log_probs(xb).cpu() for xb in predictor.batches(x)])
        record = predictor.record
        return cls(x, labels.cpu(), log_probs, record.classes, Path(checkpoint), record.epoch,
                   predictor.precision, predictor.tta)  # fmt: skip

    @property
    def probs(self) -> np.ndarray:
        return self.log_probs.exp().numpy()

    @property
    def accuracy(self) -> float:
        """The share of right predictions, computed as the report's metrics.json computes it."""
        return float((self.probs.argmax(1) == self.labels.numpy()).mean())

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood of the true class (cross-entropy without label smoothing)."""
        return torch.nn.functional.nll_loss(self.log_probs, self.labels).item()


def write_train_report(folder: RunDir, scored: Scored | None, *, tensorboard: bool) -> None:
    """End of ``train``: the curves, the evaluation report when the test split was scored, and the run's
    page ``report/index.html`` showing them all."""
    tb = tensorboard_writer(folder.path, tensorboard)
    try:
        write_curves(folder, tb=tb)
        if scored is not None:
            write_report(folder.report, scored, run_name=run_label(folder.path), tb=tb)
    finally:
        if tb is not None:
            tb.close()
    write_run_page(folder.path)


def write_report(
    out: Path, scored: Scored, *, run_name: str, tb=None, bins: int = 15, worst: int = 16, pairs: int = 10
) -> dict:
    """Write metrics.json, per_class.csv, confusion_matrix.csv/.png, reliability.png and
    misclassified.png to ``out``; return the metrics."""
    p, labels, classes = scored.probs, scored.labels.numpy(), scored.classes
    metrics = classification_report(p, labels, classes, bins=bins, pairs=pairs)
    metrics.update(checkpoint=str(scored.checkpoint), epoch=scored.epoch, precision=scored.precision,
                   tta=scored.tta)  # fmt: skip
    write_json(out / REPORT_METRICS, metrics)
    columns = ("class", "precision", "recall", "f1", "accuracy", "support")
    write_csv(out / PER_CLASS, list(columns), [[r[k] for k in columns] for r in metrics["per_class"]])
    cm = np.array(metrics["confusion_matrix"])
    write_csv(out / CONFUSION_CSV, ["true \\ predicted", *classes],
              [[name, *row] for name, row in zip(classes, cm.tolist(), strict=True)])  # fmt: skip
    title = f"Confusion matrix: {run_name} (test, accuracy {metrics['accuracy']:.4f})"
    save_figure(confusion_figure(cm, classes, title), out / CONFUSION, tb=tb,
                tag="report/confusion_matrix")  # fmt: skip
    fig = reliability_figure(metrics["calibration"], metrics["ece"], f"Reliability diagram: {run_name}")
    save_figure(fig, out / RELIABILITY, tb=tb, tag="report/reliability")
    if worst:
        fig = worst_figure(scored.x, p, labels, classes, worst, run_name)
        if fig is not None:
            save_figure(fig, out / MISCLASSIFIED, tb=tb, tag="report/misclassified")
    log.info("evaluation report written to %s", out)
    return metrics


def read_report(out: Path) -> dict | None:
    """The metrics.json of an earlier report in ``out`` (None when there is none or it is unreadable)."""
    try:
        data = json.loads((out / REPORT_METRICS).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def print_tables(m: dict, console: Console) -> None:
    overall = Table(title="cnnlab evaluate: test split", show_header=False)
    for key, value in (
        ("images", str(m["n"])),
        ("accuracy", f"{m['accuracy']:.4f}"),
        ("loss (NLL)", f"{m['loss']:.4f}"),
        (f"ECE ({m['ece_bins']} equal-width bins)", f"{m['ece']:.4f}"),
        ("macro F1", f"{m['macro']['f1']:.4f}"),
        ("checkpoint", f"{m['checkpoint']} (epoch {m['epoch']})"),
    ):
        overall.add_row(key, value)
    per_class = Table(title="per class (accuracy = recall)")
    for col in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for r in m["per_class"]:
        per_class.add_row(r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}",
                          str(r["support"]))  # fmt: skip
    pairs = Table(title="most confused pairs")
    for col in ("true", "predicted as", "count", "% of true class"):
        pairs.add_column(col, justify="right" if col in ("count", "% of true class") else "left")
    for r in m["most_confused"]:
        pairs.add_row(r["true"], r["predicted"], str(r["count"]), f"{100 * r['share_of_true']:.1f}")
    for table in (overall, per_class, pairs):
        console.print(table)


def confusion_figure(cm: np.ndarray, classes: list[str], title: str):
    k = len(classes)
    fig = new_figure(10, 9)
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images")
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            color = "white" if cm[i, j] > threshold else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8 if k <= 12 else 6)
    fig.tight_layout()
    return fig


def reliability_figure(bins: list[dict], ece: float, title: str):
    fig = new_figure(7, 8)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    width = bins[0]["hi"] - bins[0]["lo"]
    full = [b for b in bins if b["count"]]
    centers = [(b["lo"] + b["hi"]) / 2 for b in full]
    top.bar(centers, [b["accuracy"] for b in full], width=width, edgecolor="black", label="accuracy")
    top.bar(centers, [b["confidence"] - b["accuracy"] for b in full], bottom=[b["accuracy"] for b in full],
            width=width, color="tab:red", alpha=0.35, edgecolor="tab:red", hatch="//",
            label="gap to mean confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
            title=f"{title}\nECE {ece:.4f} ({len(bins)} equal-width confidence bins)")  # fmt: skip
    top.legend(loc="upper left")
    bottom.bar([(b["lo"] + b["hi"]) / 2 for b in bins], [b["count"] for b in bins], width=width,
               color="tab:gray", edgecolor="black")  # fmt: skip
    bottom.set(xlabel="confidence (top class probability)", ylabel="images")
    fig.tight_layout()
    return fig


def worst_figure(
    x: torch.Tensor, p: np.ndarray, labels: np.ndarray, classes: list[str], count: int, name: str
):
    """The ``count`` most confident mistakes, titled ``pred (true)`` in red with the confidence."""
    pred, conf = p.argmax(1), p.max(1)
    wrong = np.flatnonzero(pred != labels)
    if len(wrong) == 0:
        log.info("no misclassified test images: misclassified.png not written")
        return None
    worst = wrong[np.argsort(-conf[wrong], kind="stable")][:count]
    titles = [f"{classes[pred[i]]} ({classes[labels[i]]})\np={conf[i]:.2f}" for i in worst]
    images = x[torch.as_tensor(worst, device=x.device)].cpu()
    return grid_figure(images, titles, colors=[WRONG] * len(worst), cols=min(len(worst), 8),
                       title=f"Most confident mistakes: {name}, predicted (true)")  # fmt: skip
