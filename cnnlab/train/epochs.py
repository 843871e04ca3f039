"""The epochs of a run (:func:`fit`): train, validate, checkpoint, stop early; a signal saves the partial
epoch so that a resume continues at the same step."""

from __future__ import annotations

import logging
import signal
import time

import torch

from cnnlab.engine import distributed
from cnnlab.engine.checkpoint import save_checkpoint, save_safetensors
from cnnlab.engine.device import compile_mode
from cnnlab.engine.infer import view_log_probs
from cnnlab.engine.interrupt import Interrupted, SignalGuard
from cnnlab.engine.loop import EpochState, optimizer_steps, score, train_one_epoch
from cnnlab.engine.threads import ThreadChooser
from cnnlab.engine.tracker import is_better
from cnnlab.models.whiten import frozen_parameters
from cnnlab.run.load import weights_of
from cnnlab.run.log import EpochProgress
from cnnlab.train.state import Callback, Run

log = logging.getLogger("cnnlab")


def step_hook(run: Run, threads: ThreadChooser | None = None):
    """What runs after every optimizer step: count it, log the learning rate, the callbacks, time it for
    ``trainer.threads=auto`` (summary.json's ``threads``); and, with trainer.compile, say how long the
    first step took (compiling)."""
    stepped = [cb for cb in run.callbacks if type(cb).on_step is not Callback.on_step]
    if threads is not None:
        run.notes["threads"] = threads.record
        stepped += [threads] if threads.measuring else []
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
