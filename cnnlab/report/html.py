"""One page per run, ``<run>/report/index.html``, and one per folder of runs, ``<dir>/runs.html``: every
number and figure of a run (or the table and curves of a sweep) in one file that any browser opens from
disk, without a server. Images are referenced by relative paths to files that exist when the page is
written: a run's page lives beside its figures in report/, so the folder can be moved or zipped whole.

What a run folder holds is shown as it is: a missing or broken file becomes a note on the page, never
an error, and every text is escaped (see :mod:`cnnlab.report.htmlparts`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnnlab.io import write_text
from cnnlab.report.curves import write_overlay
from cnnlab.report.files import CAPTIONS
from cnnlab.report.htmlparts import (
    esc,
    figure,
    href,
    key_values,
    page,
    parsed,
    problem,
    reached_without_links,
    read_json,
    read_text,
    regular_file,
    section,
    table,
)  # fmt: skip
from cnnlab.run.layout import METRICS, REPORT_METRICS, SWEEP_CURVES, SWEEP_PAGE, RunDir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def write_run_page(run_dir: Path) -> Path:
    """Write ``<run_dir>/report/index.html`` from what the run folder holds; return its path."""
    run_dir = Path(run_dir)
    RunDir(run_dir).check_report()
    parts = [
        ("summary", "Summary", summary_section),
        ("evaluation", "Evaluation on the test split", evaluation_section),
        ("figures", "Figures", figures_section),
        ("epochs", "Per epoch (metrics.csv)", epochs_section),
        ("config", "Config and provenance", config_section),
        ("files", "Files", files_section),
    ]
    body = "".join(section(anchor, title, _shown(build, run_dir)) for anchor, title, build in parts)
    name = f"{run_dir.resolve().parent.name}/{run_dir.resolve().name}"
    html = page(f"cnnlab run {name}", f"cnnlab run {name}", [(a, t) for a, t, _ in parts], body)
    write_text(RunDir(run_dir).page, html)
    return RunDir(run_dir).page


def refresh_run_page(run_dir: Path) -> Path | None:
    """Write the run's page again if it has one (after a new figure), else nothing."""
    return write_run_page(run_dir) if regular_file(RunDir(run_dir).page) else None


def _shown(build: Callable[[Path], str], run_dir: Path) -> str:
    """A section's HTML; a file of an unexpected shape shows as a note instead of failing the page."""
    try:
        return build(run_dir)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        return problem(
            f"could not be shown: the run's files are not as expected ({type(exc).__name__}: {exc})"
        )


def summary_section(run_dir: Path) -> str:
    folder = RunDir(run_dir)
    summary, missing = read_json(folder.summary_file)
    out = key_values(summary) if isinstance(summary, dict) else problem(missing or "no summary (not a dict)")
    out = resolved_settings(folder, summary if isinstance(summary, dict) else {}) + out
    status, _ = read_json(folder.status_file)
    if isinstance(status, dict):
        out = (f"<div class=error>run {esc(status.get('status', '?'))}: {esc(status.get('error', ''))}"
               "</div>" + out)  # fmt: skip
    return f"<p class=muted>{esc(run_dir.resolve())}</p>{out}"


def resolved_settings(folder: RunDir, summary: dict) -> str:
    """What the run actually used where its config says ``auto`` or null: device, precision, threads
    (recorded in provenance.json; the config's own values for runs written before that)."""
    provenance, _ = read_json(folder.provenance_file)
    provenance = provenance if isinstance(provenance, dict) else {}
    shown = {}
    for key in ("device", "precision", "threads"):
        value = provenance.get(key, summary.get(key))
        shown[key] = "not recorded (a run from an earlier cnnlab)" if value is None else value
    return f"<h3>Ran with</h3>{key_values(shown)}"


def evaluation_section(run_dir: Path) -> str:
    m, missing = read_json(RunDir(run_dir).report_file(REPORT_METRICS))
    if not isinstance(m, dict):
        return problem(missing or "metrics.json is not a dict")
    overall = {
        "images": m["n"],
        "accuracy": m["accuracy"],
        "loss (NLL)": m["loss"],
        f"ECE ({m.get('ece_bins', '?')} bins)": m["ece"],
        "macro F1": m["macro"]["f1"],
        "checkpoint": f"{m.get('checkpoint')} (epoch {m.get('epoch')})",
        "test-time augmentation": m.get("tta") or "none",
    }
    keys = ("class", "precision", "recall", "f1", "support")
    per_class = table(list(keys), [[r[k] for k in keys] for r in m["per_class"]])
    pair_keys = ("true", "predicted", "count", "share_of_true")
    pairs = table(["true", "predicted as", "count", "share of true class"],
                  [[r[k] for k in pair_keys] for r in m["most_confused"]])  # fmt: skip
    return (f"{key_values(overall)}<h3>Per class (recall = the class's accuracy)</h3>{per_class}"
            f"<h3>Most confused pairs</h3>{pairs}")  # fmt: skip


