"""``train(cfg, run_dir) -> summary``: the whole run, top to bottom, independent of the CLI."""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from cnnlab.build import build_model, has_conv, seed_everything
from cnnlab.config import validate
from cnnlab.data.augment import build_augment
from cnnlab.data.loader import BatchPipeline
from cnnlab.data.registry import DataBundle, build_data
from cnnlab.engine import distributed
from cnnlab.engine.callbacks import MetricTracker
from cnnlab.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_safetensors,
    set_rng_state,
)
from cnnlab.engine.device import configure_cpu, resolve_precision
from cnnlab.engine.ema import ModelEMA
from cnnlab.engine.interrupt import Interrupted, SignalGuard
from cnnlab.engine.loop import (
    EpochState,
    StepContext,
    evaluate,
    optimizer_steps,
    train_one_epoch,
)
from cnnlab.engine.optim import build_optimizer
from cnnlab.engine.schedulers import build_scheduler
from cnnlab.engine.tta import tta_views
from cnnlab.io import write_json
from cnnlab.models.whiten import fit_to_data
from cnnlab.provenance import provenance
from cnnlab.resume import check_resumable
from cnnlab.rundir import weights_of
from cnnlab.runlog import EpochProgress, MetricsWriter, setup_logging, summary_table, use_rich

log = logging.getLogger("cnnlab")

FIT_IMAGES = 5000  # training images that data-initialised layers (model.whiten) are fitted to


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


def better(a: float, b: float, mode: str) -> bool:
    """Is ``a`` better than ``b`` (NaN never is)?"""
    if a != a:
        return False
    return b != b or (a > b if mode == "max" else a < b)


@dataclass
class Run:
    """Everything one training run holds: built once by :func:`build_run`, saved whole by
    :meth:`checkpoint` and put back by :meth:`restore`."""

    cfg: DictConfig
    run_dir: Path
    dist: distributed.Dist
    data: DataBundle
    model: nn.Module
    train_model: nn.Module  # DDP (gradient all-reduce) around ``model``, or the model itself
    optimizer: torch.optim.Optimizer
    schedule: object  # cnnlab.engine.schedulers.Schedule
    ctx: StepContext  # also holds the batch pipeline and the EMA
    tracker: MetricTracker
    metrics: MetricsWriter
    config_yaml: str

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def checkpoint(self, epoch: int, weights: str, partial: EpochState | None = None) -> dict:
        data = self.data
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.ctx.scaler.state_dict(),
            "epoch": epoch,  # epochs completed
            "weights": weights,  # which weights scored the monitored value: "raw" or "ema"
            "tracker": self.tracker.state_dict(),
            "rng": rng_state(),
            "pipeline_rng": self.ctx.pipeline.generator.get_state(),
            "global_step": self.metrics.global_step,
            "classes": list(data.classes),
            "config": self.config_yaml,
            "model_name": str(self.cfg.model.name),
            "mean": list(data.mean),
            "std": list(data.std),
            "image_size": data.image_size,
            "in_channels": data.channels,
        }
        if self.ctx.ema is not None:
            state["ema"] = self.ctx.ema.state_dict()
        if partial is not None:
            state["partial"] = partial.state_dict()
        return state

    def restore(self, resumed: dict) -> tuple[int, EpochState | None, dict]:
        """Load a ``last.pt``; return the epoch to start at, the partial epoch (or None) and the best row."""
        self.model.load_state_dict(resumed["model"])
        self.optimizer.load_state_dict(resumed["optimizer"])
        self.schedule.load_state_dict(resumed["scheduler"])
        self.ctx.scaler.load_state_dict(resumed["scaler"])
        self.tracker.load_state_dict(resumed["tracker"])
        if self.ctx.ema is not None:
            self.ctx.ema.load_state_dict(resumed["ema"])
        set_rng_state(resumed["rng"])
        self.ctx.pipeline.generator.set_state(resumed["pipeline_rng"])
        self.metrics.global_step = resumed["global_step"]
        partial = EpochState(**resumed["partial"]) if "partial" in resumed else None
        if partial is not None and not self.dist.is_main:  # the saved sums are all ranks': count once
            partial.loss_sum, partial.correct, partial.seen = 0.0, 0, 0
        best_row = self.metrics.resume(resumed["epoch"], self.tracker.best_epoch)
        if self.dist.is_main:
            (self.run_dir / "status.json").unlink(missing_ok=True)  # the interruption record is history now
        log.info("resuming %s after epoch %d%s", self.run_dir, resumed["epoch"],
                 f", step {partial.step}" if partial else "")  # fmt: skip
        return resumed["epoch"] + 1, partial, best_row


