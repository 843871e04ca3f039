"""Start-up: commands that only print answer without importing torch (checked in a fresh process)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from cnnlab.cli import main
sys.argv = ["cnnlab", *{args!r}]
try:
    main()
except SystemExit:
    pass
print("HEAVY", sorted(m for m in ("torch", "torchvision", "matplotlib", "optuna") if m in sys.modules))
"""


def loaded_by(*args: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args))], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    return done.stdout, done.stderr


def test_train_help_does_not_import_torch():
    out, err = loaded_by("train", "--help")
    assert "config groups" in out and "model: " in out and "lenet" in out, err
    assert "HEAVY []" in out


def test_top_level_help_and_version_do_not_import_torch():
    for args in (["--help"], ["--version"]):
        out, err = loaded_by(*args)
        assert "HEAVY []" in out, err


def test_an_override_hydra_refuses_is_answered_without_torch(tmp_path):
    out, err = loaded_by("train", "model=lenett", f"hydra.run.dir={tmp_path / 'run'}")
    assert "Unknown model 'lenett'" in err and "Did you mean 'lenet'?" in err
    assert "HEAVY []" in out and not (tmp_path / "run").exists()
