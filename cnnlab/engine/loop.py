"""One training epoch, readable top to bottom (scoring: :class:`cnnlab.engine.infer.Scorer`).

:func:`micro_step` is the training step itself (forward, loss, backward and, at the end of an
accumulation group, clipping, the optimizer step through the scaler, the schedule, the EMA and the
lookahead); :func:`train_one_epoch` keeps the timing, the epoch's totals and the signal polling around
it. A step never waits for the device: what the epoch reports is reduced once, at its end.
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
from cnnlab.engine.infer import Scorer
from cnnlab.engine.lookahead import Lookahead
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
    scorer: Scorer | None = None  # validation and every other scoring of the run (engine.infer)
    on_step: Callable[[], None] | None = None  # after every optimizer step (logging, callbacks)
    should_stop: Callable[[], bool] | None = None  # polled after every optimizer step (signals)
    frozen: list[torch.Tensor] = field(default_factory=list)  # parameters whose gradients are dropped
    lookahead: Lookahead | None = None  # pulls the weights towards a slow copy every k steps
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


def clear_grads(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its wrapper (torch._dynamo's disable guard cost
    ~35 us a call on a CPU, a tenth of a tiny model's step)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def micro_step(model, x, targets, optimizer, schedule, ctx: StepContext, *, weight: float, boundary: bool):
    """Forward, loss and backward of one micro-batch, the loss weighted by its share of the group; on
    the group's last micro-batch (``boundary``) also drop the frozen parameters' gradients, clip, step
    the optimizer and the schedule, update the EMA and the lookahead. ``targets`` are the labels, or
    ``(y_a, y_b, lam)`` for a mixed batch. Returns the detached loss and logits and the gradient norm
    before clipping (a tensor: no host sync; None unclipped)."""
    # DDP: all-reduce gradients only on the micro-batch that ends an accumulation group.
    sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
    scaler = ctx.scaler if ctx.scaler.is_enabled() else None  # disabled: skip its Python per step
    with sync:
        with autocast(ctx.device, ctx.precision):
            logits = model(x)
            if isinstance(targets, tuple):
                loss = mixed_loss(ctx.criterion, logits, *targets)
            else:
                loss = ctx.criterion(logits, targets)
        scaled = loss * weight if weight != 1.0 else loss
        (scaler.scale(scaled) if scaler else scaled).backward()
    grad_norm = None
    if boundary:
        for p in ctx.frozen:  # e.g. a whitening bias past its epochs: computed, never applied
            p.grad = None
        if ctx.grad_clip:
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        clear_grads(optimizer)
        schedule.step_batch()
        if ctx.ema is not None:
            ctx.ema.update(model)
        if ctx.lookahead is not None:
            ctx.lookahead.step(schedule.steps)
    return loss.detach(), logits.detach(), grad_norm


class EpochTotals:
    """What each step of an epoch leaves for the epoch's statistics, kept as references on the device:
    the step's loss, its predicted classes and labels. Reduced once, at the end, so no step pays for
    the sums (a few kernels on a GPU, and a host sync when the loss was checked per step)."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.preds: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.losses.append(loss)
        self.sizes.append(len(labels))
        self.preds.append(logits.argmax(1))
        self.labels.append(labels)

    def fold_into(self, state: EpochState, device: torch.device, first_step: int) -> None:
        """Add the steps to the state's running sums and its first non-finite step (a few kernels)."""
        if not self.losses:
            return
        losses = torch.stack(self.losses).float()
        sizes = torch.tensor(self.sizes, dtype=torch.float32).to(device, non_blocking=True)
        # A running sum in step order (cumsum), as a step-by-step += gave: a run resumed mid-epoch then
        # sums exactly as an uninterrupted one does.
        start = torch.as_tensor(state.loss_sum, dtype=torch.float32, device=device).view(1)
        state.loss_sum = torch.cat([start, losses * sizes]).cumsum(0)[-1]
        hits = (torch.cat(self.preds) == torch.cat(self.labels)).sum()
        state.correct = torch.as_tensor(state.correct, device=device) + hits
        never = torch.iinfo(torch.long).max
        steps = torch.arange(first_step, first_step + len(losses), device=device)
        bad = torch.where(torch.isfinite(losses), never, steps).min()
        earlier = torch.as_tensor(state.first_bad_step, device=device)
        state.first_bad_step = torch.where(earlier >= 0, earlier, torch.where(bad == never, -1, bad))


def train_one_epoch(
    model, loader, optimizer, schedule, ctx: StepContext, *, epoch: int, state: EpochState, progress=None
) -> dict:
    """Train over ``loader`` from ``state.step`` on, updating ``state``; returns the epoch's statistics.

    Stops early, with ``state.interrupted`` set, when ``ctx.should_stop()`` turns true after an
    optimizer step, so the caller can checkpoint a state that resumes exactly. Nothing in a step waits
    for the device: losses, accuracies and the divergence check are reduced once, at the end.
    """
    model.train()
    # Each micro-batch's loss weight, only where it is not 1 (accumulation, several processes).
    groups = group_sizes(loader, ctx.accumulate) if ctx.accumulate > 1 or ctx.dist.world_size > 1 else None
    augment = getattr(ctx.pipeline, "augment", None)
    mixing = augment is not None and augment.mixes
    totals, first_step, steps = EpochTotals(), state.step, len(loader)
    clear_grads(optimizer)
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
        boundary = (step + 1) % ctx.accumulate == 0 or step + 1 == steps
        weight = 1.0 if groups is None else len(yb) * ctx.dist.world_size / groups[step // ctx.accumulate]
        loss, logits, grad_norm = micro_step(model, x, targets, optimizer, schedule, ctx, weight=weight,
                                             boundary=boundary)  # fmt: skip
        totals.add(loss, logits, yb)
        state.seen += len(yb)
        state.step = step + 1
        if grad_norm is not None:
            state.grad_norm = grad_norm
        if boundary:
            if ctx.on_step is not None:
                ctx.on_step()
            if ctx.should_stop is not None and ctx.should_stop() and state.step < steps:
                state.interrupted = True
        if progress is not None:
            progress(state.step, steps, loss)
        t = time.perf_counter()
        state.compute_s += t - t_data
        if state.interrupted:
            break
    totals.fold_into(state, ctx.device, first_step)
    return epoch_stats(state, ctx, epoch=epoch, lr=schedule.lr)


def epoch_stats(state: EpochState, ctx: StepContext, *, epoch: int, lr: float) -> dict:
    """The epoch's statistics over all ranks (one sync); a DivergedError when the loss is not finite."""
    state.grad_norm = float(state.grad_norm)
    total_loss, total_correct, seen = ctx.dist.totals(state.loss_sum, state.correct, state.seen)  # one sync
    train_loss = total_loss / max(seen, 1)
    if not math.isfinite(train_loss):
        bad = int(state.first_bad_step)
        raise DivergedError(
            f"Training diverged in epoch {epoch} at step {bad + 1 if bad >= 0 else '?'}: the loss became "
            f"{'nan' if math.isnan(train_loss) else 'inf'} with learning rate {lr:.3g}; "
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
