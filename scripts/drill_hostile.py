"""Fault drill cases: hostile files in and around a run (links planted below it, FIFOs where files go,
names that are markup or formulas) and a study's workers orphaned by ``kill -9``."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from drill_kit import FAST, ROOT, Case, Drill

from cnnlab.run import lock
from tests.test_hostile_files import MATH, _alive, _children, fifo, png

FIFO_TIMEOUT = 180  # a command that blocks on a FIFO fails the case instead of hanging the drill


def victim(folder: Path) -> tuple[Path, Path]:
    """Someone else's folder with a file in it, and that file (its bytes must not change)."""
    target = folder / "victim"
    target.mkdir(parents=True, exist_ok=True)
    (target / "metrics.json").write_text("mine")
    return target, target / "metrics.json"


def untouched(target: Path) -> bool:
    return [p.name for p in target.iterdir()] == ["metrics.json"] and (
        target / "metrics.json"
    ).read_text() == "mine"


def evaluate_into_linked_subfolder(d: Drill, name: str) -> Case:
    """report/evaluate_<...>/ linked to a victim's folder: evaluate refuses, writing nothing there."""
    run = d.copy_run(name)
    target, marker = victim(run.parent)
    precision = json.loads((run / "report" / "metrics.json").read_text())["precision"]
    (run / "report" / f"evaluate_best_precision-{precision}_tta-flip").symlink_to(target)
    proc = d.cli("evaluate", f"run={run}", "tta=flip", cwd=run.parent)
    return Case(proc, 2, "is a symbolic link", keep=[marker], ok=untouched(target), note="victim unchanged")


def export_into_linked_subfolder(d: Drill, name: str) -> Case:
    """export out=<run>/export/sub/model.safetensors with export/sub linked out: refused."""
    run = d.copy_run(name)
    target, marker = victim(run.parent)
    (run / "export").mkdir(exist_ok=True)
    (run / "export" / "sub").symlink_to(target)
    proc = d.cli("export", f"run={run}", f"out={run}/export/sub/model.safetensors", cwd=run.parent)
    return Case(proc, 2, "is a symbolic link", keep=[marker], ok=untouched(target), note="victim unchanged")


def runs_html_through_linked_report(d: Drill, name: str) -> Case:
    """A run whose report/ links to an attacker's page: runs.html names the run but links no page."""
    run = d.copy_run(name)
    attacker = run.parent / "attacker"
    attacker.mkdir(exist_ok=True)
    (attacker / "index.html").write_text("<script>marker()</script>")
    os.rename(run / "report", run.parent / "report-aside")
    (run / "report").symlink_to(attacker)
    proc = d.cli("runs", str(run.parent), "html=true", cwd=run.parent)
    page = (run.parent / "runs.html").read_text() if (run.parent / "runs.html").is_file() else ""
    linked = "run/report/index.html" in page
    return Case(proc, 0, "runs.html", ok=bool(page) and not linked, note="no link through report/")


def _timed(d: Drill, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    try:
        return d.cli(*args, cwd=cwd, timeout=FIFO_TIMEOUT)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, -1, "", f"blocked for over {FIFO_TIMEOUT} s")


def fifo_images(folder: Path) -> Path:
    images = folder / "images"
    png(images / "a.png")
    if not (images / "b.png").exists():
        fifo(images / "b.png")
    return images


