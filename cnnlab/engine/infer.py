"""Log-probabilities of a uint8 batch, averaged over test-time views: what validation, test and
:class:`cnnlab.run.load.Predictor` (predict, evaluate, viz) all score with."""

from __future__ import annotations

import math

import torch

from cnnlab.engine.device import autocast


def view_log_probs(model, xb: torch.Tensor, *, pipeline, device, precision: str, views=()) -> torch.Tensor:
    """Log of the mean of the ``views``' softmax probabilities for one uint8 batch (float32, on ``device``).

    With one view (or none) this is the log-softmax of the logits, so a loss computed from it equals
    the usual cross-entropy; with several it is the log of the averaged probabilities (weighted by the
    views' ``weight`` where they have one, see :mod:`cnnlab.engine.tta`).
    """
    views = list(views) or [lambda x: x]
    outs = []
    for view in views:
        with autocast(device, precision):
            logits = model(pipeline(view(xb), train=False))
        outs.append(logits.float().log_softmax(1))
    if len(outs) == 1:
        return outs[0]
    weights = [getattr(view, "weight", 1.0) for view in views]
    if len(set(weights)) == 1:
        return torch.logsumexp(torch.stack(outs), 0) - math.log(len(outs))
    log_w = torch.tensor(weights, dtype=torch.float32, device=outs[0].device).div_(sum(weights)).log_()
    return torch.logsumexp(torch.stack(outs) + log_w.view(-1, 1, 1), 0)
