"""The test-split report of a run, written to ``<run>/report/``: by ``cnnlab evaluate`` and at the end of
``cnnlab train`` (unless ``trainer.evaluate=false``, through :func:`after_train`)."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cnnlab.engine.tta import tta_views
from cnnlab.io import atomic_write
from cnnlab.report.curves import write_curves
from cnnlab.report.figures import WRONG, grid_figure, new_figure, run_label, save_figure, tensorboard_writer
from cnnlab.report.html import write_run_page
from cnnlab.report.metrics import summarize
from cnnlab.report.source import labeled_test, probs, run_data
from cnnlab.rundir import LoadedRun, load_run

log = logging.getLogger("cnnlab")


def after_train(
    run_dir: Path, *, device: torch.device, precision: str, labeled: bool, limit, tensorboard: bool
):
    """End of ``train``: the curves, the evaluation report when the test split has labels, and the run's
    page ``report/index.html`` (:func:`~cnnlab.report.html.write_run_page`) showing them all.

    The run was just trained by this user, so its config is trusted. ``limit`` (batches) mirrors
    ``trainer.limit_eval_batches`` so the report scores the same images as the run's test accuracy.
    """
    tb = tensorboard_writer(run_dir, tensorboard)
    try:
        write_curves(run_dir, tb=tb)
    finally:
        if tb is not None:
            tb.close()
    if labeled:
        run = load_run(run_dir, device=device, trust_config=True)
        write_report(run, device, precision=precision, limit=limit, tensorboard=tensorboard)
    write_run_page(run_dir)


def write_report(
    run: LoadedRun,
    device: torch.device,
    *,
    precision: str = "32",
    data_root: str | None = None,
    bins: int = 15,
    worst: int = 16,
    pairs: int = 10,
    limit: int | None = None,
    tensorboard: bool = True,
) -> dict:
    """Score the run's labeled test split; write metrics.json, CSVs and PNGs; print the tables."""
    data = run_data(run, device, data_root=data_root)
    x, y = labeled_test(data, run.run_dir, "cnnlab evaluate")
    batch = int(run.cfg.trainer.eval_batch_size)
    if limit:
        x, y = x[: limit * batch], y[: limit * batch]
    tta = run.cfg.trainer.get("tta")  # score as the run's own validation and test did
    p = probs(run, x, device=device, precision=precision, batch_size=batch,
              views=tta_views(tta, run.image_size)).numpy()  # fmt: skip
    labels = y.cpu().numpy()
    metrics = summarize(p, labels, run.classes, bins=bins, pairs=pairs)
    metrics.update(checkpoint=str(run.checkpoint_path), epoch=run.epoch, precision=precision, tta=tta)

    out = run.run_dir / "report"
    tb = tensorboard_writer(run.run_dir, tensorboard)
    try:
        atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
        _write_csv(out / "per_class.csv", ["class", "precision", "recall", "f1", "accuracy", "support"],
                   [[r[k] for k in ("class", "precision", "recall", "f1", "accuracy", "support")]
                    for r in metrics["per_class"]])  # fmt: skip
        cm = np.array(metrics["confusion_matrix"])
        _write_csv(out / "confusion_matrix.csv", ["true \\ predicted", *run.classes],
                   [[name, *row] for name, row in zip(run.classes, cm.tolist(), strict=True)])  # fmt: skip
        name = run_label(run.run_dir)
        fig = confusion_figure(cm, run.classes, f"Confusion matrix: {name} (test, accuracy "
                                                f"{metrics['accuracy']:.4f})")  # fmt: skip
        save_figure(fig, out / "confusion_matrix.png", tb=tb, tag="report/confusion_matrix")
        fig = reliability_figure(metrics["calibration"], metrics["ece"], f"Reliability diagram: {name}")
        save_figure(fig, out / "reliability.png", tb=tb, tag="report/reliability")
        if worst:
            fig = worst_figure(x, p, labels, run.classes, worst, name)
            if fig is not None:
                save_figure(fig, out / "misclassified.png", tb=tb, tag="report/misclassified")
    finally:
        if tb is not None:
            tb.close()
    print_tables(metrics, Console())
    log.info("evaluation report written to %s", out)
    return metrics


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in rows])
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


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
