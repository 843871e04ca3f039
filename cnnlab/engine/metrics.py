"""Validation metrics for imbalanced classes, from confusion counts kept on the training device.

``evaluate`` adds each batch's counts with :func:`add_confusion` (no host sync per batch; under DDP the
counts are summed over ranks once, like the loss) and :func:`class_balanced` turns them into
``macro_f1`` (the unweighted mean of per-class F1) and ``balanced_acc`` (the mean per-class recall), as
scikit-learn defines them: a class never predicted has precision 0; the F1 mean runs over the classes
that occur as labels or predictions, the recall mean over the classes that occur as labels.
"""

from __future__ import annotations

import torch

MONITORS = {"val_acc": "max", "val_loss": "min", "val_macro_f1": "max", "val_balanced_acc": "max"}
BALANCED_MONITORS = ("val_macro_f1", "val_balanced_acc")  # need the confusion counts


def add_confusion(confusion: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> None:
    """``confusion[true, predicted] += 1`` for every sample of the batch, in place."""
    k = confusion.shape[0]
    confusion += torch.bincount(target * k + pred, minlength=k * k).view(k, k)


def class_balanced(confusion: torch.Tensor) -> dict[str, float]:
    """``macro_f1`` and ``balanced_acc`` of a ``(K, K)`` confusion matrix (rows true, columns predicted)."""
    c = confusion.double()
    tp, support, predicted = c.diag(), c.sum(1), c.sum(0)
    labelled, seen = support > 0, (support + predicted) > 0
    recall = tp / support.clamp(min=1)
    precision = tp / predicted.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {
        "macro_f1": float(f1[seen].sum() / seen.sum().clamp(min=1)),
        "balanced_acc": float(recall[labelled].sum() / labelled.sum().clamp(min=1)),
    }
