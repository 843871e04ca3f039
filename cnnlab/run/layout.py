"""``RunDir``: every file of a run folder, and the only place their names are spelled.

A run folder is data: whatever it holds was written by some process, maybe broken, maybe hostile.
Readers here parse with one-line errors (:class:`~cnnlab.errors.DataError`) instead of tracebacks, and
writers refuse to follow a symbolic link out of the folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import yaml

from cnnlab.errors import DataError
from cnnlab.io import (
    TEMP_SUFFIX,
    atomic_write,
    format_value,
    open_append,
    read_regular_text,
    write_csv,
    write_json,
    write_text,
)

# Files and folders a run writes; a symbolic link at any of them is refused (see check_no_links).
HYDRA, CHECKPOINTS, REPORT, TB, EXPORT = ".hydra", "checkpoints", "report", "tb", "export"
CONFIG, OVERRIDES, HYDRA_SETTINGS = "config.yaml", "overrides.yaml", "hydra.yaml"
LOG, METRICS, SUMMARY, STATUS = "train.log", "metrics.csv", "summary.json", "status.json"
PROVENANCE = "provenance.json"
PSEUDO_LABELS = "pseudo_labels.csv"  # trainer.pseudo_label: one row per round, images added per class
ROBUSTNESS = "robustness.json"  # in report/: cnnlab evaluate attack=...
COMPRESSION = "compression.csv"  # cnnlab compress: the table against the original run
LAST, BEST, BEST_SAFETENSORS = "last.pt", "best.pt", "best.safetensors"
SWA_WEIGHTS = "swa.safetensors"  # in checkpoints/: the weight average of trainer.swa_start
SUBMISSION, LOCK = "submission.csv", ".cnnlab.lock"
SWEEP_SUMMARY = "summary.csv"  # in a sweep folder, or any folder `cnnlab runs` compares
SWEEP_PAGE, SWEEP_CURVES = "runs.html", "runs_curves.png"  # likewise, with `cnnlab runs <dir> html=true`
RUN_PAGE, REPORT_METRICS = "index.html", "metrics.json"  # in report/: the run's page, the evaluation
# In a study folder (cnnlab tune): Optuna's SQLite database, the best trial, the study's figures.
STUDY_DB, BEST_TRIAL = "study.db", "best_trial.json"
STUDY_FIGURES = ("optimization_history.png", "param_importances.png", "intermediate_values.png")
# In the folder that holds runs (a sweep's or a study's, or outputs/<date>): MLflow's default local store.
MLFLOW_DB, MLFLOW_ARTIFACTS = "mlflow.db", "mlartifacts"
WRITTEN_DIRS = (HYDRA, CHECKPOINTS, REPORT, TB, EXPORT)
WRITTEN_FILES = (LOG, METRICS, SUMMARY, STATUS, PROVENANCE, SUBMISSION, LOCK, PSEUDO_LABELS, COMPRESSION)
# A folder holding any of these is a run (a sweep job's folder too, once Hydra has written .hydra/).
RUN_MARKERS = (SUMMARY, STATUS, HYDRA, CHECKPOINTS, METRICS)


class RunDir:
    """The files of one run folder (``outputs/<date>/<time>`` or a sweep job ``multirun/.../<n>``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------------------------------ paths
    @property
    def hydra(self) -> Path:
        return self.path / HYDRA

    @property
    def config_file(self) -> Path:
        return self.path / HYDRA / CONFIG

    @property
    def overrides_file(self) -> Path:
        return self.path / HYDRA / OVERRIDES

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def status_file(self) -> Path:
        return self.path / STATUS

    @property
    def provenance_file(self) -> Path:
        return self.path / PROVENANCE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.path / CHECKPOINTS / LAST

    @property
    def best(self) -> Path:
        return self.path / CHECKPOINTS / BEST

    @property
    def best_safetensors(self) -> Path:
        return self.path / CHECKPOINTS / BEST_SAFETENSORS

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>`` (``best.pt``, ``last.pt``, ...)."""
        return self.path / CHECKPOINTS / name

    def epoch_weights(self, epoch: int) -> Path:
        """``checkpoints/epoch_<n>.safetensors``: one epoch's weights (``trainer.epoch_checkpoints``)."""
        return self.path / CHECKPOINTS / f"epoch_{epoch:03d}.safetensors"

    @property
    def pseudo_labels(self) -> Path:
        return self.path / PSEUDO_LABELS

    @property
    def compression(self) -> Path:
        return self.path / COMPRESSION

    @property
    def tb(self) -> Path:
        return self.path / TB

    @property
    def report(self) -> Path:
        return self.path / REPORT

    def report_file(self, name: str) -> Path:
        return self.path / REPORT / name

    @property
    def page(self) -> Path:
        return self.path / REPORT / RUN_PAGE

    @property
    def export(self) -> Path:
        return self.path / EXPORT

    @property
    def submission(self) -> Path:
        return self.path / SUBMISSION

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    # ------------------------------------------------------------------------------------------ state
    def holds_run(self) -> bool:
        """Something has already run in this folder."""
        return any((self.path / marker).exists() for marker in RUN_MARKERS)

    def has_training_output(self) -> bool:
        """A run has trained here (more than Hydra's ``.hydra/`` of a job about to start)."""
        return any((self.path / m).exists() for m in (SUMMARY, STATUS, CHECKPOINTS, METRICS))

    def is_finished(self) -> bool:
        return self.summary_file.is_file()

    def is_unfinished(self) -> bool:
        """Stopped before the end (killed or interrupted) with a ``last.pt`` to continue from; not
        finished, failed or diverged. A broken status.json does not count as interrupted."""
        if not self.last.is_file() or self.summary_file.exists():
            return False
        if not self.status_file.exists():
            return True
        try:
            status = self.read_status()
        except DataError:
            return False
        return status.get("status") == "interrupted"

    # ---------------------------------------------------------------------------------------- readers
    def _text(self, path: Path) -> str:
        try:
            return read_regular_text(path)
        except UnicodeDecodeError:
            raise DataError(f"{path} is not a text file; the run folder is damaged.") from None
        except OSError as exc:
            raise DataError(f"cannot read {path} ({exc.strerror}); check the folder's permissions.") from None

    def _json(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            data = json.loads(self._text(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); "
                            "the run folder is damaged: move or delete that file.") from None  # fmt: skip
        if not isinstance(data, dict):
            raise DataError(f"{path} holds a JSON {type(data).__name__}, not an object; the run folder is "
                            "damaged: move or delete that file.")  # fmt: skip
        return data

    def read_summary(self) -> dict | None:
        return self._json(self.summary_file)

    def read_status(self) -> dict | None:
        return self._json(self.status_file)

    def read_provenance(self) -> dict | None:
        return self._json(self.provenance_file)

    def _yaml(self, path: Path):
        try:
            return yaml.safe_load(self._text(path))
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise DataError(f"{path} is not valid YAML{at}; the run folder is damaged: move or delete "
                            "that file.") from None  # fmt: skip

    def read_overrides(self) -> list[str]:
        """The command-line overrides the run was started with (``.hydra/overrides.yaml``)."""
        if not self.overrides_file.is_file():
            return []
        data = self._yaml(self.overrides_file)
        if data is None:
            return []
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise DataError(f"{self.overrides_file} must be a list of key=value strings; the run folder is "
                            "damaged or was edited: restore that file or start a new run.")  # fmt: skip
        return data

    def read_config(self) -> dict | None:
        """The resolved config Hydra saved (``.hydra/config.yaml``), as plain data; None when absent."""
        if not self.config_file.is_file():
            return None
        data = self._yaml(self.config_file)
        if not isinstance(data, dict):
            raise DataError(f"{self.config_file} does not hold a config mapping; the run folder is damaged.")
        return data

    def read_metric_rows(self) -> list[dict[str, str]]:
        """metrics.csv as written: one dict of strings per epoch, checked (an ``epoch`` column of
        whole numbers, the same number of fields in every row)."""
        if not self.metrics.is_file():
            return []
        text = self._text(self.metrics)
        if "\0" in text:
            raise DataError(f"{self.metrics} is not a text file; the run folder is damaged.")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        bad = "the run folder is damaged: move it aside, or delete metrics.csv to start the curves afresh."
        if reader.fieldnames is None and not rows:
            return []
        if "epoch" not in (reader.fieldnames or []):
            raise DataError(f"{self.metrics} has no epoch column (header {reader.fieldnames}); {bad}")
        for n, row in enumerate(rows, 2):
            if None in row or None in row.values():
                raise DataError(f"{self.metrics} line {n} has more or fewer fields than the header; {bad}")
            if not row["epoch"].isdigit():
                raise DataError(f"{self.metrics} line {n}: epoch {row['epoch']!r} is not a number; {bad}")
        return rows

    def read_metrics(self) -> list[dict[str, float]]:
        """metrics.csv with every value as a float (NaN where empty or not a number)."""
        return [{k: _number(v) for k, v in row.items()} for row in self.read_metric_rows()]

    # ---------------------------------------------------------------------------------------- writers
    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_file, summary)

    def write_status(self, record: dict) -> None:
        write_json(self.status_file, record)

    def write_provenance(self, record: dict) -> None:
        write_json(self.provenance_file, record)

    def read_robustness(self) -> list[dict]:
        """report/robustness.json's entries (cnnlab evaluate attack=...); [] when absent."""
        data = self._json(self.path / REPORT / ROBUSTNESS)
        entries = (data or {}).get("entries", [])
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def write_robustness(self, entries: list[dict]) -> None:
        write_json(self.path / REPORT / ROBUSTNESS, {"entries": entries})

    def write_pseudo_labels(self, rows: list[dict]) -> None:
        write_csv(self.pseudo_labels, list(rows[0]), [list(r.values()) for r in rows])

    def write_compression(self, rows: list[dict]) -> None:
        write_csv(self.compression, list(rows[0]), [[format_value(v) for v in r.values()] for r in rows])

    def write_hydra(self, config_yaml: str, overrides: list[str], hydra_yaml: str | None = None) -> None:
        """``.hydra/``: the composed config, the command-line overrides and Hydra's own settings (a trial
        of a study, composed without a Hydra job of its own, has none)."""
        write_text(self.config_file, config_yaml)
        write_text(self.overrides_file, yaml.safe_dump(list(overrides), default_flow_style=False))
        if hydra_yaml is not None:
            write_text(self.hydra / HYDRA_SETTINGS, hydra_yaml)

    def rewrite_metrics(self, fields: list[str], rows: list[dict]) -> None:
        """Replace metrics.csv with ``rows`` (a resumed run drops epochs its checkpoint does not hold)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.metrics, lambda f: f.write(buf.getvalue().encode()))

    def append_metrics(self, fields: list[str], row: dict) -> None:
        """One epoch's row, appended (the header first in a new file)."""
        new = not self.metrics.exists()
        with open_append(self.metrics) as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: format_value(row.get(k)) for k in fields})

    def check_report(self) -> None:
        """Refuse a run without a report/ folder (there is nothing for its page to show)."""
        if not self.report.is_dir() or self.report.is_symlink():
            raise DataError(
                f"{self.path} has no report/ folder to make a page of; write one with cnnlab evaluate "
                f"run={self.path} (cnnlab train does unless trainer.report=false or trainer.evaluate=false)."
            )

    def check_no_links(self) -> None:
        """Refuse to write a run whose files or folders are symbolic links: a write would land outside
        the run folder (a ``report/`` linked elsewhere would be overwritten)."""
        nested = [f"{CHECKPOINTS}/{name}" for name in (LAST, BEST, BEST_SAFETENSORS)]
        for name in (*WRITTEN_DIRS, *WRITTEN_FILES, *nested, f"{HYDRA}/{CONFIG}", f"{HYDRA}/{OVERRIDES}"):
            path = self.path / name
            if path.is_symlink():
                raise DataError(
                    f"{path} is a symbolic link (to {path.readlink()}); cnnlab writes only inside the run "
                    "folder: replace the link with a real file or folder, or use another run folder."
                )

    def remove_stale_temps(self) -> list[Path]:
        """Delete the temp files of writes that a killed process left (``.<name>.<random>.tmp``).

        Call it only while holding the run's lock: then no live process of cnnlab is writing here.
        """
        removed = []
        for folder in (self.path, self.checkpoints, self.report, self.export):
            if folder.is_dir() and not folder.is_symlink():
                for path in folder.glob(f".*{TEMP_SUFFIX}"):
                    if path.is_file() and not path.is_symlink():
                        path.unlink(missing_ok=True)
                        removed.append(path)
        return removed


