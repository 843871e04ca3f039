"""A non-editable install carries the config groups: cnnlab runs from the wheel, away from the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# The subprocess drops the editable install's import hook (in this venv's site-packages), which would
# otherwise supply any module the wheel lacks from the repo.
FROM_THE_WHEEL_ONLY = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
    "import cnnlab; print(cnnlab.__file__); sys.argv[1:] = sys.argv[2:]; from cnnlab.cli import main; main()"
)


# without build/: setuptools would ship a stale build/lib's files along with the current ones
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", "outputs", "multirun", ".*_cache"
)


def test_wheel_install_finds_its_config(tmp_path, tiny_idx):
    source, target = tmp_path / "src", tmp_path / "site"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    assert "absent from the `packages` configuration" not in build.stderr  # a conf/ folder not listed
    configs = {p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml")}
    assert configs == {
        p.relative_to(target / "cnnlab" / "conf") for p in (target / "cnnlab" / "conf").rglob("*.yaml")
    }
    modules = {p.relative_to(REPO / "cnnlab") for p in (REPO / "cnnlab").rglob("*.py")}
    shipped = {p.relative_to(target / "cnnlab") for p in (target / "cnnlab").rglob("*.py")}
    assert modules - shipped == set()  # every module of the source tree is in the wheel
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run(
        [sys.executable, "-c", FROM_THE_WHEEL_ONLY, "-", "train", f"dataset.root={tiny_idx}",
         "debug=fast", "trainer.max_epochs=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines()[0].startswith(str(target))
    assert list((tmp_path / "outputs").glob("*/*/summary.json"))
