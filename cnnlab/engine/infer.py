"""Class probabilities for a stack of uint8 images: the one inference path for predict, evaluate and viz."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cnnlab.engine.device import autocast


@torch.no_grad()
def infer_probs(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    pipeline,
    device: torch.device,
    precision: str = "32",
) -> torch.Tensor:
    """Softmax probabilities ``(N, classes)`` in float32 on the CPU, for uint8 ``(B, C, H, W)`` batches.

    ``pipeline`` is the run's :class:`~cnnlab.data.loader.BatchPipeline` (normalisation, memory format);
    no augmentation is applied.
    """
    model.eval()
    out = []
    for xb in batches:
        with autocast(device, precision):
            logits = model(pipeline(xb.to(device), train=False))
        out.append(logits.float().softmax(1).cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)
