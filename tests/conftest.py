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


@pytest.fixture
def make_cfg(tiny_idx):
    """Compose the real config, shrunk: tiny data, CPU, no TensorBoard; clears Hydra's state after."""
    register_configs()
    GlobalHydra.instance().clear()
    initialize_config_module("cnnlab.conf", version_base="1.3")

    def _make(*overrides: str):
        base = [f"dataset.root={tiny_idx}", "trainer.device=cpu", "trainer.tensorboard=false",
                "trainer.batch_size=32", "trainer.max_epochs=2", "trainer.progress=plain"]  # fmt: skip
        return compose("train", overrides=[*base, *overrides])

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture
def trained_run(make_cfg, tmp_path) -> Path:
    """A finished 2-epoch LeNet run on the tiny IDX data (checkpoints, metrics, summary)."""
    from cnnlab.train import train

    run_dir = tmp_path / "run"
    train(make_cfg("model=lenet"), run_dir)
    return run_dir


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def pytest_collection_modifyitems(config, items):
    """Real-data tests run only when CNNLAB_DATA points at the datasets (CI sets it)."""
    if os.environ.get("CNNLAB_DATA"):
        return
    skip = pytest.mark.skip(reason="set CNNLAB_DATA to the real datasets to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
