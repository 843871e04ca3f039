"""``cnnlab runs DIR``: one table of every run under DIR, sorted by the metric, and DIR/summary.csv.

DIR may be a sweep (``multirun/<date>/<time>``, one job per numbered folder) or any folder of single
runs (``outputs/``): every folder below it that holds a run (:func:`cnnlab.run.layout.find_runs`).
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnnlab.errors import ConfigError, DataError
from cnnlab.io import atomic_write, confined
from cnnlab.report.folds import describe, fold_groups
from cnnlab.report.html import SweepTable, write_run_page, write_sweep_page
from cnnlab.run.layout import SWEEP_SUMMARY, RunDir, find_runs
from cnnlab.run.lock import is_locked
from cnnlab.run.log import make_console

# Finished runs first, best metric first within a status.
STATUS_RANK = {
    "ok": 0,
    "pruned": 1,
    "diverged": 2,
    "failed": 3,
    "interrupted": 4,
    "incomplete": 5,
    "broken": 6,
}
CSV_FIELDS = [
    "run", "dataset", "status", "monitor", "best_value", "best_val_acc", "test_acc", "best_epoch",
    "epochs_run", "stop_reason", "seconds", "overrides", "error",
]  # fmt: skip


def _mode(config: dict | None, monitor: str | None) -> str:
    mode = ((config or {}).get("trainer") or {}).get("mode")
    if mode in ("max", "min"):
        return mode
    return "min" if monitor and "loss" in str(monitor) else "max"


def read_run(run_dir: Path, root: Path) -> dict:
    """One row: what the run's summary.json and status.json say, and its overrides. A run whose files
    are damaged is listed as broken, with the reason, and does not stop the others from being listed."""
    run = RunDir(run_dir)
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    try:
        summary, status = run.read_summary() or {}, run.read_status() or {}
        overrides = run.read_overrides() or [
            str(o) for o in (run.read_provenance() or {}).get("overrides", [])
        ]
        config = run.read_config()
    except DataError as exc:
        row = dict.fromkeys(CSV_FIELDS)
        row.update(run=name, status="broken", error=str(exc), overrides=[], mode="max", path=run_dir)
        return row
    dataset = ((config or {}).get("dataset") or {}).get("name")
    row = {field: summary.get(field, status.get(field)) for field in CSV_FIELDS}  # a pruned trial: status
    row.update(
        run=name,
        status=status.get("status") or ("ok" if summary else "incomplete"),
        error=status.get("error", ""),
        overrides=overrides,
        mode=_mode(config, summary.get("monitor")),
        path=run_dir,
        dataset=str(dataset) if dataset is not None else None,
    )
    if row["seconds"] is None:
        row["seconds"] = status.get("seconds")
    for key in ("best_value", "best_val_acc", "test_acc", "seconds"):  # numbers, or nothing
        if not isinstance(row[key], int | float) or isinstance(row[key], bool):
            row[key] = None
    return row


def split_override(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key.lstrip("+~"), value


def sort_rows(rows: list[dict]) -> tuple[list[dict], str]:
    """Rows by status, then by the shared monitored metric (best_val_acc when runs monitor different ones)."""
    targets = {(r["monitor"], r["mode"]) for r in rows if r["status"] == "ok"}
    field, mode = ("best_value", targets.pop()[1]) if len(targets) == 1 else ("best_val_acc", "max")

    def key(row):
        value = row[field]
        if value is None or not math.isfinite(value):
            return STATUS_RANK.get(row["status"], 9), True, 0.0
        return STATUS_RANK.get(row["status"], 9), False, -value if mode == "max" else value

    return sorted(rows, key=key), field


def collect(root: Path) -> list[dict]:
    """The runs under ``root``, grouped by dataset (accuracies of different datasets do not compare;
    runs whose dataset is unknown last), each group sorted by :func:`sort_rows`."""
    groups: dict[str | None, list[dict]] = {}
    for run in find_runs(root):
        row = read_run(run, root)
        groups.setdefault(row["dataset"], []).append(row)
    order = sorted(groups, key=lambda name: (name is None, name or ""))
    return [row for name in order for row in sort_rows(groups[name])[0]]


def varying_keys(rows: list[dict]) -> list[str]:
    """Override keys whose value is not the same in every run: what tells the runs apart."""
    keys: dict[str, set] = {}
    for row in rows:
        for item in row["overrides"]:
            key, value = split_override(item)
            keys.setdefault(key, set()).add(value)
    return [k for k, values in keys.items() if len(values) > 1 or any(k not in _keys(r) for r in rows)]


def _keys(row: dict) -> set[str]:
    return {split_override(item)[0] for item in row["overrides"]}


def _num(value, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table_cells(rows: list[dict]) -> tuple[list[str], list[list[str]], str]:
    """The table's header, its cells as text, and its caption (the overrides common to every run)."""
    varying = varying_keys(rows)
    common = sorted({o for r in rows for o in r["overrides"]} - {o for r in rows for o in _shown(r, varying)})
    monitors = {r["monitor"] for r in rows if r["monitor"]}
    extra = monitors.pop() if len(monitors) == 1 and "val_acc" not in monitors else None
    datasets = len({r["dataset"] for r in rows}) > 1  # ranked within each dataset
    header = ["#", *(["dataset"] if datasets else []), "run", "overrides",
              *([f"best {extra}"] if extra else []), "best val acc", "test acc", "epochs", "time",
              "status"]  # fmt: skip
    cells = []
    for row, rank in zip(rows, ranks(rows), strict=True):
        status = row["status"] if not row["error"] else f"{row['status']}: {row['error']}"
        epochs = "-" if row["epochs_run"] is None else f"{row['epochs_run']} (best {row['best_epoch']})"
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}s"
        line = [str(rank), *([row["dataset"] or "-"] if datasets else []), row["run"],
                " ".join(map(_short, _shown(row, varying))) or "-"]  # fmt: skip
        line += [_num(row["best_value"])] if extra else []
        cells.append([*line, _num(row["best_val_acc"]), _num(row["test_acc"]), epochs, seconds, status])
    return header, cells, ("common: " + " ".join(common)) if common else ""


