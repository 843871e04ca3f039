"""This process's rank as the launcher's environment names it (``torchrun``'s ``RANK`` and
``WORLD_SIZE``, submitit's variables): read before anything imports torch, so that a command that
refuses its arguments answers at once. :mod:`cnnlab.engine.distributed` joins the process group."""

from __future__ import annotations

import os

from cnnlab.errors import ConfigError


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files."""
    return env_rank() == 0


def hydra_overrides(args: list[str]) -> list[str]:
    """``cnnlab train`` arguments for this rank: the Hydra+DDP duplicate-directory trap avoided.

    Hydra names the run directory by the time each process starts, so ranks would make one
    directory each. Ranks other than 0 run in ``.`` and write no ``.hydra/``; the trainer then
    broadcasts rank 0's directory. Sweeps (``-m``) inside torchrun are refused: launch a sweep whose
    jobs are multi-process instead (``hydra/launcher=slurm`` with ``tasks_per_node``).
    """
    if env_world_size() <= 1:
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError(
            "A sweep cannot run inside torchrun (each process would run every job); run the sweep "
            "with hydra/launcher=slurm and hydra.launcher.tasks_per_node=<GPUs> instead."
        )
    if is_main_process():
        return args
    return [*args, "hydra.run.dir=.", "hydra.output_subdir=null"]


def in_submitit() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))
