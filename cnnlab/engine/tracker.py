"""Best-metric tracking and early stopping, with Keras/Lightning semantics."""

from __future__ import annotations

import math


def is_better(a: float, b: float, mode: str, min_delta: float = 0.0) -> bool:
    """Does ``a`` beat ``b`` by more than ``min_delta`` (``mode`` max or min)? NaN never does, and
    anything beats NaN."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a - b > min_delta if mode == "max" else b - a > min_delta


class MetricTracker:
    """Tracks the best value of the monitored metric; an improvement must beat it by more than min_delta."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0, patience: int | None = None):
        self.monitor, self.mode, self.min_delta, self.patience = monitor, mode, min_delta, patience
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch = 0
        self.wait = 0

    def improved(self, value: float) -> bool:
        return is_better(value, self.best, self.mode, self.min_delta)

    def update(self, value: float, epoch: int) -> bool:
        """Record the epoch's value; True when it is a new best (save the best checkpoint)."""
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
