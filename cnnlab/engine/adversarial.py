"""Adversarial examples (FGSM, PGD) under an L-infinity budget in pixel units of [0, 1] images.

The model sees normalised inputs, so the budget is carried into that space per channel (``eps / std``)
and every example is clipped to the normalised images of [0, 1] pixels. Examples are made with the
model in eval mode: BatchNorm statistics are not moved by the attack's forward passes and dropout
draws nothing, so the only random numbers (PGD's random start) come from the generator passed in,
the batch pipeline's, which a checkpoint saves: a resumed run makes the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.engine.device import autocast
from cnnlab.errors import ConfigError

METHODS = ("none", "fgsm", "pgd")


def check_adversarial(method: str, eps: float, steps: int, step_size: float | None, fraction: float) -> None:
    """The options of ``augmentation.adversarial`` (and of ``cnnlab evaluate attack=...``)."""
    if method not in METHODS:
        raise ConfigError(f"Unknown adversarial method '{method}'; choose one of: {', '.join(METHODS)}.")
    if not 0 < eps <= 1:
        raise ConfigError(f"adversarial eps is in pixel units of [0, 1] images, e.g. 0.03; got {eps}.")
    if steps < 1:
        raise ConfigError(f"adversarial steps must be at least 1, got {steps}.")
    if step_size is not None and not 0 < step_size <= 1:
        raise ConfigError(f"adversarial step_size must be in (0, 1] (pixel units) or null, got {step_size}.")
    if not 0 < fraction <= 1:
        raise ConfigError(f"adversarial fraction is the share of a batch attacked, (0, 1]; got {fraction}.")


@dataclass
class Adversary:
    """FGSM (one step of ``eps`` from the clean image) or PGD (a random start in the ball, then
    ``steps`` signed-gradient steps of ``step_size``, default ``2.5 * eps / steps``, projected back)."""

    method: str
    eps: float
    mean: torch.Tensor  # (1, C, 1, 1): the normalisation the model's inputs went through
    std: torch.Tensor
    steps: int = 10
    step_size: float | None = None
    fraction: float = 1.0  # training: the share of each batch replaced by its adversarial examples

    def __post_init__(self):
        check_adversarial(self.method, self.eps, self.steps, self.step_size, self.fraction)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised values of pixels 0 and 1, per channel."""
        return -self.mean / self.std, (1 - self.mean) / self.std

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, precision: str,
               generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
        """Adversarial versions of the normalised batch ``x`` with labels ``y`` (detached)."""
        lo, hi = self.bounds()
        radius = self.eps / self.std
        if self.method == "fgsm":
            steps, size, delta = 1, radius, torch.zeros_like(x)
        else:
            steps = self.steps
            size = (self.step_size or 2.5 * self.eps / self.steps) / self.std
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (noise * 2 - 1) * radius
        module = getattr(model, "module", model)  # DDP: attack the model itself, nothing is all-reduced
        was_training = module.training
        module.eval()
        try:
            for _ in range(steps):
                xa = torch.clamp(x + delta, lo, hi).requires_grad_(True)
                with autocast(x.device, precision):
                    loss = F.cross_entropy(module(xa).float(), y)
                (grad,) = torch.autograd.grad(loss, xa)
                delta = torch.clamp(xa.detach() + size * grad.sign() - x, -radius, radius)
        finally:
            module.train(was_training)
        return torch.clamp(x + delta, lo, hi).detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx) -> torch.Tensor:
        """Training: the batch with its first ``fraction`` of samples replaced by adversarial ones (the
        order of a batch is already random); ``ctx`` is the run's StepContext."""
        k = round(self.fraction * len(x))
        if k == 0:
            return x
        adv = self.attack(model, x[:k], y[:k], precision=ctx.precision, generator=ctx.pipeline.generator)
        return adv if k == len(x) else torch.cat([adv, x[k:]]).contiguous(memory_format=_format(x))


def _format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        else (torch.contiguous_format)
    )


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str) -> int:
    with autocast(x.device, precision):
        return int((model(x).argmax(1) == y).sum())


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adversary: Adversary, scorer,
                    *, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """(clean, robust) accuracy of ``model`` on uint8 images ``x`` (labels ``y``), in the batches, memory
    format and precision of ``scorer`` (:class:`cnnlab.engine.infer.Scorer`, its test-time views unused:
    the attack is on one view)."""
    model.eval()
    pipeline, precision = scorer.pipeline, scorer.precision
    device = pipeline.mean.device
    generator = torch.Generator(device=device).manual_seed(seed)
    clean = robust = 0
    for i, xb in zip(range(0, len(x), scorer.batch_size), scorer.batches(x), strict=True):
        xb, yb = pipeline(xb.to(device), train=False), y[i : i + scorer.batch_size].to(device)
        clean += _correct(model, xb, yb, precision)
        adv = adversary.attack(model, xb, yb, precision=precision, generator=generator)
        robust += _correct(model, adv, yb, precision)
    return clean / max(len(x), 1), robust / max(len(x), 1)
