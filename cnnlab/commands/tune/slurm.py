"""``tune.launcher=slurm``: the study's workers as Slurm jobs, one per worker, submitted with submitit.

``tune.n_jobs`` jobs share the command's ``tune.n_trials`` (a job cannot share a counter with the others:
each gets its part). Job 0 first settles the trials an earlier command left running. Each job trains on
what Slurm gave it (``tune.slurm``: submitit's SlurmExecutor parameters, e.g. ``partition``, ``time`` in
minutes, ``cpus_per_task``, ``gpus_per_node``, ``mem``; others as ``+tune.slurm.<name>=``). The command
waits for its jobs and writes the summary; stopped while waiting, it leaves them running (they are
workers of the study like any other). Every job must reach the study (``tune.storage`` on a server or a
shared file system; the default SQLite file only where all jobs run on one machine) and ``tune.dir``;
submitit's files go to ``<tune.dir>/.slurm``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import shutil
import signal
from pathlib import Path

from omegaconf import DictConfig

from cnnlab.commands.tune.trial import Plan, settle
from cnnlab.commands.tune.workers import open_study, share, start_hydra, work
from cnnlab.engine.interrupt import Interrupted
from cnnlab.errors import CnnlabError, ConfigError

LAUNCHERS = ("local", "slurm")
JOBS_FOLDER = ".slurm"


def check(tune: DictConfig) -> None:
    """``tune.launcher`` and ``tune.slurm``, one line each, before anything is submitted."""
    if tune.launcher not in LAUNCHERS:
        raise ConfigError(f"Unknown tune.launcher '{tune.launcher}'; choose one of: {', '.join(LAUNCHERS)}.")
    if tune.launcher != "slurm":
        return
    import submitit

    valid = submitit.SlurmExecutor._valid_parameters()
    unknown = sorted(set(tune.slurm or {}) - valid)
    if unknown:
        raise ConfigError(
            f"tune.slurm.{unknown[0]} is not a Slurm job parameter; use submitit's: "
            f"{', '.join(sorted(valid))}."
        )
    if shutil.which("sbatch") is None:
        raise ConfigError("tune.launcher=slurm needs Slurm's sbatch on PATH; run on a Slurm login node.")


def shares(n_trials: int, n_jobs: int) -> list[int]:
    """``n_trials`` split over ``n_jobs`` as evenly as it goes (the first jobs take one more)."""
    return [n_trials // n_jobs + (k < n_trials % n_jobs) for k in range(n_jobs)]


def slurm_worker(plan: Plan, index: int) -> None:
    """One Slurm job: job 0 settles left-over trials, then each runs its part of the new ones."""
    start_hydra()
    if index == 0:
        settle(open_study(plan, 0), plan, share(plan, 0))
    work(plan, index, multiprocessing.get_context("spawn").Value("i", 0))


def run_slurm_workers(plan: Plan) -> None:
    import submitit

    executor = submitit.SlurmExecutor(folder=Path(plan.folder) / JOBS_FOLDER / "%j", max_num_timeout=0)
    given = {key: value for key, value in (plan.tune.get("slurm") or {}).items() if value is not None}
    executor.update_parameters(job_name="cnnlab-tune", **given)
    parts = shares(int(plan.tune["n_trials"]), plan.n_jobs)
    with executor.batch():
        jobs = [
            executor.submit(
                slurm_worker, dataclasses.replace(plan, tune={**plan.tune, "n_trials": n, "n_jobs": 1}), k
            )
            for k, n in enumerate(parts)
            if n or k == 0
        ]
    ids = " ".join(job.job_id for job in jobs)
    print(f"Slurm jobs {ids}: {', '.join(map(str, parts[: len(jobs)]))} trials each")
    try:
        for job in jobs:
            _wait(job)
    except KeyboardInterrupt:
        raise Interrupted(
            f"Stopped waiting; the Slurm jobs {ids} go on as workers of the study (scancel {ids} stops "
            f"them; continue the study with `cnnlab tune tune.dir={plan.folder}`).",
            signal.SIGINT,
        ) from None


def _wait(job) -> None:
    import submitit

    try:
        job.result()
    except submitit.core.utils.UncompletedJobError as exc:
        raise CnnlabError(f"Slurm job {job.job_id} ended without finishing ({str(exc).splitlines()[0]}); "
                          f"see {job.paths.stderr}.") from None  # fmt: skip
    except submitit.core.utils.FailedJobError as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1:]
        raise CnnlabError(
            f"Slurm job {job.job_id} failed ({' '.join(last)[:300]}); see {job.paths.stderr}."
        ) from None
