"""Pixel operations on float images ``(N, C, H, W)`` in [0, 1], shared by the colour augmentations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def blend(x: torch.Tensor, other, factor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other``, clamped to [0, 1] (torchvision's ``_blend``)."""
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, one channel (torchvision's ``rgb_to_grayscale``); gray images unchanged."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.2989, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter on the interior, edges kept: the 'degenerate' image of adjust_sharpness."""
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
    kernel = kernel.expand(x.shape[1], 1, 3, 3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=x.shape[1])
    return out


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep ``bits`` bits of every 8-bit channel value (``bits`` broadcasts over the images)."""
    levels = 2**bits
    return torch.minimum((x * levels).floor(), levels - 1) / levels
