"""Classification metrics as pure functions of ``(probs, labels)``, so tests can check them by hand.

``probs`` is an ``(N, K)`` array of class probabilities, ``labels`` an ``(N,)`` array of class indices.
The confusion matrix has true classes as rows and predicted classes as columns.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, predicted]``, an ``(K, K)`` int64 array."""
    flat = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (a class never predicted has precision 0, as scikit-learn reports)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall (= the per-class accuracy), F1 and support for each class of ``cm``."""
    tp = np.diag(cm)
    precision = _ratio(tp, cm.sum(0))
    recall = _ratio(tp, cm.sum(1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": cm.sum(1)}


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (cross-entropy without label smoothing)."""
    p = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error over ``bins`` equal-width confidence bins (Guo et al. 2017).

    Confidence is the top probability; a sample falls in bin ``(lo, hi]``. ECE is the mean over bins of
    ``|accuracy - confidence|`` weighted by the share of samples in the bin. Returns the ECE and, per
    bin, its edges, count, mean confidence and accuracy (None for empty bins).
    """
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        acc = float(correct[mask].mean()) if n else None
        mean_conf = float(conf[mask].mean()) if n else None
        if n:
            ece += n / len(labels) * abs(acc - mean_conf)
        table.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": n,
                "confidence": mean_conf,
                "accuracy": acc,
            }
        )
    return {"ece": float(ece), "bins": table}


def most_confused(cm: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The ``k`` largest off-diagonal counts as ``(true, predicted, count)``, largest first, no zeros."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = [(int(i // cm.shape[1]), int(i % cm.shape[1])) for i in order]
    return [(t, p, int(off[t, p])) for t, p in pairs if off[t, p] > 0]


def classification_report(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], *, bins: int, pairs: int
) -> dict:
    """Everything ``cnnlab evaluate`` reports, as plain JSON-able values."""
    pred = probs.argmax(1)
    cm = confusion_matrix(pred, labels, len(classes))
    pc = per_class(cm)
    cal = calibration(probs, labels, bins)
    return {
        "n": len(labels),
        "accuracy": float((pred == labels).mean()),
        "loss": nll(probs, labels),
        "ece": cal["ece"],
        "ece_bins": bins,
        "macro": {k: float(pc[k].mean()) for k in ("precision", "recall", "f1")},
        "per_class": [
            {
                "class": name,
                "precision": float(pc["precision"][i]),
                "recall": float(pc["recall"][i]),
                "f1": float(pc["f1"][i]),
                "accuracy": float(pc["recall"][i]),
                "support": int(pc["support"][i]),
            }
            for i, name in enumerate(classes)
        ],
        "confusion_matrix": cm.tolist(),
        "most_confused": [
            {
                "true": classes[t],
                "predicted": classes[p],
                "count": n,
                "share_of_true": n / max(int(cm[t].sum()), 1),
            }
            for t, p, n in most_confused(cm, pairs)
        ],
        "calibration": cal["bins"],
    }
