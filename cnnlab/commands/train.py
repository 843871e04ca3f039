"""One train job under Hydra (a single run or one job of a sweep) and the end-of-sweep table.

Every job leaves a record in its own directory, whatever happens: ``summary.json`` when it finishes,
``status.json`` (status, one-line error, traceback) when it fails, diverges or is interrupted. In a
sweep a failed job returns ``None`` instead of raising: the Optuna sweeper records a trial that returns
no number as failed and goes on (with ``max_failure_rate: 1.0``), and the basic sweeper, which would
stop the whole sweep on the first exception, runs every job.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from cnnlab.errors import CnnlabError

log = logging.getLogger("cnnlab")


def job_resources(
    *, n_jobs: int | None, job_num: int, device: str, threads: int | None, cpu_count: int, gpu_count: int
) -> tuple[str, int | None]:
    """The device and CPU thread count for one of ``n_jobs`` jobs running at once on this machine.

    Each job gets a fair share of the cores (``cpu_count // n_jobs``) unless trainer.threads is set,
    so parallel jobs do not oversubscribe the CPU. With several GPUs, job k takes GPU k mod count:
    jobs started together have consecutive numbers, so with n_jobs <= GPUs each has its own.
    """
    if not n_jobs or n_jobs == 1:
        return device, threads
    if n_jobs < 0:  # joblib's convention: -1 is one job per core, -2 all cores but one, ...
        n_jobs = max(cpu_count + 1 + n_jobs, 1)
    if threads is None:
        threads = max(cpu_count // n_jobs, 1)
    if device in ("auto", "cuda") and gpu_count > 1:
        device = f"cuda:{job_num % gpu_count}"
    return device, threads


def error_line(exc: BaseException) -> str:
    """A user error's own sentence; anything else prefixed by its type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, CnnlabError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def record_failure(run_dir: Path, exc: BaseException, *, seconds: float) -> dict:
    from cnnlab.engine.interrupt import Interrupted
    from cnnlab.engine.loop import DivergedError
    from cnnlab.io import write_json

    status = (
        "diverged" if isinstance(exc, DivergedError)
        else "interrupted" if isinstance(exc, KeyboardInterrupt | Interrupted)
        else "failed"
    )  # fmt: skip
    record = {
        "status": status,
        "error": error_line(exc),
        "error_type": type(exc).__name__,
        "seconds": seconds,
        "traceback": "".join(traceback.format_exception(exc)),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "status.json", record)
    return record


def train_job(cfg: DictConfig) -> float | None:
    """Train in Hydra's output directory; return the monitored metric for a sweeper (None: failed).

    Under submitit (``hydra/launcher=slurm``) a job with several tasks trains data-parallel, a
    requeued job resumes from its own ``last.pt``, and SIGUSR2 (time limit or preemption) checkpoints
    and then hands over to submitit, which requeues the job.
    """
    import torch

    from cnnlab.engine import distributed
    from cnnlab.runlog import setup_logging, use_rich
    from cnnlab.train import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    distributed.export_submitit_env()
    requeue = distributed.requeue_handler()
    if distributed.resumable_here(run_dir):
        cfg.resume = str(run_dir)
    if sweep:
        cfg.trainer.device, cfg.trainer.threads = job_resources(
            n_jobs=hc.launcher.get("n_jobs"),
            job_num=hc.job.num,
            device=str(cfg.trainer.device),
            threads=cfg.trainer.threads,
            cpu_count=os.cpu_count() or 1,
            gpu_count=torch.cuda.device_count(),
        )
    started = time.perf_counter()
    try:
        summary = train(cfg, run_dir, overrides=list(hc.overrides.task))
    except BaseException as exc:
        if requeue is not None and getattr(exc, "exit_code", None) == 128 + getattr(signal, "SIGUSR2", 0):
            requeue(signal.SIGUSR2, None)  # submitit requeues (rank 0) and exits; last.pt is saved
        if not distributed.is_main_process():  # rank 0 records and reports
            if sweep and isinstance(exc, Exception):
                return None
            raise
        record = record_failure(run_dir, exc, seconds=time.perf_counter() - started)
        if not sweep or record["status"] == "interrupted" or not isinstance(exc, Exception):
            raise  # a signal stops the whole sweep; the job's last.pt can be resumed
        # train() may have failed before pointing the log at this job: do it now, so the line below
        # lands in this job's train.log and not in the previous job's.
        setup_logging(run_dir, rich=use_rich(str(cfg.trainer.progress)))
        log.error("job %d %s: %s", hc.job.num, record["status"], record["error"])
        return None
    else:
        distributed.teardown(together=True)  # every rank finished: leave together
    finally:
        distributed.teardown()  # after a failure (a no-op after the one above)
    return summary["best_value"]


class SweepFailed(CnnlabError):
    """Some jobs of a sweep failed (the others ran); the command exits 1 so scripts notice."""

    exit_code = 1


_failures: list[str] = []  # set at the end of a sweep, read by the CLI (Hydra swallows callback errors)


def take_sweep_failure() -> SweepFailed | None:
    """The error for the sweep that just ended if a job of it failed, once."""
    failure = SweepFailed(_failures[-1]) if _failures else None
    _failures.clear()
    return failure


class SweepSummary(Callback):
    """At the end of a sweep: print the table of its jobs and write ``<sweep dir>/summary.csv``.

    If a job failed with an error, leave a message for :func:`take_sweep_failure`: the CLI then exits
    1. A diverged job is a result of its hyperparameters (a learning rate too high for a search to
    explore), so it does not fail the sweep.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from cnnlab.commands.runs import report

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = report(sweep_dir) if sweep_dir.is_dir() else []
        if rows:
            print(f"wrote {sweep_dir / 'summary.csv'}")
        failed = [row for row in rows if row["status"] == "failed"]
        if failed:
            _failures.append(
                f"{len(failed)} of {len(rows)} jobs of the sweep in {sweep_dir} failed "
                f"(job {failed[0]['run']}: {failed[0]['error']}); "
                "see each one's status.json, fix the cause and run those again."
            )