class StudyDir:
    """A study folder of ``cnnlab tune``: ``study.db`` (the Optuna study) and one run folder per trial,
    named by the trial's number. With ``storage`` (``tune.storage``: a database URL or a journal file)
    the study named ``name`` lives there instead, shared by workers on several machines."""

    def __init__(self, path: str | Path, *, storage: str | None = None, name: str = "cnnlab"):
        self.path, self.storage, self.name = Path(path), storage, name

    @property
    def shared(self) -> bool:
        """The study lives outside the folder: other workers may run trials in it right now."""
        return self.storage is not None

    def __str__(self) -> str:
        return str(self.path)

    @property
    def db(self) -> Path:
        return self.path / STUDY_DB

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.db.resolve()}"

    @property
    def best_file(self) -> Path:
        return self.path / BEST_TRIAL

    def figure(self, name: str) -> Path:
        assert name in STUDY_FIGURES
        return self.path / name

    def trial(self, number: int) -> RunDir:
        return RunDir(self.path / str(number))

    def holds_study(self) -> bool:
        return self.db.is_file()


def _number(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def find_runs(root: Path) -> list[Path]:
    """Every run folder under ``root`` (``root`` itself included), in natural order; run folders are not
    searched further, nor MLflow's artifact store (its copies of checkpoints are not runs), and symbolic
    links are not followed (a link loop cannot list a run twice)."""
    root = Path(root)
    if RunDir(root).holds_run():
        return [root]

    def natural(path: Path):  # job 10 after job 9
        return (not path.name.isdigit(), int(path.name) if path.name.isdigit() else 0, path.name)

    runs = []
    try:
        children = sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name != MLFLOW_ARTIFACTS),
            key=natural,
        )
    except OSError as exc:
        raise DataError(f"cannot read {root} ({exc.strerror}); check its permissions.") from None
    for child in children:
        runs.extend(find_runs(child))
    return runs
