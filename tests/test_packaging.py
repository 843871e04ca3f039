"""A non-editable install carries the config groups: cnnlab runs from the wheel, away from the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_install_finds_its_config(tmp_path, tiny_idx):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "cnnlab" / "conf" / "model" / "lenet.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run(
        [sys.executable, "-c", "import cnnlab, sys; print(cnnlab.__file__); sys.argv[1:] = sys.argv[2:]; "
         "from cnnlab.cli import main; main()", "-", "train", f"dataset.root={tiny_idx}",
         "debug=fast", "trainer.max_epochs=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0].startswith(str(target))
    assert list((tmp_path / "outputs").glob("*/*/summary.json"))
