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
