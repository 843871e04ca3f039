"""One train job under Hydra (a single run or one job of a sweep) and the end-of-sweep table.

Every job leaves a record in its own directory, whatever happens: ``summary.json`` when it finishes,
``status.json`` (status, one-line error, traceback) when it fails, diverges or is interrupted. In a
sweep a failed job returns ``None`` instead of raising: the Optuna sweeper records a trial that returns
no number as failed and goes on (with ``max_failure_rate: 1.0``), and the basic sweeper, which would
stop the whole sweep on the first exception, runs every job.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.config import hydra_prints, override_quoted, register_configs
from cnnlab.engine import ranks
from cnnlab.engine.threads import check_threads, cpu_share
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.run import lock
from cnnlab.run.layout import SWEEP_SUMMARY, RunDir
from cnnlab.run.log import setup_logging, use_rich
from cnnlab.run.resume import check_resumable, resume_arguments
from cnnlab.run.trust import check_config
from cnnlab.run.workspace import check_fresh, claim

# torch and the trainer load when a job runs or a composed config is checked, not on import: an
# override Hydra refuses is answered without them (cnnlab.cli imports this module to prepare a run).

log = logging.getLogger("cnnlab")


def job_resources(
    *, n_jobs: int | None, job_num: int, device: str, threads, cpu_count: int, gpu_count: int
) -> tuple[str, int | str | None]:
    """The device and CPU thread count for one of ``n_jobs`` jobs running at once on this machine.

    Each job gets a fair share of the CPUs it may use (``cpu_count // n_jobs``) unless trainer.threads
    is a number, so parallel jobs do not oversubscribe the CPU (and do not time each other's load).
    With several GPUs, job k takes GPU k mod count:
    jobs started together have consecutive numbers, so with n_jobs <= GPUs each has its own.
    """
    if not n_jobs or n_jobs == 1:
        return device, threads
    if n_jobs < 0:  # joblib's convention: -1 is one job per core, -2 all cores but one, ...
        n_jobs = max(cpu_count + 1 + n_jobs, 1)
    if check_threads(threads) is None:
        threads = max(cpu_count // n_jobs, 1)
    if device in ("auto", "cuda") and gpu_count > 1:
        device = f"cuda:{job_num % gpu_count}"
    return device, threads


def error_line(exc: BaseException) -> str:
    """A user error's own sentence; anything else prefixed by its type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, CnnlabError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def record_failure(run_dir: Path, exc: BaseException, *, seconds: float) -> dict:
    from cnnlab.run.metrics import failure_status

    record = {
        "status": failure_status(exc),
        "error": error_line(exc),
        "error_type": type(exc).__name__,
        "seconds": seconds,
        "traceback": "".join(traceback.format_exception(exc)),
    }
    if getattr(exc, "stage", None):  # a signal: "loading data", "building", "training", "testing", "report"
        record["stage"] = exc.stage
    folder = RunDir(run_dir)
    folder.write_status(record)
    _summary_agrees(folder, record)
    return record


def _summary_agrees(folder: RunDir, record: dict) -> None:
    """A failure after summary.json was written (in the end-of-run report): the summary keeps its numbers
    but says what status.json says, so the two files never disagree about how the run ended."""
    try:
        summary = folder.read_summary()
    except CnnlabError:  # a broken summary.json is shown as broken anyway
        return
    if summary is not None and summary.get("status") == "finished":
        folder.write_summary({**summary, "status": record["status"], "error": record["error"],
                              "stage": record.get("stage", "report")})  # fmt: skip


def train_job(cfg: DictConfig) -> float | None:
    """Train in Hydra's output directory; return the monitored metric for a sweeper (None: failed).

    The job claims its folder first (one writer, no links, no earlier run there); a failure after that
    is recorded in the folder's status.json. Under submitit (``hydra/launcher=slurm``) a job with several
    tasks trains data-parallel, a requeued job resumes from its own ``last.pt``, and SIGUSR2 (time limit
    or preemption) checkpoints and then hands over to submitit, which requeues the job.
    """
    import torch

    from cnnlab.engine import distributed
    from cnnlab.train import train

    hc = HydraConfig.get()
    folder = RunDir(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    config_yaml = OmegaConf.to_yaml(cfg)  # as composed, before this job sets its share of the machine
    distributed.export_submitit_env()
    requeue = distributed.requeue_handler()
    if (sweep or ranks.in_submitit()) and folder.is_unfinished():
        cfg.resume = str(folder)  # a requeued job, or a sweep run again: the job's own earlier attempt
    if sweep:
        cfg.trainer.device, cfg.trainer.threads = job_resources(
            n_jobs=hc.launcher.get("n_jobs"),
            job_num=hc.job.num,
            device=str(cfg.trainer.device),
            threads=cfg.trainer.threads,
            cpu_count=cpu_share().usable,
            gpu_count=torch.cuda.device_count(),
        )
    main = ranks.is_main_process()
    with claim(folder, resume=bool(cfg.resume), writer=main):
        if (
            main and not cfg.resume
        ):  # Hydra writes nothing (hydra.output_subdir=null): cnnlab does, once claimed
            folder.write_hydra(config_yaml, list(hc.overrides.task), OmegaConf.to_yaml({"hydra": hc}))
        started = time.perf_counter()
        try:
            summary = train(cfg, folder.path, overrides=list(hc.overrides.task))
        except BaseException as exc:
            if requeue is not None and getattr(exc, "exit_code", None) == 128 + getattr(signal, "SIGUSR2", 0):
                requeue(signal.SIGUSR2, None)  # submitit requeues (rank 0) and exits; last.pt is saved
            if not main:  # rank 0 records and reports
                if sweep and isinstance(exc, Exception):
                    return None
                raise
            record = record_failure(folder.path, exc, seconds=time.perf_counter() - started)
            if not sweep or record["status"] == "interrupted" or not isinstance(exc, Exception):
                raise  # a signal stops the whole sweep; the job's last.pt can be resumed
            # train() may have failed before pointing the log at this job: do it now, so the line below
            # lands in this job's train.log and not in the previous job's.
            setup_logging(folder.path, rich=use_rich(str(cfg.trainer.progress)))
            log.error("job %d %s: %s", hc.job.num, record["status"], record["error"])
            return None
        else:
            distributed.teardown(together=True)  # every rank finished: leave together
        finally:
            distributed.teardown()  # after a failure (a no-op after the one above)
    return summary["best_value"]


def prepare(args: list[str]) -> tuple[list[str], contextlib.AbstractContextManager]:
    """Before Hydra writes anything: replay a resumed run's overrides (checked), compose the config and
    run every option check, refuse a changed resume, pin the run (or sweep) folder and claim it.

    Returns the arguments for Hydra and the claim to hold while it runs. Hydra itself writes nothing
    (``hydra.output_subdir=null``): it would write ``.hydra/`` into a folder before the job could refuse
    it. The job writes ``.hydra/`` once it has claimed its folder.
    """
    if hydra_prints(args):  # Hydra prints something and exits
        return args, contextlib.nullcontext()
    trust = any(a.lstrip("+").lower() in ("trust_config=true", "trust_config=1") for a in args)
    if not ranks.is_main_process():  # torchrun: ranks other than 0 run in rank 0's folder; a resume
        # composes the run's own config on every rank (each loads last.pt: the folder is shared)
        return ranks.hydra_overrides(resume_arguments(args, trust_config=trust)), contextlib.nullcontext()
    tuning = [a for a in args if a.lstrip("+~").split("=")[0].split(".")[0] in ("tune", "hparams_search")]
    if tuning:  # a trial's resume replays its preset's tune=<name> from the run folder, not from here
        search = " ".join(a.replace("hparams_search=", "tune=") for a in tuning)
        raise ConfigError(f"{tuning[0]} is a search setting: run the search with cnnlab tune {search}.")
    args = ranks.hydra_overrides(resume_arguments(args, trust_config=trust))
    if "-m" in args or "--multirun" in args:
        return _prepare_sweep(args)
    cfg = _compose([a for a in args if a not in ("-m", "--multirun")])
    with open_dict(cfg):
        run_dir, mode = Path(cfg.hydra.run.dir), cfg.hydra.mode
        del cfg["hydra"]
    if mode == RunMode.MULTIRUN:
        return _prepare_sweep(args)
    from cnnlab.build import check
    from cnnlab.run.load import read_checkpoint_config

    check(cfg)
    folder = RunDir(run_dir)
    if cfg.resume:
        check_config(cfg, folder.overrides_file, trust_config=bool(cfg.trust_config))
        saved = read_checkpoint_config(folder.last)
        check_resumable(saved, OmegaConf.to_yaml(cfg, resolve=True), folder.path)
    lock.check_free(folder.path)  # a live writer first: "already holds a run" would hide who
    folder.check_no_links()
    check_fresh(folder, resume=bool(cfg.resume))
    pinned = [f"hydra.run.dir={override_quoted(str(run_dir))}", "hydra.output_subdir=null"]
    return [*args, *pinned], lock.hold(folder.path)


def _prepare_sweep(args: list[str]) -> tuple[list[str], contextlib.AbstractContextManager]:
    """A sweep's folder is pinned and claimed for the sweep (each job claims its own job folder)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = _compose(plain)
    sweep_dir = Path(cfg.hydra.sweep.dir)
    lock.check_free(sweep_dir, what="sweep")
    jobs = [RunDir(p) for p in sweep_dir.iterdir() if p.is_dir()] if sweep_dir.is_dir() else []
    if any(job.holds_run() for job in jobs) and not any(job.is_unfinished() for job in jobs):
        raise ConfigError(
            f"The sweep folder {sweep_dir} already holds a finished sweep; choose another hydra.sweep.dir "
            "(or drop it: each sweep gets a new folder). Running a sweep again into its folder continues "
            "its unfinished jobs."
        )
    pinned = [f"hydra.sweep.dir={override_quoted(str(sweep_dir))}", "hydra.output_subdir=null"]
    return [*args, *pinned], lock.hold(sweep_dir, what="sweep")


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module("cnnlab.conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


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
    """At the end of a sweep: print the table of its jobs and write the sweep folder's summary.csv.

    If a job failed with an error, leave a message for :func:`take_sweep_failure`: the CLI then exits
    1. A diverged job is a result of its hyperparameters (a learning rate too high for a search to
    explore), so it does not fail the sweep.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from cnnlab.commands.runs import report

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = report(sweep_dir) if sweep_dir.is_dir() else []
        if rows:
            print(f"wrote {sweep_dir / SWEEP_SUMMARY}")
        failed = [row for row in rows if row["status"] == "failed"]
        if failed:
            _failures.append(
                f"{len(failed)} of {len(rows)} jobs of the sweep in {sweep_dir} failed "
                f"(job {failed[0]['run']}: {failed[0]['error']}); "
                "see each one's status.json, fix the cause and run those again."
            )
