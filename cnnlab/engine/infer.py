"""Class probabilities for a stack of uint8 images: the one inference path for predict, evaluate and viz."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

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
    views: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
) -> torch.Tensor:
    """Softmax probabilities ``(N, classes)`` in float32 on the CPU, for uint8 ``(B, C, H, W)`` batches.

    ``pipeline`` is the run's :class:`~cnnlab.data.loader.BatchPipeline` (normalisation, memory format);
    no augmentation is applied. ``views`` (test-time augmentation, see :mod:`cnnlab.engine.tta`) map a
    uint8 batch to another of the same shape; the probabilities of all views are averaged.
    """
    model.eval()
    views = list(views) or [lambda x: x]
    out = []
    for xb in batches:
        xb = xb.to(device)
        probs = 0
        for view in views:
            with autocast(device, precision):
                logits = model(pipeline(view(xb), train=False))
            probs = probs + logits.float().softmax(1)
        out.append((probs / len(views)).cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)
