"""Building a run from its config: data, model, pipeline, optimizer, schedule, step context and metrics
writer, each once (:func:`build_run`)."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig
from torch import nn

from cnnlab.build import (
    build_adversary,
    build_augment_from,
    build_criterion,
    build_model,
    build_optimizer,
    build_schedule,
    uses_channels_last,
)
from cnnlab.data.loader import BatchPipeline
from cnnlab.data.mmap import HostLoader
from cnnlab.data.registry import DataBundle, build_data
from cnnlab.engine import distributed
from cnnlab.engine.device import compile_mode, configure_cuda, resolve_precision
from cnnlab.engine.infer import Scorer
from cnnlab.engine.interrupt import SignalGuard
from cnnlab.engine.loop import StepContext, optimizer_steps
from cnnlab.engine.metrics import BALANCED_MONITORS
from cnnlab.engine.tracker import MetricTracker
from cnnlab.engine.tta import tta_views
from cnnlab.models.whiten import fit_to_data
from cnnlab.run.checkpoints import RunCheckpoints
from cnnlab.run.layout import RunDir
from cnnlab.run.log import make_console
from cnnlab.run.metrics import MetricsWriter
from cnnlab.train.parts import build_parts
from cnnlab.train.state import Run

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
    model, channels_last = place_model(model, cfg, data, dist, resumed=resumed)
    train_model = distributed.wrap(model, dist)
    describe(model, cfg, data, dist, precision=precision, channels_last=channels_last)
    if dist.enabled:
        torch.manual_seed(cfg.seed + dist.rank)  # distinct dropout masks per rank; weights come from rank 0

    augment = build_augment_from(cfg.augmentation, channels=data.channels, image_size=data.image_size)
    pipeline = BatchPipeline(
        data.mean, data.std, device, augment=augment, channels_last=channels_last, seed=cfg.seed + dist.rank
    )
    optimizer = build_optimizer(model, cfg.optimizer)
    steps_per_epoch = optimizer_steps(data.train, tc.accumulate)
    schedule = build_schedule(
        optimizer, cfg.scheduler, steps_per_epoch=steps_per_epoch, max_epochs=tc.max_epochs, mode=tc.mode,
        max_steps=tc.max_steps,
    )  # fmt: skip
    ctx = build_step(cfg, data, pipeline, dist, precision)
    parts = build_parts(cfg, model=model, data=data, ctx=ctx, schedule=schedule)  # sets ctx.ema, lookahead
    log.info("optimizer %s (%s)", type(optimizer).__name__, optimizer_kernels(optimizer))
    metrics = MetricsWriter(folder, cfg, resumed=resumed, ema=ctx.ema is not None, clip=bool(tc.grad_clip),
                            balanced=bool(ctx.scorer.balanced_classes), enabled=dist.is_main)  # fmt: skip
    return Run(
        cfg=cfg, folder=folder, dist=dist, data=data, model=model, train_model=train_model,
        optimizer=optimizer, schedule=schedule, ctx=ctx,
        tracker=MetricTracker(tc.monitor, tc.mode, tc.min_delta, tc.patience), metrics=metrics,
        config_yaml=config_yaml, parts=parts,
        files=RunCheckpoints(folder, epoch_weights=bool(tc.epoch_checkpoints)),
    )  # fmt: skip


def build_step(cfg: DictConfig, data: DataBundle, pipeline: BatchPipeline, dist: distributed.Dist,
               precision: str) -> StepContext:  # fmt: skip
    """What a step needs besides model and batch, and the run's one :class:`Scorer`."""
    tc, device = cfg.trainer, dist.device
    return StepContext(
        device=device,
        precision=precision,
        pipeline=pipeline,
        criterion=build_criterion(cfg, train_labels=data.train.y, num_classes=len(data.classes)),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "16"),
        grad_clip=tc.grad_clip,
        accumulate=tc.accumulate,
        dist=dist,
        scorer=Scorer(pipeline, device, precision, views=tta_views(tc.tta, data.image_size),
                      batch_size=tc.eval_batch_size, dist=dist,
                      balanced_classes=len(data.classes) if tc.monitor in BALANCED_MONITORS else 0),
        adversary=build_adversary(cfg.augmentation, mean=pipeline.mean, std=pipeline.std),
    )  # fmt: skip


def place_model(model: nn.Module, cfg: DictConfig, data: DataBundle, dist: distributed.Dist, *,
                resumed: bool) -> tuple[nn.Module, bool]:  # fmt: skip
    """The model on its device in the run's memory format (the splits too), SyncBatchNorm'd, fitted to
    the data (data-initialised layers) and compiled as asked; returns it and whether it is channels_last."""
    tc, device = cfg.trainer, dist.device
    model = distributed.prepare(model, dist, sync_batchnorm=tc.sync_batchnorm)
    channels_last = uses_channels_last(model, tc.channels_last)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if channels_last:  # batches sliced from channels_last images come out channels_last: no copy per step
        store_channels_last(data)
    configure_cuda(device, deterministic=bool(tc.deterministic))
    if not resumed:  # a resumed run loads the fitted layers with its weights
        plain = BatchPipeline(data.mean, data.std, device)
        fit_to_data(model, data.train.head(FIT_IMAGES), lambda x: plain(x, train=False))
    if compile_mode(tc.compile):  # in place, so state_dict keys, EMA copies and checkpoints stay the model's
        model.compile(mode=compile_mode(tc.compile))
    return model, channels_last


def describe(model: nn.Module, cfg: DictConfig, data: DataBundle, dist: distributed.Dist, *, precision: str,
             channels_last: bool) -> None:  # fmt: skip
    """Log the model, device and data-parallel setting (and print the layer table with trainer.summary)."""
    tc, device = cfg.trainer, dist.device
    if tc.summary:
        from cnnlab.models.layer_table import format_layer_table, layer_table

        make_console(stderr=True).print(
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


def store_channels_last(data: DataBundle) -> None:
    """Keep every split's images channels_last (a copy, once) when the model runs channels_last.

    Images kept on the host (:class:`HostLoader`: memory-mapped, larger than memory) stay as they are."""
    for loader in {id(x): x for x in (data.train, data.val, data.test) if x is not None}.values():
        if isinstance(loader, HostLoader):
            continue
        loader.x = loader.x.contiguous(memory_format=torch.channels_last)


def optimizer_kernels(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"