def build_run(
    cfg: DictConfig, run_dir: Path, dist: distributed.Dist, *, config_yaml: str, resumed: dict | None
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
        from cnnlab.models.summary import format_summary, summarize

        Console(stderr=True).print(
            format_summary(summarize(model, (data.channels, data.image_size, data.image_size)))
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

    aug_cfg = OmegaConf.to_container(cfg.augmentation, resolve=True)
    augment = build_augment(**aug_cfg, channels=data.channels, image_size=data.image_size)
    pipeline = BatchPipeline(
        data.mean, data.std, device, augment=augment, channels_last=channels_last, seed=cfg.seed + dist.rank
    )
    optimizer = build_optimizer(model, cfg.optimizer)
    sched_cfg = OmegaConf.to_container(cfg.scheduler, resolve=True)
    schedule = build_scheduler(
        optimizer,
        name=sched_cfg.pop("name"),
        steps_per_epoch=optimizer_steps(data.train, tc.accumulate),
        max_epochs=tc.max_epochs,
        mode=tc.mode,
        **sched_cfg.pop("options"),
        **sched_cfg,
    )
    ema = ModelEMA(model, tc.ema) if tc.ema else None
    ctx = StepContext(
        device=device,
        precision=precision,
        pipeline=pipeline,
        criterion=nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing),
        grad_clip=tc.grad_clip,
        augment=augment,
        ema=ema,
        accumulate=tc.accumulate,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "16"),
        world_size=dist.world_size,
        totals=dist.totals,
        eval_views=tta_views(tc.tta, data.image_size),
    )
    metrics = MetricsWriter(run_dir, tensorboard=tc.tensorboard, ema=ema is not None, enabled=dist.is_main)
    ctx.on_step = metrics.lr_logger(optimizer)
    return Run(
        cfg=cfg, run_dir=run_dir, dist=dist, data=data, model=model, train_model=train_model,
        optimizer=optimizer, schedule=schedule, ctx=ctx,
        tracker=MetricTracker(tc.monitor, tc.mode, tc.min_delta, tc.patience), metrics=metrics,
        config_yaml=config_yaml,
    )  # fmt: skip


def train(cfg: DictConfig, run_dir: Path, *, overrides: list[str] | None = None) -> dict:
    """Train, keep best/last checkpoints, stop early, test the best weights; return the summary.

    With ``cfg.resume`` set, continue from ``run_dir/checkpoints/last.pt`` exactly where it stopped
    (mid-epoch too): weights, optimizer, schedule, scaler, EMA, early-stopping state and RNG streams.

    Under torchrun every process calls this; they train one model data-parallel, and only rank 0
    writes (see :mod:`cnnlab.engine.distributed`).
    """
    started = time.perf_counter()
    validate(cfg)
    tc = cfg.trainer
    dist = distributed.setup(tc)
    run_dir = dist.broadcast(Path(run_dir))  # one run directory for all ranks: rank 0's
    rich = use_rich(tc.progress) and dist.is_main
    if dist.is_main:
        setup_logging(run_dir, rich=rich)
    else:
        distributed.worker_logging(dist.rank)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    resumed = None
    if cfg.resume:
        resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        check_resumable(resumed["config"], config_yaml, run_dir)
    seed_everything(cfg.seed)
    if dist.device.type == "cpu":
        configure_cpu(tc.threads)
    torch.autograd.set_detect_anomaly(tc.detect_anomaly)
    if torch.are_deterministic_algorithms_enabled() != bool(tc.deterministic):
        # Set either way (the flag is global), but only on a change: the call imports torch._inductor.
        torch.use_deterministic_algorithms(bool(tc.deterministic))

    run = build_run(cfg, run_dir, dist, config_yaml=config_yaml, resumed=resumed)
    if not resumed and dist.is_main:
        write_json(
            run_dir / "provenance.json",
            provenance(overrides=overrides or [], seed=cfg.seed, data_files=run.data.files),
        )
    start_epoch, partial, best_row = run.restore(resumed) if resumed else (1, None, {})
    stop_reason, epoch, best_row = fit(run, start_epoch, partial, best_row, rich=rich)
    return finish(run, epoch=epoch, stop_reason=stop_reason, best_row=best_row, started=started,
                  overrides=overrides, rich=rich)  # fmt: skip


