"""Shared fixtures: tiny IDX datasets written by the tests, composed configs, the CLI in a subprocess."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from cnnlab.config import register_configs


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> None:
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: class k lights up a bright 6x6 patch at a class-specific place."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        r, c = 2 + (k // 5) * 12, 2 + (k % 5) * 5
        images[i, r : r + 6, c : c + 5] = 230
    return images, labels.astype(np.uint8)


def write_tiny_idx(root: Path, n_train: int = 400, n_test: int = 100, *, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = make_images(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte", x, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y, gz=gz)
    return root


@pytest.fixture
def tiny_idx(tmp_path) -> Path:
    return write_tiny_idx(tmp_path / "data")


def default_precision() -> list[str]:
    """``trainer.precision=<$CNNLAB_TEST_PRECISION>`` (32, bf16, ...) when set: the suite run as on another
    machine kind (``auto`` is bf16 on CPUs with native bf16, fp32 elsewhere). Tests that compare numbers
    pin their own precision after it, which wins."""
    precision = os.environ.get("CNNLAB_TEST_PRECISION")
    return [f"trainer.precision={precision}"] if precision else []


@pytest.fixture
def make_cfg(tiny_idx):
    """Compose the real config, shrunk: tiny data, CPU, no TensorBoard; clears Hydra's state after."""
    register_configs()
    GlobalHydra.instance().clear()
    initialize_config_module("cnnlab.conf", version_base="1.3")

    def _make(*overrides: str):
        # One thread: trainer.threads=auto may switch counts mid-run, which changes the last bits of a step
        # (tests of auto pass trainer.threads=auto).
        base = [f"dataset.root={tiny_idx}", "trainer.device=cpu", "trainer.tensorboard=false",
                "trainer.batch_size=32", "trainer.max_epochs=2", "trainer.progress=plain",
                "trainer.threads=1"]  # fmt: skip
        return compose("train", overrides=[*base, *default_precision(), *overrides])

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture
def trained_run(make_cfg, tmp_path) -> Path:
    """A finished 2-epoch LeNet run on the tiny IDX data (checkpoints, metrics, summary)."""
    from cnnlab.train import train

    run_dir = tmp_path / "run"
    train(make_cfg("model=lenet"), run_dir)
    return run_dir


VALUE_FLAGS = ("--cfg", "-c", "--info", "-i", "--package", "-p")  # Hydra options that take a value


def cli_args(args: tuple[str, ...]) -> list[str]:
    """A ``train`` command gets the suite's default precision before its own overrides (so they win),
    after any leading options such as ``-m`` (Hydra wants the overrides together). Not a resume: that
    replays the run's own."""
    if not args or args[0] != "train" or any(a.startswith("resume=") for a in args):
        return list(args)
    at = 1
    while at < len(args) and args[at].startswith("-"):
        at += 2 if args[at] in VALUE_FLAGS else 1
    return [*args[:at], *default_precision(), *args[at:]]


def cli_env(env: dict | None = None) -> dict:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return full_env


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *cli_args(args)],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


# Run the CLI with ``module.function`` wrapped so that a real signal reaches the process when it is called:
# "before" the call, "after" it returns, or "worker": sent to the main process from a forked worker (image
# decoding), so it arrives from outside while the main process waits.
SIGNAL_AT = """
import importlib, os, sys, time
target, signum, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
module_name, _, name = target.rpartition(".")
module = importlib.import_module(module_name)
real, main_pid = getattr(module, name), os.getpid()
def wrapped(*args, **kwargs):
    if when == "worker":
        if os.getpid() != main_pid:
            os.kill(main_pid, signum)
            time.sleep(2)
        return real(*args, **kwargs)
    if when == "before":
        os.kill(main_pid, signum)
        return real(*args, **kwargs)
    result = real(*args, **kwargs)
    os.kill(main_pid, signum)
    return result
setattr(module, name, wrapped)
from cnnlab.cli import main
main(sys.argv[4:])
"""


def run_cli_with_signal(
    target: str, signum: int, *args: str, cwd: Path, when: str = "before"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SIGNAL_AT, target, str(int(signum)), when, *cli_args(args)],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def pytest_collection_modifyitems(config, items):
    """Slow tests (real data; long ones on tiny data) run only when CNNLAB_DATA points at the datasets
    (CI sets it)."""
    if os.environ.get("CNNLAB_DATA"):
        return
    skip = pytest.mark.skip(reason="set CNNLAB_DATA to the real datasets to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
