"""``train(cfg, run_dir) -> summary``: the whole run, top to bottom, independent of the CLI.

:func:`build_run` builds every part once (:class:`Run`), :func:`fit` runs the epochs, :func:`finish`
scores the best weights on the test split once and hands the same probabilities to the report.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from cnnlab.build import (
    build_augment_from,
    build_criterion,
    build_model,
    build_optimizer,
    build_schedule,
    check,
    has_conv,
    seed_everything,
)
from cnnlab.data.loader import BatchPipeline
from cnnlab.data.registry import DataBundle, build_data
from cnnlab.engine import distributed
from cnnlab.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_safetensors,
    set_rng_state,
)
from cnnlab.engine.device import configure_cpu, resolve_precision
from cnnlab.engine.ema import ModelEMA
from cnnlab.engine.interrupt import Interrupted, SignalGuard, StopRequested
from cnnlab.engine.loop import EpochState, StepContext, optimizer_steps, score, train_one_epoch
from cnnlab.engine.schedulers import Schedule
from cnnlab.engine.tracker import MetricTracker, is_better
from cnnlab.engine.tta import tta_views
from cnnlab.errors import CheckpointError
from cnnlab.models.whiten import fit_to_data
from cnnlab.run.layout import RunDir
from cnnlab.run.load import Predictor, load_state_strict, read_checkpoint_config, weights_of
from cnnlab.run.log import EpochProgress, result_table, setup_logging, use_rich
from cnnlab.run.metrics import MetricsWriter
from cnnlab.run.provenance import provenance
from cnnlab.run.record import RunRecord
from cnnlab.run.resume import check_resumable
from cnnlab.run.workspace import claim

log = logging.getLogger("cnnlab")

FIT_IMAGES = 5000  # training images that data-initialised layers (model.whiten) are fitted to
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "tracker", "rng", "pipeline_rng",
               "global_step")  # fmt: skip


class Callback:
    """Hooks into a run (all optional): ``on_step(run)`` after every optimizer step, ``on_epoch_end(run,
    row, value)`` after each epoch's checkpoints are written, with the monitored ``value``. An Optuna
    pruner raises from ``on_epoch_end``; a test can stop a run there as a kill would."""

    def on_step(self, run: Run) -> None: ...

    def on_epoch_end(self, run: Run, row: dict, value: float) -> None: ...


def limit_batches(data, tc: DictConfig) -> None:
    """Apply the debugging limits: overfit a few fixed batches, or cap batches per epoch."""
    if tc.overfit_batches:
        data.train.limit = tc.overfit_batches
        data.train.shuffle = False
        data.val = data.train
    elif tc.limit_train_batches:
        data.train.limit = tc.limit_train_batches
    if tc.limit_eval_batches and not tc.overfit_batches:
        data.val.limit = tc.limit_eval_batches
        if data.test is not None:
            data.test.limit = tc.limit_eval_batches


@dataclass
class Run:
    """Everything one training run holds: built once by :func:`build_run`, saved whole by
    :meth:`checkpoint` and put back by :meth:`restore`."""

    cfg: DictConfig
    folder: RunDir
    dist: distributed.Dist
    data: DataBundle
    model: nn.Module
    train_model: nn.Module  # DDP (gradient all-reduce) around ``model``, or the model itself
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    ctx: StepContext  # also holds the batch pipeline and the EMA
    tracker: MetricTracker
    metrics: MetricsWriter
    config_yaml: str
    callbacks: tuple[Callback, ...] = ()

    def record(self, epoch: int, weights: str = "raw") -> RunRecord:
        data = self.data
        return RunRecord(
            model_name=str(self.cfg.model.name), classes=list(data.classes), mean=list(data.mean),
            std=list(data.std), image_size=data.image_size, in_channels=data.channels,
            config=self.config_yaml, epoch=epoch, weights=weights, precision=self.ctx.precision,
        )  # fmt: skip

    def checkpoint(self, epoch: int, weights: str, partial: EpochState | None = None) -> dict:
        state = {
            **self.record(epoch, weights).to_state(),  # epoch: epochs completed; weights: raw or ema
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.ctx.scaler.state_dict(),
            "tracker": self.tracker.state_dict(),
            "rng": rng_state(),
            "pipeline_rng": self.ctx.pipeline.generator.get_state(),
            "global_step": self.metrics.global_step,
        }
        if self.ctx.ema is not None:
            state["ema"] = self.ctx.ema.state_dict()
        if partial is not None:
            state["partial"] = partial.state_dict()
        return state

    def restore(self, resumed: dict) -> tuple[int, EpochState | None, dict]:
        """Load a ``last.pt``; return the epoch to start at, the partial epoch (or None) and the best row."""
        path = self.folder.last
        missing = [k for k in (*RESUME_KEYS, *(("ema",) if self.ctx.ema else ())) if k not in resumed]
        if missing:
            raise CheckpointError(
                f"{path} lacks {', '.join(missing)}, so the run cannot continue exactly; it is damaged or "
                "not a cnnlab last.pt: start a new run."
            )
        load_state_strict(self.model, resumed["model"], path)
        try:
            self.optimizer.load_state_dict(resumed["optimizer"])
            self.schedule.load_state_dict(resumed["scheduler"])
            self.ctx.scaler.load_state_dict(resumed["scaler"])
            self.tracker.load_state_dict(resumed["tracker"])
            if self.ctx.ema is not None:
                load_state_strict(self.ctx.ema.module, resumed["ema"]["module"], path)
                self.ctx.ema.updates = resumed["ema"]["updates"]
            set_rng_state(resumed["rng"])
            self.ctx.pipeline.generator.set_state(resumed["pipeline_rng"])
            partial = EpochState(**resumed["partial"]) if "partial" in resumed else None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path} does not fit this run ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "it is damaged or from another run: start a new run."
            ) from None
        self.metrics.global_step = resumed["global_step"]
        if partial is not None and not self.dist.is_main:  # the saved sums are all ranks': count once
            partial.loss_sum, partial.correct, partial.seen = 0.0, 0, 0
        best_row = self.metrics.resume(resumed["epoch"], self.tracker.best_epoch)
        if self.dist.is_main:
            self.folder.status_file.unlink(missing_ok=True)  # the interruption record is history now
        where = (
            f"in epoch {resumed['epoch'] + 1} at step {partial.step}"
            if partial
            else f"after epoch {resumed['epoch']}"
        )
        log.info("resuming %s %s", self.folder, where)
        return resumed["epoch"] + 1, partial, best_row


def build_run(
    cfg: DictConfig,
    folder: RunDir,
    dist: distributed.Dist,
    *,
    config_yaml: str,
    resumed: bool,
    guard: SignalGuard | None = None,
) -> Run:
    """Data, model, augmentation, optimizer, schedule, EMA and metrics writer for ``cfg``."""
    tc = cfg.trainer
    device = dist.device
    precision = resolve_precision(str(tc.precision), device)
    data = build_data(
        cfg.dataset,
        device=device,
        batch_size=tc.batch_size,
        eval_batch_size=tc.eval_batch_size,
        seed=cfg.seed,
    )
    limit_batches(data, tc)
    if guard is not None:
        guard.enter("building")
    for loader in (data.train, data.val, data.test):
        if loader is not None and dist.enabled:
            loader.shard(dist.rank, dist.world_size)
    model = build_model(
        cfg.model, in_channels=data.channels, num_classes=len(data.classes), image_size=data.image_size
    )
    model = distributed.prepare(model, dist, sync_batchnorm=tc.sync_batchnorm)
    channels_last = has_conv(model) if tc.channels_last is None else bool(tc.channels_last)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if not resumed:  # a resumed run loads the fitted layers with its weights
        plain = BatchPipeline(data.mean, data.std, device)
        fit_to_data(model, data.train.x[:FIT_IMAGES], lambda x: plain(x, train=False))
    if tc.compile:
        model.compile()  # in place, so state_dict keys, EMA copies and checkpoints stay those of the model
    train_model = distributed.wrap(model, dist)
    if tc.summary:
        from cnnlab.models.layer_table import format_layer_table, layer_table

        Console(stderr=True).print(
            format_layer_table(layer_table(model, (data.channels, data.image_size, data.image_size)))
        )
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s: %s parameters; device %s, precision %s, channels_last %s",
        cfg.model.name, f"{n_params:,}", device, precision, channels_last,
    )  # fmt: skip
    if dist.enabled:
        log.info(
            "data parallel: %d processes (%s), global batch %d, %d per process%s",
            dist.world_size, distributed.resolve_backend(str(tc.backend), device), tc.batch_size,
            tc.batch_size // dist.world_size, ", SyncBatchNorm" if tc.sync_batchnorm else "",
        )  # fmt: skip
        torch.manual_seed(cfg.seed + dist.rank)  # distinct dropout masks per rank; weights come from rank 0

    augment = build_augment_from(cfg.augmentation, channels=data.channels, image_size=data.image_size)
    pipeline = BatchPipeline(
        data.mean, data.std, device, augment=augment, channels_last=channels_last, seed=cfg.seed + dist.rank
    )
    optimizer = build_optimizer(model, cfg.optimizer)
    schedule = build_schedule(
        optimizer, cfg.scheduler, steps_per_epoch=optimizer_steps(data.train, tc.accumulate),
        max_epochs=tc.max_epochs, mode=tc.mode,
    )  # fmt: skip
    ctx = StepContext(
        device=device,
        precision=precision,
        pipeline=pipeline,
        criterion=build_criterion(tc),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "16"),
        grad_clip=tc.grad_clip,
        ema=ModelEMA(model, tc.ema) if tc.ema else None,
        accumulate=tc.accumulate,
        dist=dist,
        eval_views=tta_views(tc.tta, data.image_size),
    )
    metrics = MetricsWriter(folder, tensorboard=tc.tensorboard, ema=ctx.ema is not None,
                            clip=bool(tc.grad_clip), enabled=dist.is_main)  # fmt: skip
    return Run(
        cfg=cfg, folder=folder, dist=dist, data=data, model=model, train_model=train_model,
        optimizer=optimizer, schedule=schedule, ctx=ctx,
        tracker=MetricTracker(tc.monitor, tc.mode, tc.min_delta, tc.patience), metrics=metrics,
        config_yaml=config_yaml,
    )  # fmt: skip


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
            resumed = load_checkpoint(folder.last)
        rich = use_rich(tc.progress) and dist.is_main
        if dist.is_main:
            setup_logging(folder.path, rich=rich)
        else:
            distributed.worker_logging(dist.rank)
        seed_everything(cfg.seed)
        if dist.device.type == "cpu":
            configure_cpu(tc.threads)
        torch.autograd.set_detect_anomaly(tc.detect_anomaly)
        if torch.are_deterministic_algorithms_enabled() != bool(tc.deterministic):
            # Set either way (the flag is global), but only on a change: the call imports torch._inductor.
            torch.use_deterministic_algorithms(bool(tc.deterministic))

        run = build_run(cfg, folder, dist, config_yaml=config_yaml, resumed=resumed is not None, guard=guard)
        run.callbacks = tuple(callbacks)
        run.ctx.on_step = step_hook(run)
        if not resumed and dist.is_main:
            folder.write_provenance(
                provenance(overrides=overrides or [], seed=cfg.seed, data_files=run.data.files)
            )
        start_epoch, partial, best_row = run.restore(resumed) if resumed else (1, None, {})
        stop_reason, epoch, best_row = fit(run, start_epoch, partial, best_row, rich=rich, guard=guard)
        guard.enter("testing")
        return finish(run, epoch=epoch, stop_reason=stop_reason, best_row=best_row, started=started,
                      overrides=overrides, rich=rich, guard=guard)  # fmt: skip


def step_hook(run: Run):
    """What runs after every optimizer step: count it, log the learning rate, the callbacks."""
    stepped = [cb for cb in run.callbacks if type(cb).on_step is not Callback.on_step]
    optimizer, metrics = run.optimizer, run.metrics

    def on_step() -> None:
        metrics.step(optimizer.param_groups[0]["lr"])
        for cb in stepped:
            cb.on_step(run)

    return on_step


def fit(
    run: Run, start_epoch: int, partial: EpochState | None, best_row: dict, *, rich: bool, guard: SignalGuard
):
    """The epochs from ``start_epoch`` on; return (stop reason, last epoch, the best epoch's row).

    A signal stops the run after the current optimizer step: ``last.pt`` then holds the partial epoch
    and :class:`Interrupted` says how to resume. A resumed run that had already stopped early (it was
    interrupted while testing) trains no further.
    """
    tc, dist, data, ctx = run.cfg.trainer, run.dist, run.data, run.ctx
    progress = EpochProgress(rich)
    stop_reason, epoch, weights = "max_epochs", start_epoch - 1, "raw"
    if epoch and partial is None and run.tracker.should_stop:  # it had stopped early before this resume
        return "early_stop", epoch, best_row
    try:
        with guard.polling("training"):
            # Every rank stops at the same step (a signal may reach only some of them).
            ctx.should_stop = (lambda: dist.any(guard.requested())) if dist.enabled else guard.requested
            for epoch in range(start_epoch, tc.max_epochs + 1):
                t0 = time.perf_counter()
                data.train.set_epoch(epoch)
                lr = run.schedule.lr if partial is None else partial.lr
                state = partial or EpochState(lr=lr)
                partial = None
                try:
                    stats = train_one_epoch(
                        run.train_model, data.train, run.optimizer, run.schedule, ctx, epoch=epoch,
                        state=state, progress=progress.start(epoch, tc.max_epochs, len(data.train)),
                    )  # fmt: skip
                finally:
                    progress.stop()
                if state.interrupted:
                    save_interrupted(run, epoch, weights, state, guard.signum)
                row, value, weights = score_epoch(run, epoch, lr, stats)
                row["seconds"] = time.perf_counter() - t0
                run.schedule.step_epoch(value)
                is_best = run.tracker.update(value, epoch)
                run.metrics.write(row)
                if is_best:
                    best_row = row
                if dist.is_main:  # rank 0 alone writes checkpoints
                    save_epoch(run, epoch, weights, is_best=is_best)
                log_epoch(row, tc.max_epochs, ema=ctx.ema is not None, is_best=is_best)
                for cb in run.callbacks:
                    cb.on_epoch_end(run, row, value)
                tracker = run.tracker
                if tracker.should_stop:
                    stop_reason = "early_stop"
                    log.info(
                        "early stop: %s did not improve by more than %g for %d epochs "
                        "(best %.4f at epoch %d)",
                        tc.monitor, tc.min_delta, tracker.wait, tracker.best, tracker.best_epoch,
                    )  # fmt: skip
                    break
    finally:
        progress.stop()
        run.metrics.flush()
    return stop_reason, epoch, best_row


def save_epoch(run: Run, epoch: int, weights: str, *, is_best: bool) -> None:
    """``last.pt`` every epoch; on a new best also ``best.pt`` and ``best.safetensors`` (the better
    weights alone, with the record as metadata)."""
    ckpt = run.checkpoint(epoch, weights)
    if is_best:
        save_checkpoint(ckpt, run.folder.best)
        metadata = run.record(epoch, weights).to_metadata()
        save_safetensors(weights_of(ckpt), metadata, run.folder.best_safetensors)
    save_checkpoint(ckpt, run.folder.last)


def save_interrupted(run: Run, epoch: int, weights: str, state: EpochState, signum: int | None):
    """Save the partial epoch in ``last.pt`` (rank 0, with every rank's sums) and raise Interrupted."""
    if run.dist.enabled:
        state.loss_sum, state.correct, seen = run.dist.totals(state.loss_sum, state.correct, state.seen)
        state.seen = int(seen)
    if run.dist.is_main:
        save_checkpoint(run.checkpoint(epoch - 1, weights, partial=state), run.folder.last)
    name = signal.Signals(signum or signal.SIGTERM).name
    raise Interrupted(
        f"Stopped by {name} in epoch {epoch} after step {state.step}; the state is saved in "
        f"{run.folder.last}: continue with `cnnlab train resume={run.folder}`.",
        signum,
        "training",
    )


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


def score_epoch(run: Run, epoch: int, lr: float, stats: dict) -> tuple[dict, float, str]:
    """Score the raw (and EMA) weights on the validation split; return the metrics row, the monitored
    value of the better weights and which they were ("raw" or "ema")."""
    tc = run.cfg.trainer
    t1 = time.perf_counter()
    val = score(run.model, run.data.val, run.ctx)
    row = {
        "epoch": epoch, "lr": lr, **stats, "val_loss": val["loss"], "val_acc": val["acc"],
        "img_per_s": stats["images"] / max(stats["data_s"] + stats["compute_s"], 1e-9),
    }  # fmt: skip
    value, weights = row[tc.monitor], "raw"
    if run.ctx.ema is not None:
        ema_val = score(run.ctx.ema.module, run.data.val, run.ctx)
        row.update(ema_val_loss=ema_val["loss"], ema_val_acc=ema_val["acc"])
        if is_better(row[f"ema_{tc.monitor}"], value, tc.mode):
            value, weights = row[f"ema_{tc.monitor}"], "ema"
    row["weights"] = weights
    row["eval_s"] = time.perf_counter() - t1
    return row, value, weights


def log_epoch(row: dict, max_epochs: int, *, ema: bool, is_best: bool) -> None:
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f%s | lr %.3g | %.1fs "
        "(data %.1fs, fwd/bwd %.1fs, eval %.1fs, %.0f img/s)%s",
        row["epoch"], max_epochs, row["train_loss"], row["train_acc"], row["val_loss"], row["val_acc"],
        f" | ema acc {row['ema_val_acc']:.4f}" if ema else "", row["lr"], row["seconds"], row["data_s"],
        row["compute_s"], row["eval_s"], row["img_per_s"], "  *best*" if is_best else "",
    )  # fmt: skip


def finish(
    run: Run, *, epoch: int, stop_reason: str, best_row: dict, started: float, overrides, rich: bool,
    guard: SignalGuard,
):  # fmt: skip
    """Score the best weights on the test split once (rank 0), write summary.json, and hand the same
    images and probabilities to the report; print the summary; return it."""
    cfg, tc, dist, tracker, data = run.cfg, run.cfg.trainer, run.dist, run.tracker, run.data
    dist.barrier()  # rank 0 has written best.pt (run directories are on a shared file system)
    if not dist.is_main:
        return {"status": "finished", "best_value": tracker.best}
    best_weights = "raw"
    if run.folder.best.exists():
        best = load_checkpoint(run.folder.best, map_location=dist.device)
        best_weights = best.get("weights", "raw")
        run.model.load_state_dict(weights_of(best))
    test = None
    if tc.evaluate and data.test is not None and data.test_labeled:
        from cnnlab.report.evaluate import Scored

        n = data.test.num_samples  # trainer.limit_eval_batches applies to the test split too
        record = run.record(tracker.best_epoch, best_weights)
        predictor = Predictor(run.model, record, dist.device, precision=run.ctx.precision)
        test = Scored.score(predictor, data.test.x[:n], data.test.y[:n], checkpoint=run.folder.best)
    summary = {
        "status": "finished",
        "best_epoch": tracker.best_epoch,
        "monitor": tc.monitor,
        "best_value": tracker.best,
        "best_val_acc": best_row.get("val_acc", float("nan")),
        "best_weights": best_weights,
        "test_acc": None if test is None else test.accuracy,
        "test_loss": None if test is None else test.loss,
        "epochs_run": epoch,
        "stop_reason": stop_reason,
        "seconds": time.perf_counter() - started,
    }
    if best_weights == "ema":
        summary["best_val_acc"] = best_row.get("ema_val_acc", summary["best_val_acc"])
    run.folder.write_summary(summary)
    run.metrics.close(cfg, overrides or [], summary)
    if test is not None:
        log.info("test accuracy %.4f (loss %.4f) with the best weights (epoch %d)",
                 test.accuracy, test.loss, tracker.best_epoch)  # fmt: skip
    Console(stderr=not rich, force_terminal=False).print(result_table(summary, run.folder.path))
    if data.test is not None and not data.test_labeled:
        log.info("the test split has no labels: write a submission with `cnnlab predict run=%s`", run.folder)
    if tc.evaluate and tc.report:  # report/: curves, and the evaluation report when the test split has labels
        from cnnlab.report.evaluate import write_train_report

        guard.enter("report")
        write_train_report(run.folder, test, tensorboard=tc.tensorboard)
    return summary
