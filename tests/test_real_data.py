"""Real-data tests: run only when CNNLAB_DATA points at the datasets (CI sets it)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_lenet_fashion_mnist_reaches_85_percent_in_2_epochs(tmp_path):
    res = run_cli("train", "trainer.max_epochs=2", "trainer.tensorboard=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (run,) = list((tmp_path / "outputs").glob("*/*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_acc"] >= 0.85, summary


@pytest.mark.slow
def test_cifar10_simplecnn_preset_reaches_60_percent_in_3_epochs_then_predicts(tmp_path):
    """The classic CIFAR-10 recipe on the JPEG copy; then a submission from the same run."""
    res = run_cli("train", "+experiment=cifar10_simplecnn", "trainer.max_epochs=3", "hydra.run.dir=run",
                  "trainer.tensorboard=false", "trainer.progress=plain", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_acc"] >= 0.60, summary
    assert (tmp_path / "run" / "report" / "confusion_matrix.png").is_file()
    res = run_cli("predict", "run=run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = (tmp_path / "run" / "submission.csv").read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 10_001
    assert lines[1].split(",")[1] in {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                      "horse", "ship", "truck"}  # fmt: skip
