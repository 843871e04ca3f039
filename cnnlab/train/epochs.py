"""The epochs of a run (:func:`fit`): train, validate, checkpoint, stop early; a signal saves the partial
epoch so that a resume continues at the same step."""

from __future__ import annotations

import logging
import signal
import time

from cnnlab.engine.device import compile_mode
from cnnlab.engine.interrupt import Interrupted, SignalGuard
from cnnlab.engine.loop import EpochState, optimizer_steps, train_one_epoch
from cnnlab.engine.threads import ThreadChooser
from cnnlab.models.whiten import frozen_parameters
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
    stop_reason, epoch, weights, parts = "max_epochs", start_epoch - 1, "raw", list(run.parts.values())
    if epoch and partial is None and run.tracker.should_stop:  # it had stopped early before this resume
        return "early_stop", epoch, best_row
    steps_per_epoch = optimizer_steps(data.train, tc.accumulate)
    try:
        with guard.polling("training"):
            # Every rank stops at the same step (a signal may reach only some of them).
            ctx.should_stop = (lambda: dist.any(guard.requested())) if dist.enabled else guard.requested
            for epoch in range(start_epoch, tc.max_epochs + 1):
                t0 = time.perf_counter()
                for part in parts:
                    part.on_epoch_start(run, epoch)
                data.train.set_epoch(epoch)
                last_steps = cut_to_max_steps(run, epoch, steps_per_epoch)
                ctx.frozen = frozen_parameters(run.model, epoch)
                lr = run.schedule.lr if partial is None else partial.lr
                state, partial = partial or EpochState(lr=lr), None
                try:
                    stats = train_one_epoch(
                        run.train_model, data.train, run.optimizer, run.schedule, ctx, epoch=epoch,
                        state=state, progress=progress.start(epoch, tc.max_epochs, len(data.train)),
                    )  # fmt: skip
                finally:
                    progress.stop()
                if state.interrupted:
                    save_interrupted(run, epoch, weights, state, guard.signum)
                row, is_best = close_epoch(run, epoch, lr, stats, t0)
                best_row, weights = row if is_best else best_row, row["weights"]
                stop_reason = "max_steps" if last_steps else "early_stop" if run.tracker.should_stop else None
                if stop_reason:
                    break
            else:
                stop_reason = "max_epochs"
    finally:
        progress.stop()
        run.metrics.flush()
    if stop_reason == "early_stop":
        tracker = run.tracker
        log.info("early stop: %s did not improve by more than %g for %d epochs (best %.4f at epoch %d)",
                 tc.monitor, tc.min_delta, tracker.wait, tracker.best, tracker.best_epoch)  # fmt: skip
    return stop_reason, epoch, best_row


def close_epoch(run: Run, epoch: int, lr: float, stats: dict, started: float) -> tuple[dict, bool]:
    """After an epoch's steps: the parts' hooks around validation, the schedule, the tracker (best
    epoch, early stopping), metrics.csv, the checkpoints, the log and the callbacks, in that order;
    return the epoch's metrics row and whether it is the best so far."""
    parts = run.parts.values()
    for part in parts:
        part.on_train_end(run, epoch)
    row, value, weights = score_epoch(run, epoch, lr, stats)
    said = [part.on_epoch_end(run, epoch, row) for part in parts]  # before last.pt, which saves it
    row["seconds"] = time.perf_counter() - started
    run.schedule.step_epoch(value)
    is_best = run.tracker.update(value, epoch, {k: v for k, v in row.items() if k.endswith("acc")})
    run.metrics.write(row)
    save_epoch(run, epoch, weights, is_best=is_best)
    log_epoch(row, run.cfg.trainer.max_epochs, ema=run.ctx.ema is not None, is_best=is_best)
    for line in filter(None, said):
        log.info("%s", line)
    for cb in run.callbacks:
        cb.on_epoch_end(run, row, value)
    return row, is_best


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
    """``last.pt`` every epoch, ``best.pt`` on a new best (see :class:`RunCheckpoints`): every rank
    hands over its state, rank 0 alone writes."""
    states = run.states()
    if run.dist.is_main:
        run.files.save_epoch(states, run.record(epoch, weights), is_best=is_best)


def save_interrupted(run: Run, epoch: int, weights: str, state: EpochState, signum: int | None):
    """Save the partial epoch in ``last.pt`` (rank 0, with every rank's sums) and raise Interrupted."""
    if run.dist.enabled:
        state.loss_sum, state.correct, seen = run.dist.totals(state.loss_sum, state.correct, state.seen)
        state.seen = int(seen)
    states = run.states(partial=state)  # every rank: its random streams are gathered
    if run.dist.is_main:
        run.files.save_partial(states, run.record(epoch - 1, weights))
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
    t1 = time.perf_counter()
    val = run.ctx.scorer.score(run.model, run.data.val)
    row = {
        "epoch": epoch, "lr": lr, **stats, **{f"val_{k}": v for k, v in val.items()},
        "img_per_s": stats["images"] / max(stats["data_s"] + stats["compute_s"], 1e-9),
    }  # fmt: skip
    scored = {"raw": val}
    if run.ctx.ema is not None:
        scored["ema"] = run.ctx.scorer.score(run.ctx.ema.module, run.data.val)
        row.update({f"ema_val_{k}": v for k, v in scored["ema"].items()})
    weights, value = run.tracker.pick(scored)  # the one rule for "better"
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
