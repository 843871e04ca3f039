"""The speed scripts' own logic: the bare reference trains and scores, and it gets the preset's recipe."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from cnnlab.config import register_configs
from tests.conftest import write_tiny_idx

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bare_reference_learns_the_tiny_data_and_prints_one_line(tmp_path):
    write_tiny_idx(tmp_path / "mnist")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bare_reference.py"), "--epochs", "4", "--batch-size", "32",
         "--channels", "8,16", "--threads", "1"],
        capture_output=True, text=True, env={**os.environ, "CNNLAB_DATA": str(tmp_path)}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fields = dict(item.split("=") for item in proc.stdout.split())
    assert set(fields) == {"test_acc", "seconds", "setup_s", "train_s", "test_s"}
    assert float(fields["test_acc"]) >= 0.9 and float(fields["seconds"]) > 0
    assert 0 < float(fields["train_s"]) < float(fields["seconds"])


@pytest.fixture
def composed():
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("cnnlab.conf", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_time_to_accuracy_gives_the_bare_script_the_presets_recipe(composed):
    tta = load_script("time_to_accuracy")
    args = tta.bare_arguments("fast_fashion_mnist")
    recipe = dict(zip(args[::2], args[1::2], strict=True))
    assert recipe == {
        "--dataset": "fashion_mnist", "--epochs": "3", "--channels": "16,32,64", "--lr": "0.008",
        "--batch-size": "128", "--label-smoothing": "0.1", "--threads": "0",
        "--precision": recipe["--precision"],
    }  # fmt: skip
    assert recipe["--precision"] in ("32", "bf16")  # what trainer.precision=auto resolves to here
    assert dict(zip(*[iter(tta.bare_arguments("fast_mnist"))] * 2, strict=True))["--epochs"] == "1"


def test_time_to_accuracy_refuses_a_preset_the_bare_script_cannot_run(composed):
    with pytest.raises(SystemExit, match="fast_cifar10: the bare reference covers simplecnn on MNIST"):
        load_script("time_to_accuracy").bare_arguments("fast_cifar10")


@pytest.mark.slow  # three short CLI runs and three step loops on real MNIST and CIFAR-10: about a minute
def test_gpu_check_smoke_mode_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_check.py"), "--device", "cpu", "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    assert table.startswith("GPU check on **CPU") and "| run | device | test acc | train s |" in table
    for name in ("`fast_mnist` seed 42", "`fast_cifar10_gpu` seed 42", "`cifar10_resnet18` seed 42"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name}"))
        assert 0 <= float(row.split(" | ")[2]) <= 1  # a test accuracy
    assert table.count("step loop") == 3  # cnnlab against the bare loop, one per network


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_step_overhead_counts_operators_per_phase_on_the_tiny_data(tiny_idx):
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "step_overhead.py"), "--steps", "3", "--rounds", "1",
         "--count-steps", "4", f"dataset.root={tiny_idx}", "trainer.batch_size=32"],  # TensorBoard on
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    for phase in ("data", "forward", "backward", "optimizer", "bookkeeping"):
        assert len(rows[phase]) == 3 and all(float(c) >= 0 for c in rows[phase])
    assert float(rows["optimizer"][0]) < float(rows["optimizer"][1])  # fused Adam against torch's loop
    assert proc.stdout.count("cnnlab / bare = ") >= 3  # by the clock, by CPU time, operators


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_run_overhead_times_the_parts_of_a_run(tiny_idx):
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "run_overhead.py"), "--repeats", "1", f"dataset.root={tiny_idx}",
         "trainer.batch_size=32", "trainer.eval_batch_size=50"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in ("read the data", "build the optimizer", "test pass", "checkpoints", "outside the epochs"):
        assert part in proc.stdout, part


def test_fault_drill_reports_a_skipped_case_as_skipped_not_held(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # fault_drill imports its kit as top-level modules
    drill = load_script("fault_drill")
    kit = sys.modules["drill_kit"]
    chosen = [(1, "held", None), (2, "as-root", None), (3, "broken", None)]
    results = [
        kit.Result(2, "cnnlab: error: x", "-", True),
        kit.Result(0, "running as root", "-", False, skipped=True),
        kit.Result(1, "Traceback", "-", False),
    ]
    rows = drill.report(chosen, results, 1.0).splitlines()
    verdicts = [row.split()[3] for row in rows[1:4]]  # number, name, exit code, verdict, message...
    assert verdicts == ["yes", "skipped", "NO"], rows
    assert rows[-1] == "1 of 2 hold, 1 skipped (1 s)"
