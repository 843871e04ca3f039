"""Whole-split operations on uint8 image tensors, done in chunks so that memory stays bounded."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

CHUNK = 1024  # images per step: bounds the float copies to a few MB at 32 px, ~200 MB at 224 px


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``(N, C, H, W)`` images to ``size`` x ``size``: bilinear, antialiased when shrinking
    (as PIL's resize of the photo formats), rounded back to uint8."""
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    side = max(size, x.shape[-1])  # fewer images a step for large sizes: the float copies stay ~200 MB
    step = max(1, min(CHUNK, CHUNK * 224**2 // side**2))
    for lo in range(0, len(x), step):
        chunk = x[lo : lo + step].float()
        resized = F.interpolate(
            chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[lo : lo + step] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images in [0, 1] units, from float64 sums of
    the pixels and their squares over all of ``x``, one chunk at a time (``x`` may be memory-mapped)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    for lo in range(0, len(x), CHUNK):
        chunk = x[lo : lo + CHUNK].to(torch.float64)
        total += chunk.sum((0, 2, 3))
        squares += chunk.square().sum((0, 2, 3))
    count = len(x) * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_(min=0).sqrt_()
    return (mean / 255).tolist(), (std / 255).tolist()
