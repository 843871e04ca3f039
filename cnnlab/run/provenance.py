"""Where a run came from: overrides, git commit, package versions, seed, a fingerprint of the data."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import platform
import subprocess
from pathlib import Path

PACKAGES = ("cnnlab", "torch", "torchvision", "hydra-core", "omegaconf", "numpy")


def git_commit() -> str | None:
    """The commit of cnnlab's own source tree, when it is a git checkout."""
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607 (git from PATH, optional)
            cwd=src,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def fingerprint(files: list[Path]) -> str:
    """sha256 over the names and contents of the data files."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in files):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def provenance(*, overrides: list[str], seed: int, data_files: list[Path]) -> dict:
    return {
        "overrides": overrides,
        "git_commit": git_commit(),
        "versions": versions(),
        "seed": seed,
        "data_files": [str(p) for p in data_files],
        "data_fingerprint": fingerprint(data_files) if data_files else None,
    }
