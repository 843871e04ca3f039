"""Every broken or unreadable input of the data layer ends in one line naming the file and what to do."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from cnnlab.data.registry import read_splits
from cnnlab.data.verify import verify
from cnnlab.errors import DataError
from tests.test_data_folders import write_food11

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def deny(monkeypatch, blocked: pathlib.Path) -> None:
    """Make listing ``blocked`` fail as a folder without read permission does (root ignores chmod)."""
    real_iterdir, real_scandir = pathlib.Path.iterdir, os.scandir

    def iterdir(self):
        if self == blocked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    def scandir(path="."):
        if pathlib.Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(pathlib.Path, "iterdir", iterdir)
    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_folder_is_a_data_error_naming_it(tmp_path, make_cfg, monkeypatch):
    root = tmp_path / "food"
    write_food11(root)
    deny(monkeypatch, root / "train")
    cfg = make_cfg("dataset=food11", f"dataset.root={root}", "dataset.num_workers=0", "dataset.cache=false")
    with pytest.raises(
        DataError, match=r"cannot read .*train \(Permission denied\); make the dataset readable"
    ):
        read_splits(cfg.dataset)


def test_verify_lists_an_unreadable_folder(tmp_path, make_cfg, monkeypatch):
    root = tmp_path / "food"
    write_food11(root)
    deny(monkeypatch, root / "valid")
    cfg = make_cfg("dataset=food11", f"dataset.root={root}", "dataset.num_workers=0")
    checked = verify(cfg.dataset)
    assert f"{root / 'valid'}: cannot read this folder (Permission denied)" in checked.problems


def without_root_powers() -> list[str] | None:
    """A command prefix under which permissions apply: none needed for a normal user; for root,
    util-linux's setpriv dropping the capabilities that bypass them (None when unavailable)."""
    if not IS_ROOT:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"] if setpriv else None


@pytest.mark.skipif(without_root_powers() is None, reason="root without setpriv reads any folder")
def test_cli_unreadable_data_folder(tmp_path):
    root = tmp_path / "food"
    write_food11(root)
    (root / "train").chmod(0)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = [
        "train",
        "dataset=food11",
        f"dataset.root={root}",
        "trainer.device=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    try:
        proc = subprocess.run(
            [*without_root_powers(), sys.executable, "-m", "cnnlab", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        (root / "train").chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        f"cannot read {root / 'train'} (Permission denied)" in proc.stderr and "disk space" not in proc.stderr
    )
