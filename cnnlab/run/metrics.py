"""A run's numbers as it goes: metrics.csv (one row per epoch) and the other loggers the config chooses
(TensorBoard, MLflow, wandb; :mod:`cnnlab.run.loggers`)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from cnnlab.engine.interrupt import Interrupted
from cnnlab.engine.loop import DivergedError
from cnnlab.run.layout import RunDir
from cnnlab.run.loggers import Logger, open_loggers

METRIC_FIELDS = [
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
    "data_s", "compute_s", "eval_s", "img_per_s",
]  # fmt: skip
BALANCED_FIELDS = ["val_macro_f1", "val_balanced_acc"]  # with trainer.monitor one of them
CLIP_FIELDS = ["grad_norm"]  # with trainer.grad_clip: the gradient norm before clipping, last step
EMA_FIELDS = ["ema_val_loss", "ema_val_acc", "weights"]  # with trainer.ema: which weights were monitored


def failure_status(exc: BaseException) -> str:
    """How a run that raised ``exc`` ended, as status.json says it: pruned (by an Optuna pruner),
    diverged, interrupted (a signal) or failed."""
    optuna = sys.modules.get("optuna")  # only a study that imported Optuna can prune a run
    if optuna is not None and isinstance(exc, optuna.TrialPruned):
        return "pruned"
    if isinstance(exc, DivergedError):
        return "diverged"
    if isinstance(exc, KeyboardInterrupt | Interrupted):
        return "interrupted"
    return "failed"


class MetricsWriter:
    """Feeds every logger of a run: a row per epoch, the learning rate per optimizer step, the end.

    ``global_step`` counts optimizer steps over the whole run (the x axis of the per-step learning
    rate); it is checkpointed so a resumed run continues the same curves. With ``enabled=False``
    (data-parallel ranks other than 0) it counts steps but opens and writes nothing.
    """

    def __init__(self, run: RunDir, cfg: DictConfig, *, resumed: bool = False, ema: bool = False,
                 clip: bool = False, balanced: bool = False, enabled: bool = True):  # fmt: skip
        self.run = run
        balanced_fields = BALANCED_FIELDS if balanced else []
        self.fields = METRIC_FIELDS + balanced_fields + (CLIP_FIELDS if clip else [])
        self.fields += [f"ema_{f}" for f in balanced_fields] + (EMA_FIELDS if ema else [])
        self.global_step = 0
        self.enabled = enabled
        self.loggers: list[Logger] = (
            open_loggers(cfg, run, fields=self.fields, resumed=resumed) if enabled else []
        )
        self.pending_lr: list[tuple[int, float]] = []  # (global step, lr) not yet handed to the loggers
        self.closed = False

    def resume(self, epochs_done: int, best_epoch: int) -> dict:
        """Drop rows of epochs the checkpoint does not hold (written just before a kill).

        Returns the accuracies of the best epoch's row, for the summary.
        """
        rows = [r for r in self.run.read_metric_rows() if int(r["epoch"]) <= epochs_done]
        if self.enabled:
            self.run.rewrite_metrics(self.fields, rows)
        best = next((r for r in rows if int(r["epoch"]) == best_epoch), {})
        return {k: float(v) for k, v in best.items() if k.endswith("acc") and v}

    def write(self, row: dict) -> None:
        """One epoch's row: every logger gets the columns metrics.csv has, no more."""
        self.write_pending()
        row = {key: row[key] for key in self.fields if key in row}
        for logger in self.loggers:
            logger.log_epoch(row)

    def step(self, lr: float) -> None:
        """After every optimizer step: count it, and keep the learning rate for the loggers.

        The loggers get the values at the end of the epoch (:meth:`write`, :meth:`flush`): one
        TensorBoard ``add_scalar`` per step woke its writer thread every step, which took a third of the
        time of a tiny model's step.
        """
        self.global_step += 1
        if self.loggers:
            self.pending_lr.append((self.global_step, lr))

    def write_pending(self) -> None:
        for step, lr in self.pending_lr:
            for logger in self.loggers:
                logger.log_step(step, lr)
        self.pending_lr.clear()

    def flush(self) -> None:
        self.write_pending()
        for logger in self.loggers:
            logger.flush()

    def close(self, cfg: DictConfig, overrides: list[str], summary: dict) -> None:
        """The run finished: every logger gets the config, the overrides and summary.json's numbers."""
        if self.closed:
            return
        self.closed = True
        self.write_pending()
        for logger in self.loggers:
            logger.finish(cfg, list(overrides), summary)

    def abort(self, exc: BaseException) -> None:
        """The run ended with ``exc``: end each logger's record of it as failed (or stopped)."""
        if self.closed:
            return
        self.closed = True
        self.write_pending()
        text = str(exc).strip().splitlines()
        for logger in self.loggers:
            logger.abort(failure_status(exc), text[0] if text else type(exc).__name__)
