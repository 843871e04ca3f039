"""One training epoch and one scoring pass, readable top to bottom.

:func:`micro_step` is the training step itself (forward, loss, backward and, at the end of an
accumulation group, clipping, the optimizer step through the scaler, the schedule and the EMA);
:func:`train_one_epoch` keeps the timing, the running totals and the signal polling around it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from cnnlab.engine.adversarial import Adversary
from cnnlab.engine.device import autocast
from cnnlab.engine.distributed import Dist
from cnnlab.engine.ema import ModelEMA
from cnnlab.engine.infer import view_log_probs
from cnnlab.engine.losses import mixed_loss
from cnnlab.errors import CnnlabError


class DivergedError(CnnlabError):
    """The loss became NaN or infinite."""

    exit_code = 3


@dataclass
class StepContext:
    """What a step needs besides model and batch: built once per run by the trainer."""

    device: torch.device
    precision: str
    pipeline: Callable  # cnnlab.data.loader.BatchPipeline: uint8 batch -> augmented, normalised input
    criterion: nn.Module
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))
    grad_clip: float | None = None
    ema: ModelEMA | None = None
    accumulate: int = 1  # micro-batches per optimizer step
    dist: Dist = field(default_factory=Dist)  # data-parallel processes (sums of counts over them)
    eval_views: list[Callable] = field(default_factory=list)  # test-time augmentation (engine.tta)
    on_step: Callable[[], None] | None = None  # after every optimizer step (logging, callbacks)
    should_stop: Callable[[], bool] | None = None  # polled after every optimizer step (signals)
    adversary: Adversary | None = None  # augmentation.adversarial: replaces part of each batch


@dataclass
class EpochState:
    """Running totals of one training epoch; checkpointed when a run is interrupted mid-epoch."""

    lr: float = float("nan")  # at the start of the epoch, for metrics.csv
    step: int = 0  # micro-batches done
    loss_sum: torch.Tensor | float = 0.0
    correct: torch.Tensor | int = 0
    seen: int = 0
    data_s: float = 0.0
    compute_s: float = 0.0
    grad_norm: torch.Tensor | float = float("nan")
    first_bad_step: torch.Tensor | int = -1  # first step whose loss was not finite
    interrupted: bool = field(default=False, compare=False)

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "interrupted"}


def group_sizes(loader, accumulate: int) -> list[int]:
    """Samples in each optimizer step's group of ``accumulate`` micro-batches (the last may be short).

    Each micro-batch's mean loss is weighted by its share of its group, so accumulating k batches of
    b gives the gradient of one batch of k*b, partial last group included. Under DDP the sizes are
    global and each rank's share is scaled by the world size, since DDP averages over ranks.
    """
    n, bs = loader.num_samples, loader.batch_size
    sizes = [min(bs, n - i * bs) for i in range(len(loader))]
    return [sum(sizes[g : g + accumulate]) for g in range(0, len(sizes), accumulate)]


def optimizer_steps(loader, accumulate: int) -> int:
    return -(-len(loader) // accumulate)


def micro_step(model, x, targets, optimizer, schedule, ctx: StepContext, *, weight: float, boundary: bool):
    """Forward, loss and backward of one micro-batch, the loss weighted by its share of the group; on
    the group's last micro-batch (``boundary``) also clip, step the optimizer and the schedule, update
    the EMA. ``targets`` are the labels, or ``(y_a, y_b, lam)`` for a mixed batch. Returns the detached
    loss and logits and the gradient norm before clipping (a tensor: no host sync; None unclipped)."""
    # DDP: all-reduce gradients only on the micro-batch that ends an accumulation group.
    sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
    with sync:
        with autocast(ctx.device, ctx.precision):
            logits = model(x)
            if isinstance(targets, tuple):
                loss = mixed_loss(ctx.criterion, logits, *targets)
            else:
                loss = ctx.criterion(logits, targets)
        ctx.scaler.scale(loss * weight if weight != 1.0 else loss).backward()
    grad_norm = None
    if boundary:
        if ctx.grad_clip:
            ctx.scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        schedule.step_batch()
        if ctx.ema is not None:
            ctx.ema.update(model)
    return loss.detach(), logits.detach(), grad_norm


def train_one_epoch(
    model, loader, optimizer, schedule, ctx: StepContext, *, epoch: int, state: EpochState, progress=None
) -> dict:
    """Train over ``loader`` from ``state.step`` on, updating ``state``; returns the epoch's statistics.

    Stops early, with ``state.interrupted`` set, when ``ctx.should_stop()`` turns true after an
    optimizer step, so the caller can checkpoint a state that resumes exactly.
    """
    model.train()
    device = ctx.device
    loss_sum = torch.as_tensor(state.loss_sum, device=device, dtype=torch.float32)
    correct = torch.as_tensor(state.correct, device=device, dtype=torch.long)
    first_bad = torch.as_tensor(state.first_bad_step, device=device, dtype=torch.long)
    groups = group_sizes(loader, ctx.accumulate)
    augment = getattr(ctx.pipeline, "augment", None)
    mixing = augment is not None and augment.mixes
    optimizer.zero_grad(set_to_none=True)
    t = time.perf_counter()
    for step, (xb, yb) in enumerate(loader.batches(start=state.step), start=state.step):
        x = ctx.pipeline(xb, train=True)
        if ctx.adversary is not None:
            x = ctx.adversary.perturb(model, x, yb, ctx)
        targets = yb
        if mixing:
            x, y_a, y_b, lam = augment.mix(x, yb, ctx.pipeline.generator)
            targets = (y_a, y_b, lam)
        t_data = time.perf_counter()
        state.data_s += t_data - t
        n = len(yb)
        boundary = (step + 1) % ctx.accumulate == 0 or step + 1 == len(loader)
        weight = n * ctx.dist.world_size / groups[step // ctx.accumulate]  # 1.0: one process, no accumulation
        loss, logits, grad_norm = micro_step(model, x, targets, optimizer, schedule, ctx, weight=weight,
                                             boundary=boundary)  # fmt: skip
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
        loss_sum += loss.float() * n
        correct += (logits.argmax(1) == yb).sum()
        state.seen += n
        state.step = step + 1
        if grad_norm is not None:
            state.grad_norm = grad_norm
        if boundary:
            if ctx.on_step is not None:
                ctx.on_step()
            if ctx.should_stop is not None and ctx.should_stop() and state.step < len(loader):
                state.interrupted = True
        if progress is not None:
            progress(state.step, len(loader), loss)
        t = time.perf_counter()
        state.compute_s += t - t_data
        if state.interrupted:
            break
    state.loss_sum, state.correct, state.first_bad_step = loss_sum, correct, first_bad
    state.grad_norm = float(state.grad_norm)
    total_loss, total_correct, seen = ctx.dist.totals(loss_sum, correct, state.seen)  # one sync per epoch
    train_loss = total_loss / max(seen, 1)
    if not math.isfinite(train_loss):
        bad = int(first_bad)
        raise DivergedError(
            f"Training diverged in epoch {epoch} at step {bad + 1 if bad >= 0 else '?'}: the loss became "
            f"{'nan' if math.isnan(train_loss) else 'inf'} with learning rate {schedule.lr:.3g}; "
            "lower optimizer.lr or set trainer.grad_clip."
        )
    return {
        "train_loss": train_loss,
        "train_acc": total_correct / max(seen, 1),
        "grad_norm": state.grad_norm,
        "data_s": state.data_s,
        "compute_s": state.compute_s,
        "images": int(seen),
    }


@torch.no_grad()
def score(model, loader, ctx: StepContext) -> dict:
    """Mean cross-entropy (without label smoothing) and accuracy over ``loader`` (all ranks' shards),
    of the probabilities averaged over ``ctx.eval_views`` when test-time augmentation is on."""
    model.eval()
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    seen = 0
    for xb, yb in loader:
        if not len(yb):  # a rank's slice of a final batch smaller than the world size
            continue
        log_probs = view_log_probs(model, xb, pipeline=ctx.pipeline, device=ctx.device,
                                   precision=ctx.precision, views=ctx.eval_views)  # fmt: skip
        loss_sum += nn.functional.nll_loss(log_probs, yb, reduction="sum")
        correct += (log_probs.argmax(1) == yb).sum()
        seen += len(yb)
    loss_sum, correct, seen = ctx.dist.totals(loss_sum, correct, seen)
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1)}
