"""Sweeps through the CLI, grids, failing jobs, parallel jobs, run dirs; Optuna: test_tune."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import run_cli

FAST = ("trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.tensorboard=false",
        "trainer.progress=plain", "trainer.batch_size=32")  # fmt: skip


def sweep_dir(cwd: Path) -> Path:
    (found,) = (cwd / "multirun").glob("*/*")
    return found


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.mark.slow
def test_grid_sweep_has_a_dir_per_job_and_a_sorted_summary(tiny_idx, tmp_path):
    res = run_cli("train", "-m", f"dataset.root={tiny_idx}", *FAST,
                  "optimizer=sgd,adam", "optimizer.lr=0.01,0.05", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    root = sweep_dir(tmp_path)
    assert re.fullmatch(r"\d\d-\d\d-\d\d-\d{6}", root.name)
    jobs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    for job in jobs:
        run = root / job
        for name in ("summary.json", "metrics.csv", "provenance.json", "train.log", "checkpoints/best.pt"):
            assert (run / name).is_file(), f"{run / name} missing"
        assert (run / ".hydra" / "config.yaml").is_file()

    rows = read_csv(root / "summary.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        summary = json.loads((root / row["run"] / "summary.json").read_text())
        assert float(row["best_val_acc"]) == summary["best_val_acc"]
        assert row["optimizer"] in ("sgd", "adam") and row["optimizer.lr"] in ("0.01", "0.05")
    values = [float(r["best_value"]) for r in rows]
    assert values == sorted(values, reverse=True)  # val_acc is maximised: best first
    assert {(r["optimizer"], r["optimizer.lr"]) for r in rows} == {
        (o, lr) for o in ("sgd", "adam") for lr in ("0.01", "0.05")
    }
    assert "4 runs" in res.stdout and "summary.csv" in res.stdout


@pytest.mark.slow
def test_failed_and_diverged_jobs_are_reported_and_the_others_finish(tiny_idx, tmp_path):
    # batch_size=0 fails its check; lr=1e12 makes the loss NaN; the other job trains.
    res = run_cli("train", "-m", f"dataset.root={tiny_idx}", *FAST, "optimizer=sgd",
                  "trainer.batch_size=0,32", "optimizer.lr=0.01,1e12", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 1, res.stderr  # every job ran, but two failed: scripts must notice
    root = sweep_dir(tmp_path)
    assert (
        res.stderr.rstrip()
        .splitlines()[-1]
        .startswith(f"cnnlab: error: 2 of 4 jobs of the sweep in {root.relative_to(tmp_path)} failed (job ")
    )
    assert "Traceback" not in res.stderr
    rows = {(r["trainer.batch_size"], float(r["optimizer.lr"])): r for r in read_csv(root / "summary.csv")}
    assert rows["32", 0.01]["status"] == "ok"
    assert rows["32", 1e12]["status"] == "diverged"
    assert "diverged" in rows["32", 1e12]["error"]
    for lr in (0.01, 1e12):
        failed = rows["0", lr]
        assert failed["status"] == "failed"
        assert failed["error"] == "trainer.batch_size must be greater than 0, got 0."
        record = json.loads((root / failed["run"] / "status.json").read_text())
        assert record["error_type"] == "ConfigError" and "Traceback" in record["traceback"]
    assert read_csv(root / "summary.csv")[0]["status"] == "ok"  # finished runs first
    assert "failed: trainer.batch_size must be greater than 0" in res.stdout


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_joblib_launcher_runs_jobs_in_parallel_with_a_share_of_the_cores(tiny_idx, tmp_path):
    res = run_cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                  f"dataset.root={tiny_idx}", *FAST, "optimizer.lr=0.01,0.02", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    root = sweep_dir(tmp_path)
    assert [r["status"] for r in read_csv(root / "summary.csv")] == ["ok", "ok"]
    for job in ("0", "1"):
        state = torch.load(root / job / "checkpoints" / "best.pt", weights_only=True)
        threads = yaml.safe_load(state["config"])["trainer"]["threads"]
        assert threads == max((os.cpu_count() or 1) // 2, 1)


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_single_runs_started_together_get_their_own_dirs_and_compare(tiny_idx, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = [sys.executable, "-m", "cnnlab", "train", f"dataset.root={tiny_idx}", *FAST]
    procs = [
        subprocess.Popen(
            [*args, f"seed={seed}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    runs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 2 and all(re.fullmatch(r"\d\d-\d\d-\d\d-\d{6}", r.name) for r in runs)

    res = run_cli("runs", "outputs", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = read_csv(tmp_path / "outputs" / "summary.csv")
    assert sorted(r["run"] for r in rows) == sorted(str(r.relative_to(tmp_path / "outputs")) for r in runs)
    assert {r["seed"] for r in rows} == {"1", "2"}
    assert "seed=1" in res.stdout and "seed=2" in res.stdout  # the override that tells them apart


@pytest.mark.slow
def test_a_failed_single_run_leaves_a_record(tiny_idx, tmp_path):
    # A bad option is refused before the run folder exists; a failure once the run has started (here:
    # no data where dataset.root points) is recorded in it.
    res = run_cli("train", f"dataset.root={tiny_idx}", "trainer.batch_size=0", cwd=tmp_path)
    assert res.returncode == 2 and "trainer.batch_size must be greater than 0" in res.stderr
    assert not (tmp_path / "outputs").exists()
    res = run_cli("train", f"dataset.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (run,) = (tmp_path / "outputs").glob("*/*")
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
    res = run_cli("runs", "outputs", cwd=tmp_path)
    assert res.returncode == 0 and "failed: " in res.stdout
    with (tmp_path / "outputs" / "summary.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["status"] == "failed" and str(tmp_path / "nowhere") in row["error"]