def ranks(rows: list[dict]) -> list[int]:
    """1, 2, ... within each dataset's group (rows come grouped, from :func:`collect`)."""
    out, seen = [], {}
    for row in rows:
        seen[row["dataset"]] = seen.get(row["dataset"], 0) + 1
        out.append(seen[row["dataset"]])
    return out


def runs_table(rows: list[dict], *, title: str) -> Table:
    header, cells, caption = table_cells(rows)
    table = Table(title=title, caption=caption or None)
    for name in header:
        right = name in ("#", "epochs", "time") or name.startswith("best") or name.endswith("acc")
        table.add_column(name, justify="right" if right else "left", overflow="fold")
    for row, line in zip(rows, cells, strict=True):
        style = {"ok": "green", "diverged": "yellow"}.get(row["status"], "red")
        table.add_row(*map(escape, line[:-1]), f"[{style}]{escape(line[-1])}[/]")
    return table


def write_pages(root: Path, rows: list[dict]) -> Path:
    """Each run's page (for those with a report/ that no process is writing now) and ``root/runs.html``
    linking them."""
    for row in rows:
        folder = RunDir(row["path"])
        if folder.report.is_dir() and not folder.report.is_symlink() and not is_locked(folder.path):
            try:
                write_run_page(folder.path)
            except DataError as exc:  # a link below the run: that page is not written, the others are
                print(f"cnnlab: {exc}", file=sys.stderr)
    header, cells, caption = table_cells(rows)
    sweep = SweepTable(header, cells, [r["path"] for r in rows], [r["status"] for r in rows], caption)
    return write_sweep_page(root, sweep)


def _shown(row: dict, keys: list[str]) -> list[str]:
    return [o for o in row["overrides"] if split_override(o)[0] in keys]


def _short(item: str) -> str:
    """``optimizer.lr=0.028977052667178302`` -> ``optimizer.lr=0.02898``: Optuna's samples, readable."""
    key, value = split_override(item)
    try:
        number = float(value)
    except ValueError:
        return item
    return item if value.lstrip("-").isdigit() else f"{key}={number:.4g}"


def write_csv(path: Path, rows: list[dict]) -> None:
    """summary.csv: the table's rows, plus one column per override key for analysis in pandas."""
    keys = list(dict.fromkeys(split_override(o)[0] for r in rows for o in r["overrides"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*CSV_FIELDS, *keys], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        values = dict(split_override(o) for o in row["overrides"])
        writer.writerow({**row, "overrides": " ".join(row["overrides"]), **values})
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def report(root: Path, *, csv_file: bool = True, console: Console | None = None) -> list[dict]:
    """Print the table of the runs under ``root`` and write ``root/summary.csv``; return the rows."""
    rows = collect(root)
    if rows:
        if csv_file:
            write_csv(root / SWEEP_SUMMARY, rows)
        failed = sum(r["status"] != "ok" for r in rows)
        title = f"{root}: {len(rows)} runs" + (f", {failed} not ok" if failed else "")
        if console is None or not console.is_terminal:  # a log or a pipe: do not squeeze the table
            console = make_console()
        console.print(runs_table(rows, title=title))
        for entry in fold_groups(rows):  # cross-validation: the folds of one experiment together
            console.print(escape(describe(entry)))
    return rows


def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "dir"):
        raise ConfigError("Name the folder to compare: cnnlab runs multirun/<date>/<time> (or outputs).")
    root = Path(cfg.dir)
    if not root.is_dir():
        raise ConfigError(f"No folder {root}; give a sweep folder (multirun/<date>/<time>) or outputs.")
    with confined(root):  # no write below the folder goes through a link
        _report(root, cfg)


def _report(root: Path, cfg: DictConfig) -> None:
    rows = report(root, csv_file=cfg.csv)
    if not rows:
        raise ConfigError(
            f"No runs under {root}: looked for folders holding summary.json, status.json or .hydra/."
        )
    if cfg.csv:
        print(f"wrote {root / SWEEP_SUMMARY}")
    if cfg.html:
        print(f"wrote {write_pages(root, rows)}")
