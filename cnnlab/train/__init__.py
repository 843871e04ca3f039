"""``train(cfg, run_dir) -> summary``: the whole run, top to bottom, independent of the CLI.

:func:`~cnnlab.train.assemble.build_run` builds every part once (:class:`~cnnlab.train.state.Run`;
each training feature is a part of :mod:`cnnlab.train.parts`), :func:`~cnnlab.train.epochs.fit` runs
the epochs and calls the parts' hooks, :func:`~cnnlab.train.ending.finish` scores the best weights on
the test split once and hands the same probabilities to the report. Checkpoint files are written and
read by :mod:`cnnlab.run.checkpoints` alone.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.build import check, seed_everything
from cnnlab.engine import distributed
from cnnlab.engine.device import compile_error, compile_mode, configure_cpu, raised_by_compile
from cnnlab.engine.interrupt import Interrupted, SignalGuard, StopRequested
from cnnlab.run.checkpoints import read_state
from cnnlab.run.layout import RunDir
from cnnlab.run.load import read_checkpoint_config
from cnnlab.run.log import setup_logging, use_rich
from cnnlab.run.provenance import provenance
from cnnlab.run.resume import check_resumable
from cnnlab.run.workspace import claim
from cnnlab.train.assemble import build_run
from cnnlab.train.ending import finish
from cnnlab.train.epochs import fit, step_hook
from cnnlab.train.state import Callback, Run

__all__ = ["Callback", "Run", "build_run", "step_hook", "train"]

log = logging.getLogger("cnnlab")


def train(
    cfg: DictConfig,
    run_dir: Path,
    *,
    overrides: list[str] | None = None,
    callbacks: tuple[Callback, ...] = (),
) -> dict:
    """Train, keep best/last checkpoints, stop early, test the best weights; return the summary.

    Every option is checked before anything is read or written. With ``cfg.resume`` set, continue from
    ``checkpoints/last.pt`` exactly where it stopped (mid-epoch too): weights, optimizer, schedule,
    scaler, EMA, early-stopping state and RNG streams. Only one process writes a run folder (a lock).

    Under torchrun every process calls this; they train one model data-parallel, and only rank 0
    writes (see :mod:`cnnlab.engine.distributed`).
    """
    started = time.perf_counter()
    check(cfg)
    tc = cfg.trainer
    dist = distributed.setup(tc)
    folder = RunDir(dist.broadcast(Path(run_dir)))  # one run directory for all ranks: rank 0's
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    with (
        claim(folder, resume=bool(cfg.resume), writer=dist.is_main),
        SignalGuard("loading data") as guard,
        reported_as_interrupted(folder),
    ):
        resumed = None
        if cfg.resume:
            check_resumable(read_checkpoint_config(folder.last), config_yaml, folder.path)
            resumed = read_state(folder.last)
        rich = use_rich(tc.progress) and dist.is_main
        if dist.is_main:
            setup_logging(folder.path, rich=rich)
        else:
            distributed.worker_logging(dist.rank)
        seed_everything(cfg.seed)
        threads = None
        if dist.device.type == "cpu":
            threads = configure_cpu(tc.threads, deterministic=tc.deterministic, processes=dist.world_size)
        torch.autograd.set_detect_anomaly(tc.detect_anomaly)
        if torch.are_deterministic_algorithms_enabled() != bool(tc.deterministic):
            # Set either way (the flag is global), but only on a change: the call imports torch._inductor.
            torch.use_deterministic_algorithms(bool(tc.deterministic))

        run = build_run(cfg, folder, dist, config_yaml=config_yaml, resumed=resumed is not None, guard=guard)
        run.callbacks = tuple(callbacks)
        for cb in run.callbacks:
            cb.on_start(run)
        run.ctx.on_step = step_hook(run, threads)
        if not resumed and dist.is_main:
            record = provenance(overrides=overrides or [], seed=cfg.seed, data_files=run.data.files,
                                device=dist.device, precision=run.ctx.precision,
                                threads=threads and threads.setup)  # fmt: skip
            folder.write_provenance(record)
        try:
            start_epoch, partial, best_row = run.restore(resumed) if resumed else (1, None, {})
            stop_reason, epoch, best_row = fit(run, start_epoch, partial, best_row, rich=rich, guard=guard)
            guard.enter("testing")
            return finish(run, epoch=epoch, stop_reason=stop_reason, best_row=best_row, started=started,
                          overrides=overrides, rich=rich, guard=guard)  # fmt: skip
        except BaseException as exc:
            run.metrics.abort(exc)  # trackers record the run as failed (or stopped), not as still running
            if compile_mode(tc.compile) and raised_by_compile(exc):  # at the first step: no C++ compiler...
                raise compile_error(exc, "train without it (trainer.compile=false)") from exc
            raise


@contextlib.contextmanager
def reported_as_interrupted(folder: RunDir):
    """Turn a signal that stopped the run outside the epochs (:class:`StopRequested`) into
    :class:`Interrupted`, whose one line says what was interrupted and what to do next."""
    try:
        yield
    except StopRequested as stop:
        name, stage = signal.Signals(stop.signum).name, stop.stage
        if stage == "report":
            todo = f"the run finished (summary.json): write the report with `cnnlab evaluate run={folder}`"
        elif stage == "testing":
            todo = f"training had ended: score the test split with `cnnlab train resume={folder}`"
        elif folder.last.is_file():
            todo = f"{folder.last} is as it was: continue with `cnnlab train resume={folder}`"
        else:
            todo = "nothing was trained yet: run the command again"
        doing = "writing the report" if stage == "report" else stage
        raise Interrupted(f"Stopped by {name} while {doing}; {todo}.", stop.signum, stage) from None
