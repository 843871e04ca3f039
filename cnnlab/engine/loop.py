"""One training epoch and one evaluation pass, readable top to bottom."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.data.augment import mixed_loss
from cnnlab.engine.device import autocast
from cnnlab.errors import CnnlabError


class DivergedError(CnnlabError):
    """The loss became NaN or infinite."""


@dataclass
class StepContext:
    """What a step needs besides model and batch: built once per run by the trainer."""

    device: torch.device
    precision: str
    pipeline: object  # cnnlab.data.loader.BatchPipeline
    criterion: nn.Module
    grad_clip: float | None = None
    augment: object | None = None  # BatchAugment, for mixup/cutmix
    ema: object | None = None  # ModelEMA


def train_one_epoch(
    model, loader, optimizer, schedule, ctx: StepContext, *, epoch: int, progress=None
) -> dict:
    """Train over ``loader`` once; returns loss, accuracy, grad norm and the time split."""
    model.train()
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    seen, data_s, grad_norm = 0, 0.0, float("nan")
    start = time.perf_counter()
    t = start
    for step, (xb, yb) in enumerate(loader):
        x = ctx.pipeline(xb, train=True)
        mixing = ctx.augment is not None and ctx.augment.mixes
        if mixing:
            x, y_a, y_b, lam = ctx.augment.mix(x, yb, ctx.pipeline.generator)
        data_s += time.perf_counter() - t
        with autocast(ctx.device, ctx.precision):
            logits = model(x)
            loss = mixed_loss(ctx.criterion, logits, y_a, y_b, lam) if mixing else ctx.criterion(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ctx.grad_clip:
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip))
        optimizer.step()
        schedule.step_batch()
        if ctx.ema is not None:
            ctx.ema.update(model)
        n = len(yb)
        loss_sum += loss.detach().float() * n
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += n
        if progress is not None:
            progress(step + 1, len(loader), loss)
        t = time.perf_counter()
    train_loss = float(loss_sum) / max(seen, 1)  # one sync per epoch, not per step
    if not math.isfinite(train_loss):
        raise DivergedError(
            f"Training diverged in epoch {epoch}: the loss became {train_loss}; "
            "lower optimizer.lr or set trainer.grad_clip."
        )
    total = time.perf_counter() - start
    return {
        "train_loss": train_loss,
        "train_acc": float(correct) / max(seen, 1),
        "grad_norm": grad_norm,
        "data_s": data_s,
        "compute_s": total - data_s,
        "images": seen,
    }


@torch.no_grad()
def evaluate(model, loader, ctx: StepContext) -> dict:
    """Mean cross-entropy (without label smoothing) and accuracy over ``loader``."""
    model.eval()
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    seen = 0
    for xb, yb in loader:
        with autocast(ctx.device, ctx.precision):
            logits = model(ctx.pipeline(xb, train=False))
        loss_sum += nn.functional.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
    return {"loss": float(loss_sum) / max(seen, 1), "acc": float(correct) / max(seen, 1)}
