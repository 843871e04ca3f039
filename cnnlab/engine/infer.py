"""The one scoring path (:class:`Scorer`): a model's log-probabilities of uint8 images, through the run's
normalisation and memory format (its batch pipeline), averaged over its test-time views, in its
precision, in batches of its ``eval_batch_size``. Validation, the end of training, the SWA average,
pseudo-labels, robust accuracy and :class:`cnnlab.run.load.Predictor` (predict, evaluate, viz,
compress) all score through one, set up once per run or command.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from cnnlab.engine.device import autocast
from cnnlab.engine.distributed import Dist
from cnnlab.engine.metrics import add_confusion, class_balanced


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


@dataclass
class Scorer:
    """How a run scores: ``pipeline`` (uint8 batch -> normalised input in the run's memory format),
    ``device``, ``precision``, the test-time ``views`` and ``batch_size``; with ``balanced_classes``
    validation also gives macro F1 and balanced accuracy; ``dist`` sums a sharded split over ranks."""

    pipeline: Callable
    device: torch.device
    precision: str = "32"
    views: list[Callable] = field(default_factory=list)
    batch_size: int = 1000
    balanced_classes: int = 0
    dist: Dist = field(default_factory=Dist)

    def log_probs(self, model, xb: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (float32, on the device) of one uint8 batch, averaged over the views."""
        return view_log_probs(model, xb.to(self.device), pipeline=self.pipeline, device=self.device,
                              precision=self.precision, views=self.views)  # fmt: skip

    def batches(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        for i in range(0, len(x), self.batch_size):
            yield x[i : i + self.batch_size]

    @torch.no_grad()
    def probs(self, model, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(N, classes)`` of uint8 images ``x``, float32 on the CPU, in order."""
        model.eval()
        out = [self.log_probs(model, xb).exp().cpu() for xb in self.batches(x)]
        return torch.cat(out) if out else torch.empty(0, 0)

    @torch.no_grad()
    def score(self, model, loader) -> dict:
        """Mean cross-entropy (without label smoothing) and accuracy over ``loader`` (all ranks' shards);
        with ``balanced_classes`` also ``macro_f1`` and ``balanced_acc`` (:mod:`cnnlab.engine.metrics`).
        The monitored value is read off this dict (:func:`cnnlab.engine.tracker.monitored`)."""
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        k = self.balanced_classes
        confusion = torch.zeros(k, k, device=self.device, dtype=torch.long) if k else None
        seen = 0
        for xb, yb in loader:
            if not len(yb):  # a rank's slice of a final batch smaller than the world size
                continue
            log_probs = self.log_probs(model, xb)
            loss_sum += nn.functional.nll_loss(log_probs, yb, reduction="sum")
            pred = log_probs.argmax(1)
            correct += (pred == yb).sum()
            if confusion is not None:
                add_confusion(confusion, pred, yb)
            seen += len(yb)
        loss_sum, correct, seen = self.dist.totals(loss_sum, correct, seen)
        out = {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1)}
        if confusion is not None:
            out.update(class_balanced(self.dist.sum(confusion)))
        return out
