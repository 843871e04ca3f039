"""Running a study's trials with ``tune.n_jobs`` workers: the loop in this process for one, spawned
processes for more (threads would share torch's thread count, the global RNGs and the logging setup).

A spawned worker dies with the command: Linux sends it SIGTERM when its parent dies (``PR_SET_PDEATHSIG``;
elsewhere it checks its parent between trials), and it shares the study folder's lock through a copy of
the parent's descriptor, so the folder stays locked while any worker still writes it.

Every worker asks the shared study for its next trial until the command's ``tune.n_trials`` are taken
(a counter shared by the workers) or ``tune.timeout`` has passed. Worker k trains on ``cpus // n_jobs``
threads (of the CPUs it may use) unless ``trainer.threads`` is a number, and with several GPUs on GPU
k mod count.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.reduction
import os
import signal
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cnnlab.commands.train import job_resources
from cnnlab.commands.tune.space import parse_space
from cnnlab.commands.tune.study import load, make_pruner, make_sampler
from cnnlab.commands.tune.trial import Plan, ask, run_trial, settle
from cnnlab.engine.interrupt import Interrupted
from cnnlab.engine.threads import cpu_share
from cnnlab.errors import CnnlabError
from cnnlab.run import lock

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def open_study(plan: Plan, index: int):
    """The study as worker ``index`` sees it. Its sampler's seed is tune.seed + the trials the study had
    when the command started + 1000 * index: parallel workers and continued studies never draw the same
    stream of values."""
    tune = OmegaConf.create(plan.tune)
    sampler = make_sampler(tune, tune.seed + plan.first_trial + 1000 * index)
    return load(plan.study_dir, sampler=sampler, pruner=make_pruner(tune, plan.max_epochs))


def share(plan: Plan, index: int) -> tuple[str, int | None]:
    """Worker ``index``'s device and CPU threads."""
    return job_resources(n_jobs=plan.n_jobs, job_num=index, device=plan.device, threads=plan.threads,
                         cpu_count=cpu_share().usable, gpu_count=torch.cuda.device_count())  # fmt: skip


def work(plan: Plan, index: int, slots, parent: int | None = None) -> None:
    """Worker ``index``: new trials until the slots run out, the deadline passes or (``parent``: the pid
    of the command that spawned it) that command is gone."""
    study, space, resources = open_study(plan, index), parse_space(plan.tune["params"]), share(plan, index)
    while (
        (parent is None or os.getppid() == parent)
        and take(slots, plan.tune["n_trials"])
        and (plan.deadline is None or time.time() < plan.deadline)
    ):
        trial, sampled = ask(study, space)
        run_trial(study, trial, plan, sampled=sampled, resources=resources)


def take(slots, limit: int) -> bool:
    """Claim one of the command's ``limit`` trials; False when all are taken."""
    with slots.get_lock():
        if slots.value >= limit:
            return False
        slots.value += 1
        return True


def start_hydra() -> None:
    """A worker in a new process (spawned, or a Slurm job) composes trials with cnnlab's config."""
    from hydra import initialize_config_module

    from cnnlab.config import register_configs

    register_configs()
    initialize_config_module("cnnlab.conf", version_base="1.3")


def die_with_parent(parent: int) -> None:
    """SIGTERM to this process when ``parent`` dies (Linux); at once if it already has (it died before
    the request was made, and this process was handed to another)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            print(f"cnnlab: worker: prctl failed ({os.strerror(ctypes.get_errno())})", file=sys.stderr)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class LockCopy:
    """The study lock's descriptor, duplicated into a spawned worker when the worker is started (the
    ``spawn`` start method passes only the descriptors that pickling asks for)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _detach, (multiprocessing.reduction.DupFd(self.fd),)


def _detach(dup) -> int:
    return dup.detach()


def spawned(plan: Plan, index: int, slots, parent: int, lock_fd: int | None) -> None:
    """A spawned worker: compose with cnnlab's config, work, and exit with the code the CLI would."""
    die_with_parent(parent)
    start_hydra()
    held = lock.inherited(Path(plan.folder), lock_fd) if lock_fd is not None else contextlib.nullcontext()
    try:
        with held:
            work(plan, index, slots, parent)
    except CnnlabError as exc:  # Interrupted too: its checkpoint is saved
        print(f"cnnlab: worker {index}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(plan: Plan) -> None:
    """The trials an earlier command left running, then the command's new trials with ``plan.n_jobs``
    workers; a signal stops them all and is raised as :class:`Interrupted` once each has saved its trial.
    With ``tune.launcher=slurm`` the workers are Slurm jobs (:mod:`.slurm`)."""
    if plan.tune["launcher"] == "slurm":
        from cnnlab.commands.tune.slurm import run_slurm_workers

        run_slurm_workers(plan)
        return
    settle(open_study(plan, 0), plan, share(plan, 0))  # before any worker asks for a new trial
    context = multiprocessing.get_context("spawn")
    slots = context.Value("i", 0)
    if plan.n_jobs == 1:
        work(plan, 0, slots)
        return
    fd = lock.descriptor(Path(plan.folder))
    args = (slots, os.getpid(), None if fd is None else LockCopy(fd))
    procs = [
        context.Process(target=spawned, args=(plan, k, *args), name=f"cnnlab-tune-{k}")
        for k in range(plan.n_jobs)
    ]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: let them checkpoint their trials
        for proc in procs:
            proc.join()
    stopped = [p.exitcode for p in procs if p.exitcode and p.exitcode > 128]
    if stopped:
        signum = stopped[0] - 128
        raise Interrupted(
            f"Stopped by {signal.Signals(signum).name}; the running trials saved their state: continue the "
            f"study with `cnnlab tune tune.dir={plan.folder}`.",
            signum,
        )
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise CnnlabError(f"{len(failed)} of {len(procs)} tune workers failed (see their lines above).")
