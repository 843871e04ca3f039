"""Optimizer parameter groups (the optimizer itself is built by :func:`cnnlab.build.build_optimizer`)."""

from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_bias_norm: bool) -> list[dict]:
    """Weight decay off for biases and normalisation weights (1-D tensors) unless asked for."""
    if decay_bias_norm or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
