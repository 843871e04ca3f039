"""Training losses: what the step minimises, given the logits and the (possibly mixed) targets."""

from __future__ import annotations

from collections.abc import Callable

import torch


def mixed_loss(criterion: Callable, logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float):
    """lam * loss(y_a) + (1 - lam) * loss(y_b); just loss(y_a) for an unmixed batch."""
    if lam == 1.0:
        return criterion(logits, y_a)
    return lam * criterion(logits, y_a) + (1 - lam) * criterion(logits, y_b)