def figures_section(run_dir: Path) -> str:
    report = RunDir(run_dir).report
    images = [p for p in report.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and regular_file(p)]
    order = list(CAPTIONS)
    images.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    if not images:
        return problem("report/ holds no figures yet (cnnlab viz <what> run=... adds them)")
    return "".join(figure(href(p, report), CAPTIONS.get(p.name, p.name)) for p in images)


def epochs_section(run_dir: Path) -> str:
    text, missing = read_text(RunDir(run_dir).metrics)
    if text is None:
        return problem(missing)
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        return problem("metrics.csv has no epochs yet")
    return table(rows[0], [[parsed(cell) for cell in row] for row in rows[1:]])


def config_section(run_dir: Path) -> str:
    folder = RunDir(run_dir)
    overrides, _ = read_text(folder.overrides_file)
    config, missing = read_text(folder.config_file)
    provenance, _ = read_json(folder.provenance_file)
    out = f"<h3>Overrides</h3><pre>{esc(overrides)}</pre>" if overrides is not None else ""
    out += f"<h3>Resolved config</h3><pre>{esc(config)}</pre>" if config is not None else problem(missing)
    if isinstance(provenance, dict):
        out += f"<h3>Provenance</h3>{key_values(provenance)}"
    return out


def files_section(run_dir: Path) -> str:
    """Links to the report's other files (CSV, JSON) for a reader who wants the raw numbers."""
    report = RunDir(run_dir).report
    files = sorted(p for p in report.iterdir()
                   if regular_file(p) and p.suffix.lower() in (".csv", ".json"))  # fmt: skip
    items = "".join(f'<li><a href="{esc(href(p, report))}">{esc(p.name)}</a></li>' for p in files)
    return f"<ul>{items}</ul>" if items else problem("no CSV or JSON files in report/")


@dataclass
class SweepTable:
    """What ``cnnlab runs`` shows, for the page: header, cells as text, each row's run folder and status."""

    header: list[str]
    rows: list[list[str]]
    runs: list[Path]
    statuses: list[str]
    caption: str = ""


def write_sweep_page(root: Path, runs_table: SweepTable) -> Path:
    """Write ``<root>/runs.html``: the sorted table with links to each run's page (where it has one) and
    the curves of all runs overlaid (``<root>/runs_curves.png``); return its path."""
    root = Path(root)
    labels = [f"#{i} {row[1]}: {row[2]}" for i, row in enumerate(runs_table.rows, 1)]
    curves = write_overlay(root / SWEEP_CURVES, list(zip(labels, runs_table.runs, strict=True)),
                           title=f"Curves of the runs under {root.name}")  # fmt: skip
    rows = []
    for row, run, status in zip(runs_table.rows, runs_table.runs, runs_table.statuses, strict=True):
        run_page = RunDir(run).page
        name = esc(row[1])
        if reached_without_links(run_page, root):
            name = f'<a href="{esc(href(run_page, root))}">{name}</a>'
        elif regular_file(run_page):  # a report/ (or a folder above it) linked elsewhere: not followed
            name += " <span class=warn>(its page is reached through a symbolic link: not linked)</span>"
        css = {"ok": "ok", "diverged": "warn"}.get(status, "bad")
        rows.append([esc(row[0]), name, *map(esc, row[2:-1]), f"<span class={css}>{esc(row[-1])}</span>"])
    body = table(runs_table.header, rows, raw=set(range(len(runs_table.header))))
    if runs_table.caption:
        body += f"<p class=muted>{esc(runs_table.caption)}</p>"
    parts = [section("table", f"{len(rows)} runs, best first", body)]
    if curves is not None:
        parts.append(section("curves", "Curves", figure(href(curves, root), "Every run's curves overlaid")))
    else:
        parts.append(section("curves", "Curves", problem(f"no run has a readable {METRICS}")))
    nav = [("table", "Runs"), ("curves", "Curves")]
    html = page(f"cnnlab runs {root.name}", f"cnnlab runs {root.resolve()}", nav, "".join(parts))
    write_text(root / SWEEP_PAGE, html)
    return root / SWEEP_PAGE
