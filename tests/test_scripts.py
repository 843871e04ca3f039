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
    assert set(fields) == {"test_acc", "seconds"}
    assert float(fields["test_acc"]) >= 0.9 and float(fields["seconds"]) > 0


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
    }  # fmt: skip
    assert dict(zip(*[iter(tta.bare_arguments("fast_mnist"))] * 2, strict=True))["--epochs"] == "1"


def test_time_to_accuracy_refuses_a_preset_the_bare_script_cannot_run(composed):
    with pytest.raises(SystemExit, match="fast_cifar10: the bare reference covers simplecnn on MNIST"):
        load_script("time_to_accuracy").bare_arguments("fast_cifar10")
