"""Data-parallel training over several processes (``torchrun``, or a SLURM job with several tasks).

One process per device. The environment names each process's rank: ``torchrun`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; in a submitit job with several
tasks :func:`export_submitit_env` sets them from SLURM's variables. :func:`setup` joins the process
group (``trainer.backend=auto``: nccl on CUDA, gloo on CPU) and returns a :class:`Dist`, the handle
the trainer uses for everything that crosses processes: summing metrics, broadcasting the run
directory, agreeing to stop. A single process gets a ``Dist`` whose operations do nothing.

Semantics: ``trainer.batch_size`` is the global batch. Every rank walks the same seeded permutation
and takes its contiguous slice of each global batch (:meth:`TensorLoader.shard`), and each rank's
loss is weighted by its share of the batch, so N processes compute the gradient of the same batches
as one process would. Only rank 0 writes files; every rank holds the whole in-memory dataset.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as td
from torch import nn

from cnnlab.engine.device import resolve_device
from cnnlab.engine.ranks import env_rank, env_world_size, in_submitit
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "nccl", "gloo")


@dataclass
class Dist:
    """This process's place in the group; every method is a no-op for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def totals(self, *values) -> list[float]:
        """Sums over all ranks of per-rank counts (tensors or numbers), as floats: one all-reduce."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values])
        td.all_reduce(t)
        return t.tolist()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all ranks (in place; one all-reduce)."""
        if self.enabled:
            td.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says so (e.g. a signal reached only some of them)."""
        return bool(self.totals(flag)[0]) if self.enabled else flag

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (the run directory, which differs per rank under Hydra)."""
        if not self.enabled:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (plain values, lists, dicts and CPU tensors), in rank order, on every
        rank (``[obj]`` for one process). Tensors travel as NumPy arrays: gloo's object gather fails to
        unpickle tensor storages."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        td.all_gather_object(out, _convert(obj, torch.Tensor, lambda t: t.detach().cpu().numpy()))
        return [_convert(o, np.ndarray, torch.from_numpy) for o in out]

    def barrier(self) -> None:
        if self.enabled:
            td.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)


def _convert(obj, kind, fn):
    if isinstance(obj, kind):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _convert(v, kind, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_convert(v, kind, fn) for v in obj)
    return obj


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ConfigError(f"Unknown trainer.backend '{name}'; choose one of: {', '.join(BACKENDS)}.")


def resolve_backend(name: str, device: torch.device) -> str:
    check_backend(name)
    if name == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise ConfigError("trainer.backend=nccl needs CUDA devices; use gloo (or auto) on CPU.")
    return name


def setup(trainer_cfg) -> Dist:
    """Join the process group the environment describes (idempotent); a single process needs nothing.

    Each process takes the CUDA device of its local rank (modulo the devices it can see, so a
    task restricted to one GPU by CUDA_VISIBLE_DEVICES uses it).
    """
    world = env_world_size()
    device = resolve_device(str(trainer_cfg.device))
    if world <= 1:
        return Dist(device=device)
    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"Distributed training runs on CUDA or CPU, not {device.type}; set trainer.device.")
    if trainer_cfg.batch_size < world:
        raise ConfigError(
            f"trainer.batch_size={trainer_cfg.batch_size} is the global batch and must be at least the "
            f"number of processes ({world})."
        )
    if trainer_cfg.sync_batchnorm and device.type != "cuda":
        raise ConfigError("trainer.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm is GPU-only).")
    backend = resolve_backend(str(trainer_cfg.backend), device)
    if not td.is_initialized():
        td.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown(*, together: bool = False) -> None:
    """Leave the process group, after the objects that use it are gone; with ``together`` (a run that
    finished on every rank) also wait for all ranks first.

    Rank 0 writes the summary and report after the others have finished; a rank that destroyed its
    group and exited meanwhile, with a DistributedDataParallel reducer (freed only by the garbage
    collector) still holding the group, was seen to abort at interpreter exit (SIGABRT, "terminate
    called without an active exception"), failing the torchrun command. After a failure there is no
    barrier: a rank may be stuck in a collective the failed one will never join.
    """
    if td.is_available() and td.is_initialized():
        gc.collect()
        if together:
            td.barrier()
        td.destroy_process_group()


def prepare(model: nn.Module, dist: Dist, *, sync_batchnorm: bool) -> nn.Module:
    """BatchNorm layers -> SyncBatchNorm when asked (before the optimizer sees the parameters)."""
    if dist.enabled and sync_batchnorm:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap(model: nn.Module, dist: Dist) -> nn.Module:
    """The module to train: DistributedDataParallel (gradient all-reduce) or ``model`` itself.

    The trainer keeps ``model`` for checkpoints, EMA and evaluation; both share the parameters.
    """
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def worker_logging(rank: int) -> None:
    """Ranks other than 0 print warnings and errors only, prefixed with their rank; no train.log."""
    root = logging.getLogger()
    if any(getattr(h, "_cnnlab", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
    handler._cnnlab = True
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def export_submitit_env() -> None:
    """In a submitit job with several tasks, set torch's rendezvous variables from SLURM's."""
    if not in_submitit() or "RANK" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def requeue_handler():
    """Submitit's handler for its preemption/timeout signal (SIGUSR2), captured before training.

    The trainer catches SIGUSR2 itself to checkpoint mid-epoch; calling this handler afterwards lets
    submitit requeue the job, which then resumes from ``last.pt`` (``cnnlab.commands.train``).
    """
    if not in_submitit() or not hasattr(signal, "SIGUSR2"):
        return None
    handler = signal.getsignal(signal.SIGUSR2)
    return handler if callable(handler) else None