def predict_fifo(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    images = fifo_images(folder)
    proc = _timed(
        d, "predict", f"run={d.work / 'base-run'}", f"input={images}", f"out={folder}/s.csv", cwd=folder
    )
    return Case(proc, 2, "b.png is not a regular file", gone=[folder / "s.csv"])


def verify_fifo(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    root = folder / "d"
    png(root / "train" / "cat" / "a.png")
    if not (root / "train" / "cat" / "b.png").exists():
        fifo(root / "train" / "cat" / "b.png")
    proc = _timed(d, "data", "verify", "dataset=imagefolder", f"dataset.root={root}", "dataset.num_workers=0",
                  cwd=folder)  # fmt: skip
    return Case(proc, 1, "a FIFO, not a regular file")


def pseudo_label_fifo(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    images = fifo_images(folder)
    run = folder / "run"
    proc = _timed(d, "train", f"dataset.root={d.idx()}", *FAST, "trainer.max_epochs=2",
                  "trainer.pseudo_label.start_epoch=1", f"trainer.pseudo_label.data={images}",
                  f"hydra.run.dir={run}", cwd=folder)  # fmt: skip
    return Case(proc, 2, "a FIFO, not a regular file")


def _class_folders(root: Path) -> Path:
    for k, cls in enumerate((MATH, "=1+2")):
        for i in range(6):
            png(root / "train" / cls / f"{i}.png", seed=10 * k + i)
            png(root / "test" / cls / f"{i}.png", seed=100 + 10 * k + i)
    return root


def _train_on_class_folders(d: Drill, folder: Path) -> tuple[Path, subprocess.CompletedProcess]:
    run = folder / "runs" / MATH
    proc = d.cli("train", "dataset=imagefolder", f"dataset.root={_class_folders(folder / 'd')}",
                 "dataset.image_size=8", "dataset.num_workers=0", *FAST, "model=mlp", "trainer.max_epochs=1",
                 f"hydra.run.dir={run}", cwd=folder)  # fmt: skip
    return run, proc


def dollar_class_report(d: Drill, name: str) -> Case:
    """A class folder and a run folder named $\\foo$: the end-of-run report draws them as text."""
    run, proc = _train_on_class_folders(d, d.folder(name))
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    ok = summary.get("status") == "finished" and not (run / "status.json").exists()
    return Case(proc, 0, "test accuracy", keep=[run / "report" / "confusion_matrix.png"], ok=ok,
                note="summary finished, no failed status")  # fmt: skip


def dollar_names_viz_runs(d: Drill, name: str) -> Case:
    """viz and runs html=true over a run folder named $\\foo$ (copied from the base run)."""
    folder = d.folder(name)
    run = d.copy_run(name)
    os.rename(run, folder / MATH)
    viz = d.cli("viz", "curves", f"run={folder / MATH}", cwd=folder)
    proc = d.cli("runs", str(folder), "html=true", cwd=folder)
    return Case(proc, 0, "runs.html", keep=[folder / "runs_curves.png"], ok=viz.returncode == 0,
                note=f"viz exit {viz.returncode}")  # fmt: skip


def formula_class_submission(d: Drill, name: str) -> Case:
    """A class named =1+2: submission.csv writes it as '=1+2, which no spreadsheet runs."""
    folder = d.folder(name)
    run, trained = _train_on_class_folders(d, folder)
    if trained.returncode != 0:
        return Case(trained, 0, "trained", note="training failed")
    proc = d.cli("predict", f"run={run}", cwd=folder)
    text = (run / "submission.csv").read_text() if (run / "submission.csv").is_file() else ""
    labels = {row[1] for row in csv.reader(io.StringIO(text))} if text else set()
    return Case(proc, 0, "wrote", ok="=1+2" not in labels, note=f"labels {sorted(labels)}")


def orphaned_workers(d: Drill, name: str) -> Case:
    """kill -9 of `cnnlab tune tune.n_jobs=2` mid-study: both workers stop within 30 s, and the study
    folder stays locked until the last has exited."""
    folder = d.folder(name)
    study = folder / "study"
    args = ["tune", f"dataset.root={d.idx()}", *[a for a in FAST if "threads" not in a],
            "trainer.max_epochs=30", f"tune.dir={study}", "optimizer.lr=choice(0.004, 0.005)",
            "tune.n_trials=4", "tune.n_jobs=2", "tune.pruner=none"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 300
    while not any((study / n / "metrics.csv").exists() for n in ("0", "1")) and time.time() < deadline:
        time.sleep(0.2)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    unlocked_while_alive, deadline = False, time.time() + 30
    while any(_alive(w) for w in workers) and time.time() < deadline:
        locked = lock.is_locked(study)
        unlocked_while_alive |= not locked and any(_alive(w) for w in workers)
        time.sleep(0.05)
    left = [w for w in workers if _alive(w)]
    for worker in left:
        os.kill(worker, signal.SIGKILL)
    done = subprocess.CompletedProcess(args, 0, f"{len(workers)} workers, {len(left)} left", "")
    ok = len(workers) == 2 and not left and not unlocked_while_alive and not lock.is_locked(study)
    return Case(done, 0, "2 workers, 0 left", ok=ok, note=f"unlocked while alive: {unlocked_while_alive}")
