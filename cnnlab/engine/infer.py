"""Class probabilities for a stack of uint8 images: the one inference path for predict, evaluate and viz."""

from __future__ import annotations

import math
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
    out = [view_log_probs(model, xb.to(device), pipeline=pipeline, device=device, precision=precision,
                          views=views).exp().cpu() for xb in batches]  # fmt: skip
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def view_log_probs(model, xb: torch.Tensor, *, pipeline, device, precision: str, views=()) -> torch.Tensor:
    """Log of the mean of the ``views``' softmax probabilities for one uint8 batch (float32, on ``device``).

    With one view (or none) this is the log-softmax of the logits, so a loss computed from it equals
    the usual cross-entropy; with several it is the log of the averaged probabilities.
    """
    views = list(views) or [lambda x: x]
    outs = []
    for view in views:
        with autocast(device, precision):
            logits = model(pipeline(view(xb), train=False))
        outs.append(logits.float().log_softmax(1))
    if len(outs) == 1:
        return outs[0]
    return torch.logsumexp(torch.stack(outs), 0) - math.log(len(outs))
