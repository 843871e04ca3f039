"""``train(cfg, run_dir) -> summary``: the whole run, top to bottom, independent of the CLI.

:func:`build_run` builds every part once (:class:`Run`), :func:`fit` runs the epochs, :func:`finish`
scores the best weights on the test split once and hands the same probabilities to the report.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import nn

from cnnlab.build import (
    build_adversary,
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
from cnnlab.data.mmap import HostLoader
from cnnlab.data.pseudo import PseudoLabels, read_pool
from cnnlab.data.registry import DataBundle, build_data
from cnnlab.engine import distributed
from cnnlab.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_safetensors,
    set_rng_state,
)
from cnnlab.engine.device import compile_mode, configure_cpu, configure_cuda, resolve_precision
from cnnlab.engine.ema import ModelEMA
from cnnlab.engine.finetune import Freezer
from cnnlab.engine.infer import view_log_probs
from cnnlab.engine.interrupt import Interrupted, SignalGuard, StopRequested
from cnnlab.engine.lookahead import Lookahead
from cnnlab.engine.loop import EpochState, StepContext, optimizer_steps, score, train_one_epoch
from cnnlab.engine.metrics import BALANCED_MONITORS
from cnnlab.engine.schedulers import Schedule
from cnnlab.engine.swa import WeightAverage
from cnnlab.engine.tracker import MetricTracker, is_better
from cnnlab.engine.tta import tta_views
from cnnlab.errors import CheckpointError
from cnnlab.models.whiten import fit_to_data, frozen_parameters
from cnnlab.run.layout import SWA_WEIGHTS, RunDir
from cnnlab.run.load import Predictor, load_state_strict, read_checkpoint_config, weights_of
from cnnlab.run.log import EpochProgress, result_table, setup_logging, use_rich
from cnnlab.run.loggers import uses_tensorboard
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

    def on_start(self, run: Run) -> None: ...

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
    freezer: Freezer  # trainer.freeze_epochs: the backbone frozen for the first epochs
    callbacks: tuple[Callback, ...] = ()
    swa: WeightAverage | None = None  # trainer.swa_start
    pseudo: PseudoLabels | None = None  # trainer.pseudo_label
    notes: dict = field(default_factory=dict)  # added to summary.json (SWA, pseudo-labels)

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
        if self.ctx.lookahead is not None:  # at an epoch's end the weights are the slow copy
            state["lookahead"] = self.ctx.lookahead.state_dict()
        if self.swa is not None:
            state["swa"] = self.swa.state_dict()
        if self.pseudo is not None:
            state["pseudo"] = self.pseudo.state_dict()
        if partial is not None:
            state["partial"] = partial.state_dict()
        return state

    def restore(self, resumed: dict) -> tuple[int, EpochState | None, dict]:
        """Load a ``last.pt``; return the epoch to start at, the partial epoch (or None) and the best row."""
        path = self.folder.last
        optional = {
            "ema": self.ctx.ema,
            "lookahead": self.ctx.lookahead,
            "swa": self.swa,
            "pseudo": self.pseudo,
        }
        missing = [k for k in (*RESUME_KEYS, *(k for k, v in optional.items() if v)) if k not in resumed]
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
            if self.ctx.lookahead is not None:
                self.ctx.lookahead.load_state_dict(resumed["lookahead"])
            if self.swa is not None:
                self.swa.load_state_dict(resumed["swa"])
            if self.pseudo is not None:
                self.pseudo.load_state_dict(resumed["pseudo"])
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
    freezer = Freezer(model, tc.get("freeze_epochs", 0))  # after SyncBatchNorm replaced BatchNorm modules
    channels_last = has_conv(model) if tc.channels_last is None else bool(tc.channels_last)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if channels_last:  # batches sliced from channels_last images come out channels_last: no copy per step
        store_channels_last(data)
    configure_cuda(device, deterministic=bool(tc.deterministic))
    if not resumed:  # a resumed run loads the fitted layers with its weights
        plain = BatchPipeline(data.mean, data.std, device)
        fit_to_data(model, data.train.head(FIT_IMAGES), lambda x: plain(x, train=False))
    if compile_mode(tc.compile):  # in place, so state_dict keys, EMA copies and checkpoints stay the model's
        model.compile(mode=compile_mode(tc.compile))
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
    steps_per_epoch = optimizer_steps(data.train, tc.accumulate)
    schedule = build_schedule(
        optimizer, cfg.scheduler, steps_per_epoch=steps_per_epoch, max_epochs=tc.max_epochs, mode=tc.mode,
        max_steps=tc.max_steps,
    )  # fmt: skip
    ctx = StepContext(
        device=device,
        precision=precision,
        pipeline=pipeline,
        criterion=build_criterion(cfg, train_labels=data.train.y, num_classes=len(data.classes)),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "16"),
        grad_clip=tc.grad_clip,
        ema=ModelEMA(model, tc.ema) if tc.ema else None,
        lookahead=build_lookahead(model, tc, steps_per_epoch, schedule.total_steps),
        accumulate=tc.accumulate,
        dist=dist,
        eval_views=tta_views(tc.tta, data.image_size),
        balanced_classes=len(data.classes) if tc.monitor in BALANCED_MONITORS else 0,
        adversary=build_adversary(cfg.augmentation, mean=pipeline.mean, std=pipeline.std),
    )
    log.info("optimizer %s (%s)", type(optimizer).__name__, optimizer_kernels(optimizer))
    metrics = MetricsWriter(folder, cfg, resumed=resumed, ema=ctx.ema is not None, clip=bool(tc.grad_clip),
                            balanced=bool(ctx.balanced_classes), enabled=dist.is_main)  # fmt: skip
    return Run(
        cfg=cfg, folder=folder, dist=dist, data=data, model=model, train_model=train_model,
        optimizer=optimizer, schedule=schedule, ctx=ctx,
        tracker=MetricTracker(tc.monitor, tc.mode, tc.min_delta, tc.patience), metrics=metrics,
        config_yaml=config_yaml, freezer=freezer, pseudo=build_pseudo(cfg, data),
        swa=WeightAverage(model, tc.swa_start) if tc.swa_start else None,
    )  # fmt: skip


def store_channels_last(data: DataBundle) -> None:
    """Keep every split's images channels_last (a copy, once) when the model runs channels_last.

    Images kept on the host (:class:`HostLoader`: memory-mapped, larger than memory) stay as they are."""
    for loader in {id(x): x for x in (data.train, data.val, data.test) if x is not None}.values():
        if isinstance(loader, HostLoader):
            continue
        loader.x = loader.x.contiguous(memory_format=torch.channels_last)


def build_lookahead(model: nn.Module, tc: DictConfig, steps_per_epoch: int, total_steps: int):
    la = tc.lookahead
    if not la.every:
        return None
    return Lookahead(model, every=la.every, alpha=la.alpha, power=la.power,
                     start_step=la.start_epoch * steps_per_epoch, total_steps=total_steps)  # fmt: skip


def optimizer_kernels(optimizer: torch.optim.Optimizer) -> str:
    group = optimizer.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "for-loop"


def build_pseudo(cfg: DictConfig, data: DataBundle) -> PseudoLabels | None:
    """The unlabeled pool of ``trainer.pseudo_label`` (None when off)."""
    pl = cfg.trainer.pseudo_label
    if pl.data is None:
        return None
    pool = read_pool(str(pl.data), test=data.test, channels=data.channels, size=data.image_size,
                     num_workers=cfg.dataset.num_workers or 1)  # fmt: skip
    if pl.data == "test" and data.test_labeled:
        log.warning("pseudo-labelling the labeled test split (its labels unused): the test accuracy is no "
                    "longer that of unseen images")  # fmt: skip
    return PseudoLabels(pl, pool, data.train)


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
        for cb in run.callbacks:
            cb.on_start(run)
        run.ctx.on_step = step_hook(run)
        if not resumed and dist.is_main:
            record = provenance(overrides=overrides or [], seed=cfg.seed, data_files=run.data.files,
                                device=dist.device)  # fmt: skip
            folder.write_provenance(record)
        try:
            start_epoch, partial, best_row = run.restore(resumed) if resumed else (1, None, {})
            stop_reason, epoch, best_row = fit(run, start_epoch, partial, best_row, rich=rich, guard=guard)
            guard.enter("testing")
            return finish(run, epoch=epoch, stop_reason=stop_reason, best_row=best_row, started=started,
                          overrides=overrides, rich=rich, guard=guard)  # fmt: skip
        except BaseException as exc:
            run.metrics.abort(exc)  # trackers record the run as failed (or stopped), not as still running
            raise


def step_hook(run: Run):
    """What runs after every optimizer step: count it, log the learning rate, the callbacks; and, with
    trainer.compile, say how long the first step took (compiling)."""
    stepped = [cb for cb in run.callbacks if type(cb).on_step is not Callback.on_step]
    optimizer, metrics = run.optimizer, run.metrics
    started, first = time.perf_counter(), [bool(compile_mode(run.cfg.trainer.compile))]

    def on_step() -> None:
        metrics.step(optimizer.param_groups[0]["lr"])
        for cb in stepped:
            cb.on_step(run)
        if first[0]:
            first[0] = False
            log.info("torch.compile: the first step took %.1f s (compiling)", time.perf_counter() - started)

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
    steps_per_epoch = optimizer_steps(data.train, tc.accumulate)
    try:
        with guard.polling("training"):
            # Every rank stops at the same step (a signal may reach only some of them).
            ctx.should_stop = (lambda: dist.any(guard.requested())) if dist.enabled else guard.requested
            for epoch in range(start_epoch, tc.max_epochs + 1):
                t0 = time.perf_counter()
                if run.freezer.at_epoch(epoch) and dist.enabled:  # DDP registers trainable parameters
                    run.train_model = distributed.wrap(run.model, dist)
                data.train.set_epoch(epoch)
                last_steps = cut_to_max_steps(run, epoch, steps_per_epoch)
                ctx.frozen = frozen_parameters(run.model, epoch)
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
                if ctx.lookahead is not None:
                    ctx.lookahead.sync()  # validate and keep the slow weights
                row, value, weights = score_epoch(run, epoch, lr, stats)
                if run.swa is not None:
                    run.swa.update(run.model, epoch)
                labelled = pseudo_round(run, epoch, weights)  # before the checkpoint, which saves it
                row["seconds"] = time.perf_counter() - t0
                run.schedule.step_epoch(value)
                is_best = run.tracker.update(value, epoch)
                run.metrics.write(row)
                if is_best:
                    best_row = row
                if dist.is_main:  # rank 0 alone writes checkpoints
                    save_epoch(run, epoch, weights, is_best=is_best)
                log_epoch(row, tc.max_epochs, ema=ctx.ema is not None, is_best=is_best)
                if labelled:
                    log.info("%s", labelled)
                for cb in run.callbacks:
                    cb.on_epoch_end(run, row, value)
                if last_steps:
                    stop_reason = "max_steps"
                    break
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


def cut_to_max_steps(run: Run, epoch: int, steps_per_epoch: int) -> bool:
    """With ``trainer.max_steps``: shorten ``epoch`` to the optimizer steps left (the schedule was built
    for that many); True when the run ends with this epoch. The same for a run resumed in it."""
    max_steps, accumulate = run.cfg.trainer.max_steps, run.ctx.accumulate
    if not max_steps:
        return False
    left = max_steps - (epoch - 1) * steps_per_epoch
    if left * accumulate < len(run.data.train):
        run.data.train.limit = left * accumulate
    return left <= steps_per_epoch


def save_epoch(run: Run, epoch: int, weights: str, *, is_best: bool) -> None:
    """``last.pt`` every epoch; on a new best also ``best.pt`` and ``best.safetensors`` (the better
    weights alone, with the record as metadata)."""
    ckpt = run.checkpoint(epoch, weights)
    if is_best:
        metadata = run.record(epoch, weights).to_metadata()
        save_safetensors(weights_of(ckpt), metadata, run.folder.best_safetensors)
    if run.cfg.trainer.epoch_checkpoints:  # for checkpoint averaging: cnnlab export average=[...]
        metadata = run.record(epoch, weights).to_metadata()
        save_safetensors(weights_of(ckpt), metadata, run.folder.epoch_weights(epoch))
    save_checkpoint(ckpt, *((run.folder.best,) if is_best else ()), run.folder.last)  # one serialisation


def pseudo_round(run: Run, epoch: int, weights: str) -> str | None:
    """After a round's epoch: label the pool with the weights that scored the epoch, extend the training
    split with the confident ones and write pseudo_labels.csv; return the line to log (counts per class)."""
    pseudo, ctx = run.pseudo, run.ctx
    if pseudo is None or not pseudo.due(epoch):
        return None
    model = ctx.ema.module if weights == "ema" else run.model
    model.eval()
    with torch.no_grad():
        probs = torch.cat([
            view_log_probs(model, pseudo.pool[i : i + 1000], pipeline=ctx.pipeline, device=ctx.device,
                           precision=ctx.precision, views=ctx.eval_views).exp()
            for i in range(0, len(pseudo.pool), 1000)
        ])  # fmt: skip
    row = pseudo.take(probs, epoch, run.data.classes)
    if run.dist.is_main:
        run.folder.write_pseudo_labels(pseudo.history)
    per_class = ", ".join(f"{c} {row[c]}" for c in run.data.classes)
    return (
        f"pseudo-labels round {row['round']} after epoch {epoch}: {row['added']} of {row['pool']} images "
        f"at confidence >= {pseudo.threshold:g} ({per_class})"
    )


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
        "epoch": epoch, "lr": lr, **stats, **{f"val_{k}": v for k, v in val.items()},
        "img_per_s": stats["images"] / max(stats["data_s"] + stats["compute_s"], 1e-9),
    }  # fmt: skip
    value, weights = row[tc.monitor], "raw"
    if run.ctx.ema is not None:
        ema_val = score(run.ctx.ema.module, run.data.val, run.ctx)
        row.update({f"ema_val_{k}": v for k, v in ema_val.items()})
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


def average_weights(run: Run, epoch: int) -> bool:
    """SWA: recompute the BatchNorm statistics of the averaged weights on the training images and
    validate them; when they beat the best epoch they become ``best.pt`` (weights ``swa``): return
    whether they did."""
    swa, tracker, tc = run.swa, run.tracker, run.cfg.trainer
    if swa is None:
        return False
    if swa.count == 0:
        log.warning("swa: no epoch reached trainer.swa_start=%d; nothing averaged", swa.start)
        return False
    model = swa.recompute_bn(run.ctx.pipeline(xb, train=False) for xb, _ in run.data.train)
    val = score(model, run.data.val, run.ctx)
    value = float(val["loss"] if tc.monitor == "val_loss" else val["acc"])
    run.notes.update(swa_epochs=swa.count, swa_val_acc=float(val["acc"]), swa_val_loss=float(val["loss"]))
    better = is_better(value, tracker.best, tc.mode)
    log.info("swa: the mean of epochs %d-%d scores %s %.4f (best single epoch %.4f)%s", swa.start, epoch,
             tc.monitor, value, tracker.best, ", kept as best.pt" if better else "")  # fmt: skip
    if run.dist.is_main:  # kept either way, for evaluate/predict ckpt=<run>/checkpoints/swa.safetensors
        metadata = run.record(epoch, "swa").to_metadata()
        save_safetensors(model.state_dict(), metadata, run.folder.checkpoint(SWA_WEIGHTS))
    if better and run.dist.is_main:
        save_checkpoint({**run.checkpoint(epoch, "swa"), "model": model.state_dict()}, run.folder.best)
        save_safetensors(model.state_dict(), metadata, run.folder.best_safetensors)
    if better:
        tracker.best, tracker.best_epoch = value, epoch
    return better


def finish(
    run: Run, *, epoch: int, stop_reason: str, best_row: dict, started: float, overrides, rich: bool,
    guard: SignalGuard,
):  # fmt: skip
    """Score the best weights on the test split once (rank 0), write summary.json, and hand the same
    images and probabilities to the report; print the summary; return it."""
    cfg, tc, dist, tracker, data = run.cfg, run.cfg.trainer, run.dist, run.tracker, run.data
    swa_best = average_weights(run, epoch)  # every rank: validation sums over all of them
    dist.barrier()  # rank 0 has written best.pt (run directories are on a shared file system)
    if not dist.is_main:
        return {"status": "finished", "best_value": tracker.best}
    best_weights = "raw"
    # The last epoch's raw weights are the best ones and still in the model: no need to read best.pt.
    in_memory = not swa_best and best_row.get("weights") == "raw" and tracker.best_epoch == epoch
    if run.folder.best.exists() and not in_memory:
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
    if best_weights == "swa":
        summary["best_val_acc"] = run.notes["swa_val_acc"]
    if run.pseudo is not None:  # images added per round (pseudo_labels.csv has the classes)
        run.notes["pseudo_labels"] = [r["added"] for r in run.pseudo.history]
    summary.update(run.notes)
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
        write_train_report(run.folder, test, tensorboard=uses_tensorboard(cfg))
    return summary
