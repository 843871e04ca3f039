"""``train(cfg, run_dir) -> summary``: the whole run, top to bottom, independent of the CLI."""

from __future__ import annotations

import json
import logging
import random
import signal
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from cnnlab.config import validate
from cnnlab.data.augment import build_augment
from cnnlab.data.loader import BatchPipeline
from cnnlab.data.registry import build_data
from cnnlab.engine import distributed
from cnnlab.engine.callbacks import MetricTracker
from cnnlab.engine.checkpoint import (
    atomic_write,
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
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.models.whiten import fit_to_data
from cnnlab.provenance import provenance
from cnnlab.resume import check_resumable
from cnnlab.rundir import weights_of
from cnnlab.runlog import EpochProgress, MetricsWriter, setup_logging, summary_table, use_rich

log = logging.getLogger("cnnlab")

FIT_IMAGES = 5000  # training images that data-initialised layers (model.whiten) are fitted to


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    kwargs.pop("name", None)
    try:
        return hydra.utils.instantiate(
            kwargs, in_channels=in_channels, num_classes=num_classes, image_size=image_size
        )
    except InstantiationException as exc:
        if isinstance(exc.__cause__, CnnlabError):
            raise exc.__cause__ from None
        raise ConfigError(f"Could not build model {cfg.get('_target_')}: {exc.__cause__ or exc}.") from None


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, default=str).encode()))


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
    main = dist.is_main
    rich = use_rich(tc.progress) and main
    if main:
        setup_logging(run_dir, rich=rich)
    else:
        distributed.worker_logging(dist.rank)
    ckpt_dir = run_dir / "checkpoints"
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    resumed = None
    if cfg.resume:
        resumed = load_checkpoint(ckpt_dir / "last.pt")
        check_resumable(resumed["config"], config_yaml, run_dir)
    seed_everything(cfg.seed)
    device = dist.device
    if device.type == "cpu":
        configure_cpu(tc.threads)
    precision = resolve_precision(str(tc.precision), device)
    torch.autograd.set_detect_anomaly(tc.detect_anomaly)
    if torch.are_deterministic_algorithms_enabled() != bool(tc.deterministic):
        # Set either way (the flag is global), but only on a change: the call imports torch._inductor.
        torch.use_deterministic_algorithms(bool(tc.deterministic))

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
    num_classes = len(data.classes)
    model = build_model(
        cfg.model, in_channels=data.channels, num_classes=num_classes, image_size=data.image_size
    )
    model = distributed.prepare(model, dist, sync_batchnorm=tc.sync_batchnorm)
    channels_last = has_conv(model) if tc.channels_last is None else bool(tc.channels_last)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if not resumed:  # a resumed run loads the fitted layers with its weights
        plain = BatchPipeline(data.mean, data.std, device)
        fit_to_data(model, data.train.x[:FIT_IMAGES], lambda x: plain(x, train=False))
    if tc.compile:
        model.compile()  # in place, so state_dict keys, EMA copies and checkpoints stay those of the model
    train_model = distributed.wrap(model, dist)  # DDP (gradient all-reduce) or the model itself
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
    tracker = MetricTracker(tc.monitor, tc.mode, tc.min_delta, tc.patience)
    metrics = MetricsWriter(run_dir, tensorboard=tc.tensorboard, ema=ema is not None, enabled=main)
    ctx.on_step = metrics.lr_logger(optimizer)
    progress = EpochProgress(rich)
    if not resumed and main:
        write_json(
            run_dir / "provenance.json",
            provenance(overrides=overrides or [], seed=cfg.seed, data_files=data.files),
        )

    def checkpoint(epoch: int, weights: str, partial: EpochState | None = None) -> dict:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": ctx.scaler.state_dict(),
            "epoch": epoch,  # epochs completed
            "weights": weights,  # which weights scored the monitored value: "raw" or "ema"
            "tracker": tracker.state_dict(),
            "rng": rng_state(),
            "pipeline_rng": pipeline.generator.get_state(),
            "global_step": metrics.global_step,
            "classes": list(data.classes),
            "config": config_yaml,
            "model_name": str(cfg.model.name),
            "mean": list(data.mean),
            "std": list(data.std),
            "image_size": data.image_size,
            "in_channels": data.channels,
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        if partial is not None:
            state["partial"] = partial.state_dict()
        return state

    start_epoch, partial, best_row, weights = 1, None, {}, "raw"
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["scheduler"])
        ctx.scaler.load_state_dict(resumed["scaler"])
        tracker.load_state_dict(resumed["tracker"])
        if ema is not None:
            ema.load_state_dict(resumed["ema"])
        set_rng_state(resumed["rng"])
        pipeline.generator.set_state(resumed["pipeline_rng"])
        metrics.global_step = resumed["global_step"]
        start_epoch = resumed["epoch"] + 1
        partial = EpochState(**resumed["partial"]) if "partial" in resumed else None
        if partial is not None and not main:  # the saved sums are all ranks' (see below): count once
            partial.loss_sum, partial.correct, partial.seen = 0.0, 0, 0
        best_row = metrics.resume(resumed["epoch"], tracker.best_epoch)
        if main:
            (run_dir / "status.json").unlink(missing_ok=True)  # the interruption record is history now
        log.info("resuming %s after epoch %d%s", run_dir, resumed["epoch"],
                 f", step {partial.step}" if partial else "")  # fmt: skip

    stop_reason, epoch = "max_epochs", start_epoch - 1
    try:
        with SignalGuard() as guard:
            # Every rank stops at the same step (a signal may reach only some of them).
            ctx.should_stop = (lambda: dist.any(guard.requested())) if dist.enabled else guard.requested
            for epoch in range(start_epoch, tc.max_epochs + 1):
                t0 = time.perf_counter()
                data.train.set_epoch(epoch)
                lr = schedule.lr if partial is None else partial.lr
                state = partial or EpochState(lr=lr)
                partial = None
                try:
                    stats = train_one_epoch(
                        train_model, data.train, optimizer, schedule, ctx, epoch=epoch, state=state,
                        progress=progress.start(epoch, tc.max_epochs, len(data.train)),
                    )  # fmt: skip
                finally:
                    progress.stop()
                if state.interrupted:
                    if dist.enabled:  # rank 0 saves the sums of every rank's partial epoch
                        state.loss_sum, state.correct, seen = dist.totals(state.loss_sum, state.correct,
                                                                          state.seen)  # fmt: skip
                        state.seen = int(seen)
                    if main:
                        save_checkpoint(checkpoint(epoch - 1, weights, partial=state), ckpt_dir / "last.pt")
                    name = signal.Signals(guard.signum or signal.SIGTERM).name
                    raise Interrupted(
                        f"Stopped by {name} in epoch {epoch} after step {state.step}; the state is saved "
                        f"in {ckpt_dir / 'last.pt'}: continue with `cnnlab train resume={run_dir}`.",
                        guard.signum,
                    )
                t1 = time.perf_counter()
                val = evaluate(model, data.val, ctx)
                row = {
                    "epoch": epoch, "lr": lr, **stats, "val_loss": val["loss"], "val_acc": val["acc"],
                    "img_per_s": stats["images"] / max(stats["data_s"] + stats["compute_s"], 1e-9),
                }  # fmt: skip
                value, weights = row[tc.monitor], "raw"
                if ema is not None:
                    ema_val = evaluate(ema.module, data.val, ctx)
                    row.update(ema_val_loss=ema_val["loss"], ema_val_acc=ema_val["acc"])
                    if better(row[f"ema_{tc.monitor}"], value, tc.mode):
                        value, weights = row[f"ema_{tc.monitor}"], "ema"
                row["weights"] = weights
                row["eval_s"] = time.perf_counter() - t1
                row["seconds"] = time.perf_counter() - t0
                schedule.step_epoch(value)
                is_best = tracker.update(value, epoch)
                metrics.write(row)
                if is_best:
                    best_row = row
                if main:  # rank 0 alone writes checkpoints
                    ckpt = checkpoint(epoch, weights)
                    if is_best:
                        save_checkpoint(ckpt, ckpt_dir / "best.pt")
                        save_safetensors(ckpt, weights_of(ckpt), ckpt_dir / "best.safetensors")
                    save_checkpoint(ckpt, ckpt_dir / "last.pt")
                log.info(
                    "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f%s | lr %.3g | %.1fs "
                    "(data %.1fs, fwd/bwd %.1fs, eval %.1fs, %.0f img/s)%s",
                    epoch, tc.max_epochs, row["train_loss"], row["train_acc"], row["val_loss"],
                    row["val_acc"], f" | ema acc {row['ema_val_acc']:.4f}" if ema is not None else "",
                    lr, row["seconds"], row["data_s"], row["compute_s"], row["eval_s"], row["img_per_s"],
                    "  *best*" if is_best else "",
                )  # fmt: skip
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
        metrics.flush()

    best_weights = "raw"
    dist.barrier()  # rank 0 has written best.pt (run directories are on a shared file system)
    if (ckpt_dir / "best.pt").exists():
        best = load_checkpoint(ckpt_dir / "best.pt", map_location=device)
        best_weights = best.get("weights", "raw")
        model.load_state_dict(weights_of(best))
    scored = tc.evaluate and data.test is not None and data.test_labeled
    test = evaluate(model, data.test, ctx) if scored else None
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
    if not main:
        return summary
    write_json(run_dir / "summary.json", summary)
    metrics.close(cfg, overrides or [], summary)
    if test is not None:
        log.info(
            "test accuracy %.4f (loss %.4f) with the best weights (epoch %d)",
            test["acc"],
            test["loss"],
            tracker.best_epoch,
        )
    Console(stderr=not rich, force_terminal=False).print(summary_table(summary, run_dir))
    if tc.evaluate and tc.report:  # report/: curves, and the evaluation report when the test split has labels
        from cnnlab.report.evaluate import after_train

        after_train(run_dir, device=device, precision=precision, labeled=bool(scored),
                    limit=tc.limit_eval_batches, tensorboard=tc.tensorboard)  # fmt: skip
    return summary
