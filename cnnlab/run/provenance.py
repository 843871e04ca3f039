"""Where a run came from: overrides, git commit (and whether the tree had uncommitted changes), package
versions, the GPU and its driver and CUDA/cuDNN versions when one is used, seed, a fingerprint of the data."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import platform
import subprocess
from pathlib import Path

import torch

PACKAGES = ("cnnlab", "torch", "torchvision", "hydra-core", "omegaconf", "numpy")


def _output(*command: str, cwd: Path | None = None) -> str | None:
    """What ``command`` prints; None when it cannot run or fails (git and nvidia-smi are optional)."""
    try:
        out = subprocess.run(  # noqa: S603 (fixed commands, no user input)
            list(command), cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git(*args: str) -> str | None:
    """``git <args>`` in cnnlab's own source tree; None when that is not a git checkout (or no git)."""
    return _output("git", *args, cwd=Path(__file__).resolve().parent)


def git_commit() -> str | None:
    """The commit of cnnlab's own source tree, when it is a git checkout."""
    return (_git("rev-parse", "HEAD") or "").strip() or None


def git_dirty() -> bool | None:
    """Whether tracked files differ from that commit (staged or not); None outside a git checkout.
    Untracked files do not count: run folders and data often sit untracked inside a checkout."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status.strip())


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


def nvidia_driver() -> str | None:
    """The NVIDIA driver version as nvidia-smi reports it (torch knows only the CUDA driver API's)."""
    lines = (_output("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader") or "").split()
    return lines[0] if lines else None


def gpu_info(device: torch.device | None) -> dict | None:
    """The GPU a run uses: model, compute capability, memory, driver, CUDA and cuDNN versions; None on
    other devices."""
    if device is None or device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gb": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
        "driver": nvidia_driver(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
    }


def cpu_info(threads: dict | None) -> dict:
    """The CPU a run used: its model name and the flags that decide bf16 speed, and the threads."""
    model, flags = None, set()
    try:
        with Path("/proc/cpuinfo").open() as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
                    break
    except OSError:
        pass
    info = {"model": model or platform.processor() or None, "flags": sorted(flags)}
    if threads is not None:
        info.update(threads)
    return info


def provenance(
    *, overrides: list[str], seed: int, data_files: list[Path], device=None, precision: str | None = None,
    threads: dict | None = None,
) -> dict:  # fmt: skip
    """The record; ``device``, ``precision`` and ``threads`` are what the run resolved its ``auto`` (or
    null) settings to, which the config alone does not say (``threads`` is the count at the start;
    summary.json has the counts ``trainer.threads=auto`` chose during the run, and why). ``threads``
    (the argument): on a CPU, trainer.threads and the CPUs this process may use."""
    return {
        "overrides": overrides,
        "device": None if device is None else str(device),
        "precision": precision,
        "threads": torch.get_num_threads() if device is not None and device.type == "cpu" else None,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "versions": versions(),
        "gpu": gpu_info(device),
        "cpu": cpu_info(threads),
        "seed": seed,
        "data_files": [str(p) for p in data_files],
        "data_fingerprint": fingerprint(data_files) if data_files else None,
    }
