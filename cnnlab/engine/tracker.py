"""The one rule for "better": :func:`monitored` reads the monitored value off one scored result, and
:class:`MetricTracker` keeps the best value and counts epochs without improvement (early stopping, with
Keras/Lightning semantics).

Every comparison of weights goes through here: the best epoch and best.pt, the raw weights against
their EMA, the SWA average against the best epoch, the value an Optuna pruner is told and the summary's
``best_value``. A scored result is what :meth:`cnnlab.engine.infer.Scorer.score` returns (``loss``,
``acc`` and, with a class-balanced monitor, ``macro_f1`` and ``balanced_acc``); ``trainer.monitor``
names one of them with a ``val_`` prefix.
"""

from __future__ import annotations

import math


def monitored(scored: dict, monitor: str) -> float:
    """The value of ``monitor`` (``val_acc``, ``val_loss``, ``val_macro_f1``, ``val_balanced_acc``) in
    one scored result (a :meth:`~cnnlab.engine.infer.Scorer.score` dict, without the ``val_`` prefix)."""
    return float(scored[monitor.removeprefix("val_")])


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
        self.best_scores: dict[str, float] = {}  # the best epoch's accuracies, exact, for the summary

    def value(self, scored: dict) -> float:
        """The monitored value of one scored result."""
        return monitored(scored, self.monitor)

    def pick(self, candidates: dict[str, dict]) -> tuple[str, float]:
        """Of several weights' scored results (e.g. ``{"raw": ..., "ema": ...}``), the name and value
        of the better; the first wins a tie."""
        name, value = None, math.nan
        for key, scored in candidates.items():
            v = self.value(scored)
            if name is None or is_better(v, value, self.mode):
                name, value = key, v
        return name, value

    def improved(self, value: float) -> bool:
        return is_better(value, self.best, self.mode, self.min_delta)

    def update(self, value: float, epoch: int, scores: dict | None = None) -> bool:
        """Record the epoch's value; True when it is a new best (save the best checkpoint). ``scores``:
        the epoch's accuracies, kept with the best (metrics.csv holds them to six digits only)."""
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.best_scores = {k: float(v) for k, v in (scores or {}).items()}
            return True
        self.wait += 1
        return False

    def beats_best(self, value: float) -> bool:
        """Whether weights scored after the epochs (the SWA average) beat the best epoch; no
        ``min_delta``: they replace it only when strictly better, as EMA replaces raw weights."""
        return is_better(value, self.best, self.mode)

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best_scores": self.best_scores,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.best_scores = dict(state.get("best_scores", {}))  # absent from runs of earlier versions
