"""Where a run's numbers go besides the console: ``logger=[csv,tensorboard]``, extended with ``mlflow`` and
``wandb``. Each destination is a small :class:`Logger`; :class:`cnnlab.run.metrics.MetricsWriter` feeds
them all. Only the chosen ones are imported (TensorBoard, MLflow and wandb take seconds to import)."""

from __future__ import annotations

from omegaconf import DictConfig

from cnnlab.run.layout import RunDir


class Logger:
    """One destination. Every hook is optional; ``finish`` or ``abort`` ends it, once."""

    def log_step(self, step: int, lr: float) -> None:
        """After every optimizer step (``step`` counts them over the whole run)."""

    def log_epoch(self, row: dict) -> None:
        """After every epoch: the row metrics.csv gets."""

    def flush(self) -> None: ...

    def finish(self, cfg: DictConfig, overrides: list[str], summary: dict) -> None:
        """The run finished: its summary.json."""

    def abort(self, status: str, error: str) -> None:
        """The run ended with an exception: ``status`` as in status.json (failed, diverged, interrupted,
        pruned), ``error`` its one line."""


def open_loggers(cfg: DictConfig, folder: RunDir, *, fields: list[str], resumed: bool) -> list[Logger]:
    """The loggers ``cfg.logger`` chooses, opened for the run in ``folder`` (``resumed``: continue the
    tracker's run of the same folder instead of starting another)."""
    chosen = chosen_loggers(cfg)
    loggers: list[Logger] = []
    if chosen.get("csv") is not None:
        from cnnlab.run.loggers.csv_logger import CsvLogger

        loggers.append(CsvLogger(folder, fields))
    if uses_tensorboard(cfg):
        from cnnlab.run.loggers.tensorboard_logger import TensorBoardLogger

        loggers.append(TensorBoardLogger(folder))
    if chosen.get("mlflow") is not None:
        from cnnlab.run.loggers.mlflow_logger import MlflowLogger

        loggers.append(MlflowLogger(cfg, folder, resumed=resumed))
    if chosen.get("wandb") is not None:
        from cnnlab.run.loggers.wandb_logger import WandbLogger

        loggers.append(WandbLogger(cfg, folder, resumed=resumed))
    return loggers


def chosen_loggers(cfg: DictConfig):
    """``cfg.logger``; the default pair for a config composed before loggers were a list."""
    chosen = cfg.get("logger")
    return {"csv": {}, "tensorboard": {}} if chosen is None else chosen


def uses_tensorboard(cfg: DictConfig) -> bool:
    """TensorBoard is on when ``logger`` lists it and ``trainer.tensorboard`` (the older switch, kept) is
    not false: the run's scalars and the end-of-run report's figures both follow this."""
    return chosen_loggers(cfg).get("tensorboard") is not None and bool(cfg.trainer.tensorboard)


def numbers(row: dict) -> dict[str, float]:
    """The numeric entries of a metrics row or summary (trackers take numbers only; ``epoch`` is the step)."""
    return {
        key: float(value)
        for key, value in row.items()
        if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)
    }
