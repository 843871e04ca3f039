"""What the commands that open a finished run share: loading it from their options, and writing into it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from cnnlab.engine.device import configure_cpu, resolve_device
from cnnlab.errors import ConfigError
from cnnlab.run import lock
from cnnlab.run.layout import RunDir
from cnnlab.run.load import LoadedRun, load_run


def open_run(cfg) -> tuple[LoadedRun, torch.device]:
    """``load_run`` from a command's options (``run``, ``ckpt``, ``device``, ``trust_config``)."""
    if not cfg.get("run"):
        raise ConfigError("No run given; pass run=<a directory written by cnnlab train>.")
    device = resolve_device(str(cfg.get("device") or "auto"))
    if device.type == "cpu":
        configure_cpu("auto", timed=False)  # the usable CPUs (affinity, cgroup quota)
    run = load_run(cfg.run, ckpt=cfg.get("ckpt"), device=device, trust_config=bool(cfg.get("trust_config")))
    return run, device


@contextlib.contextmanager
def writing_into(run_dir: str | Path) -> Iterator[RunDir]:
    """Write into a run folder as its one writer: refused while another process (a training run, another
    command) writes it, and when a file or folder it would write is a link out of the folder."""
    folder = RunDir(run_dir)
    folder.check_no_links()
    with lock.hold(folder.path):
        yield folder
