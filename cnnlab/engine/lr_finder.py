"""The learning-rate range test (Smith 2015, as fastai's and Lightning's lr_find run it), without file I/O.

:func:`range_test` trains the run's own model on its own batches (pipeline, augmentation, precision,
accumulation, gradient clipping) while the learning rate rises exponentially from ``start_lr`` to
``end_lr`` over ``steps`` optimizer steps, recording each step's loss. The loss is smoothed with a
debiased exponential moving average; the test stops early once the smoothed loss exceeds ``diverge``
times its minimum (or a loss is not finite): past that point the curve says nothing.

:func:`suggest` reads a learning rate off the smoothed curve by one of three rules:

- ``steepest`` (Lightning's, cnnlab's default): where the loss falls fastest per decade of learning
  rate, before its minimum;
- ``valley`` (fastai's default): the longest stretch over which the loss keeps falling (the longest
  decreasing subsequence of the curve), and the rate halfway along it. A long flat start (an adaptive
  optimizer from 1e-7) lengthens the stretch and pulls the suggestion into the flat part;
- ``minimum``: the rate of the lowest loss, divided by 10 (the old rule of thumb: the minimum is already
  on the edge of divergence).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from cnnlab.engine.loop import StepContext, micro_step
from cnnlab.errors import ConfigError

RULES = ("steepest", "valley", "minimum")
MIN_STEPS = 10
MIN_POINTS = 5  # recorded steps below which no rule can read the curve


@dataclass
class RangeTest:
    """The learning rate of every step, its loss, the smoothed loss, and why the test ended."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    diverged: bool = False  # stopped early: the smoothed loss passed diverge x its minimum, or not finite


def check_range(*, start_lr: float, end_lr: float, steps: int, diverge: float, smoothing: float, rule: str):
    """The range test's options, before any data is read; one line naming the option otherwise."""
    if not start_lr > 0:
        raise ConfigError(f"lr_find.start_lr must be greater than 0, got {start_lr}.")
    if not end_lr > start_lr:
        raise ConfigError(f"lr_find.end_lr ({end_lr}) must be greater than lr_find.start_lr ({start_lr}).")
    if steps < MIN_STEPS:
        raise ConfigError(f"lr_find.steps must be at least {MIN_STEPS}, got {steps}.")
    if not diverge > 1:
        raise ConfigError(f"lr_find.diverge must be greater than 1 (times the lowest loss), got {diverge}.")
    if not 0 <= smoothing < 1:
        raise ConfigError(f"lr_find.smoothing must be in [0, 1), got {smoothing}.")
    if rule not in RULES:
        raise ConfigError(f"Unknown lr_find.rule '{rule}'; choose one of: {', '.join(RULES)}.")


class ExponentialRamp:
    """The schedule of the test: ``start * (end / start) ** (i / (steps - 1))`` at optimizer step ``i``,
    on every parameter group in proportion to its learning rate (``optimizer.backbone_lr_mult`` and
    ``bias_lr_mult`` keep their ratios to ``optimizer.lr``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, start: float, end: float, steps: int):
        self.optimizer, self.start, self.ratio, self.steps = optimizer, start, end / start, steps
        self.mults = [group["lr"] / optimizer.defaults["lr"] for group in optimizer.param_groups]
        self.step = 0
        self._apply()

    @property
    def lr(self) -> float:
        return self.start * self.ratio ** (min(self.step, self.steps - 1) / (self.steps - 1))

    def step_batch(self) -> None:  # the interface micro_step calls after each optimizer step
        self.step += 1
        self._apply()

    def _apply(self) -> None:
        for group, mult in zip(self.optimizer.param_groups, self.mults, strict=True):
            group["lr"] = self.lr * mult


def endless(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches epoch after epoch (each epoch's order as training would draw it)."""
    epoch = 1
    while True:
        loader.set_epoch(epoch)
        yield from loader.batches()
        epoch += 1


def range_test(model, loader, optimizer, ctx: StepContext, *, start_lr: float, end_lr: float, steps: int,
               diverge: float = 4.0, smoothing: float = 0.98) -> RangeTest:  # fmt: skip
    """Train ``model`` for up to ``steps`` optimizer steps at exponentially rising learning rates."""
    ramp = ExponentialRamp(optimizer, start_lr, end_lr, steps)
    batches = endless(loader)
    out, average, lowest = RangeTest(), 0.0, math.inf
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for step in range(steps):
        lr = ramp.lr
        loss = optimizer_step(model, [next(batches) for _ in range(ctx.accumulate)], optimizer, ramp, ctx)
        if ctx.on_step is not None:  # trainer.threads=auto times the steps
            ctx.on_step()
        average = smoothing * average + (1 - smoothing) * loss
        smooth = average / (1 - smoothing ** (step + 1))
        out.lrs.append(lr)
        out.losses.append(loss)
        out.smoothed.append(smooth)
        if not math.isfinite(smooth) or smooth > diverge * lowest:
            out.diverged = True
            break
        lowest = min(lowest, smooth)
    return out


def optimizer_step(model, group: list, optimizer, ramp: ExponentialRamp, ctx: StepContext) -> float:
    """One optimizer step over the micro-batches of ``group`` (``trainer.accumulate``), each loss weighted
    by its share of the group as training weights it; returns the group's mean loss."""
    total = sum(len(y) for _, y in group)
    augment = getattr(ctx.pipeline, "augment", None)
    loss_sum = 0.0
    for i, (xb, yb) in enumerate(group):
        x, targets = ctx.pipeline(xb, train=True), yb
        if augment is not None and augment.mixes:
            x, y_a, y_b, lam = augment.mix(x, yb, ctx.pipeline.generator)
            targets = (y_a, y_b, lam)
        loss, _, _ = micro_step(model, x, targets, optimizer, ramp, ctx, weight=len(yb) / total,
                                boundary=i == len(group) - 1)  # fmt: skip
        loss_sum += float(loss) * len(yb)
    return loss_sum / total


def suggest(test: RangeTest, rule: str) -> float:
    """The learning rate ``rule`` (one of :data:`RULES`) reads off the smoothed curve of ``test``.

    Only the steps before the divergence count. Raises ValueError when fewer than :data:`MIN_POINTS`
    steps are left (the range started too high).
    """
    n = len(test.smoothed) - (1 if test.diverged else 0)
    if n < MIN_POINTS:
        raise ValueError(f"only {n} steps before the loss diverged")
    lrs, loss = np.asarray(test.lrs[:n]), np.asarray(test.smoothed[:n])
    lowest = int(loss.argmin())
    if rule == "minimum":
        return float(lrs[lowest] / 10)
    if rule == "steepest":
        skip = n // 10  # the first values of a debiased average are the noisiest
        slope = np.gradient(loss, np.log10(lrs))[skip : lowest + 1]
        return float(lrs[skip + int(slope.argmin())]) if len(slope) else float(lrs[lowest])
    start, end = longest_descent(loss)
    return float(lrs[start + (end - start) // 2])


def longest_descent(loss: np.ndarray) -> tuple[int, int]:
    """First and last index of the longest strictly decreasing subsequence of ``loss`` (O(n^2), n small)."""
    n = len(loss)
    length, first = np.ones(n, dtype=int), np.arange(n)
    for i in range(1, n):
        earlier = np.flatnonzero(loss[:i] > loss[i])
        if len(earlier):
            j = earlier[length[earlier].argmax()]
            length[i], first[i] = length[j] + 1, first[j]
    end = int(length.argmax())
    return int(first[end]), end