def fit(run: Run, start_epoch: int, partial: EpochState | None, best_row: dict, *, rich: bool):
    """The epochs from ``start_epoch`` on; return (stop reason, last epoch, the best epoch's row).

    A signal stops the run after the current optimizer step: ``last.pt`` then holds the partial epoch
    and :class:`Interrupted` says how to resume.
    """
    tc, dist, data, ctx = run.cfg.trainer, run.dist, run.data, run.ctx
    progress = EpochProgress(rich)
    stop_reason, epoch, weights = "max_epochs", start_epoch - 1, "raw"
    try:
        with SignalGuard() as guard:
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
                    ckpt = run.checkpoint(epoch, weights)
                    if is_best:
                        save_checkpoint(ckpt, run.ckpt_dir / "best.pt")
                        save_safetensors(ckpt, weights_of(ckpt), run.ckpt_dir / "best.safetensors")
                    save_checkpoint(ckpt, run.ckpt_dir / "last.pt")
                log_epoch(row, tc.max_epochs, ema=run.ctx.ema is not None, is_best=is_best)
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


def save_interrupted(run: Run, epoch: int, weights: str, state: EpochState, signum: int | None):
    """Save the partial epoch in ``last.pt`` (rank 0, with every rank's sums) and raise Interrupted."""
    if run.dist.enabled:
        state.loss_sum, state.correct, seen = run.dist.totals(state.loss_sum, state.correct, state.seen)
        state.seen = int(seen)
    if run.dist.is_main:
        save_checkpoint(run.checkpoint(epoch - 1, weights, partial=state), run.ckpt_dir / "last.pt")
    name = signal.Signals(signum or signal.SIGTERM).name
    raise Interrupted(
        f"Stopped by {name} in epoch {epoch} after step {state.step}; the state is saved in "
        f"{run.ckpt_dir / 'last.pt'}: continue with `cnnlab train resume={run.run_dir}`.",
        signum,
    )


def score_epoch(run: Run, epoch: int, lr: float, stats: dict) -> tuple[dict, float, str]:
    """Score the raw (and EMA) weights on the validation split; return the metrics row, the monitored
    value of the better weights and which they were ("raw" or "ema")."""
    tc = run.cfg.trainer
    t1 = time.perf_counter()
    val = evaluate(run.model, run.data.val, run.ctx)
    row = {
        "epoch": epoch, "lr": lr, **stats, "val_loss": val["loss"], "val_acc": val["acc"],
        "img_per_s": stats["images"] / max(stats["data_s"] + stats["compute_s"], 1e-9),
    }  # fmt: skip
    value, weights = row[tc.monitor], "raw"
    if run.ctx.ema is not None:
        ema_val = evaluate(run.ctx.ema.module, run.data.val, run.ctx)
        row.update(ema_val_loss=ema_val["loss"], ema_val_acc=ema_val["acc"])
        if better(row[f"ema_{tc.monitor}"], value, tc.mode):
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


def finish(run: Run, *, epoch: int, stop_reason: str, best_row: dict, started: float, overrides, rich: bool):
    """Test the best weights, write summary.json (and the report), print the summary; return it."""
    cfg, tc, dist, tracker = run.cfg, run.cfg.trainer, run.dist, run.tracker
    best_weights = "raw"
    dist.barrier()  # rank 0 has written best.pt (run directories are on a shared file system)
    if (run.ckpt_dir / "best.pt").exists():
        best = load_checkpoint(run.ckpt_dir / "best.pt", map_location=dist.device)
        best_weights = best.get("weights", "raw")
        run.model.load_state_dict(weights_of(best))
    data = run.data
    scored = tc.evaluate and data.test is not None and data.test_labeled
    test = evaluate(run.model, data.test, run.ctx) if scored else None
    summary = {
        "status": "finished",
        "best_epoch": tracker.best_epoch,
        "monitor": tc.monitor,
        "best_value": tracker.best,
        "best_val_acc": best_row.get("val_acc", float("nan")),
        "best_weights": best_weights,
        "test_acc": None if test is None else test["acc"],
        "test_loss": None if test is None else test["loss"],
        "epochs_run": epoch,
        "stop_reason": stop_reason,
        "seconds": time.perf_counter() - started,
    }
    if best_weights == "ema":
        summary["best_val_acc"] = best_row.get("ema_val_acc", summary["best_val_acc"])
    if not dist.is_main:
        return summary
    write_json(run.run_dir / "summary.json", summary)
    run.metrics.close(cfg, overrides or [], summary)
    if test is not None:
        log.info(
            "test accuracy %.4f (loss %.4f) with the best weights (epoch %d)",
            test["acc"],
            test["loss"],
            tracker.best_epoch,
        )
    Console(stderr=not rich, force_terminal=False).print(summary_table(summary, run.run_dir))
    if tc.evaluate and tc.report:  # report/: curves, and the evaluation report when the test split has labels
        from cnnlab.report.evaluate import after_train

        after_train(run.run_dir, device=dist.device, precision=run.ctx.precision, labeled=bool(scored),
                    limit=tc.limit_eval_batches, tensorboard=tc.tensorboard)  # fmt: skip
    return summary
