"""TensorBoard event files in ``<run>/tb``: per-epoch scalars, the learning rate per step, and the run's
hyperparameters with its final metrics for the HPARAMS tab."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cnnlab.io import make_dirs
from cnnlab.run.layout import RunDir
from cnnlab.run.loggers import Logger

TB_SCALARS = {
    "train_loss": "loss", "val_loss": "loss", "ema_val_loss": "loss", "train_acc": "acc", "val_acc": "acc",
    "ema_val_acc": "acc", "lr": "lr", "img_per_s": "speed",
}  # fmt: skip


class TensorBoardLogger(Logger):
    def __init__(self, folder: RunDir):
        from torch.utils.tensorboard import SummaryWriter  # lazy: seconds of import time

        self.tb = SummaryWriter(str(make_dirs(folder.tb)))  # it opens its files by name: no link on the way

    def log_step(self, step: int, lr: float) -> None:
        self.tb.add_scalar("lr/step", lr, step)

    def log_epoch(self, row: dict) -> None:
        for key, group in TB_SCALARS.items():
            if key in row:
                self.tb.add_scalar(f"{group}/{key}", row[key], row["epoch"])

    def flush(self) -> None:
        self.tb.flush()

    def finish(self, cfg: DictConfig, overrides: list[str], summary: dict) -> None:
        """``run_name="."`` keeps the hparams in the run's own tb/ folder, so ``tensorboard --logdir
        multirun/...`` lists every job of a sweep as one row of the hparams table."""
        self.tb.add_hparams(run_hparams(cfg, list(overrides)), final_metrics(summary), run_name=".")
        self.tb.close()

    def abort(self, status: str, error: str) -> None:
        self.tb.close()


def run_hparams(cfg: DictConfig, overrides: list[str]) -> dict:
    """What to compare runs by: model, data, optimizer, lr, batch size, seed, and every overridden key.

    An overridden key is logged with its value in the composed config (``optimizer.lr`` -> 0.01);
    a group choice (``optimizer=sgd``) or a list is logged as the text the user wrote.
    """
    hparams = {
        "model": str(cfg.model.name), "dataset": str(cfg.dataset.name), "optimizer": str(cfg.optimizer.name),
        "lr": float(cfg.optimizer.lr), "batch_size": int(cfg.trainer.batch_size), "seed": int(cfg.seed),
    }  # fmt: skip
    for item in overrides:
        key, sep, text = item.lstrip("+~").partition("=")
        if not sep or key.startswith("hydra"):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        hparams[key] = value if isinstance(value, bool | int | float | str) else text
    return hparams


def final_metrics(summary: dict) -> dict:
    """The hparams view's metric columns (TensorBoard wants numbers: metrics a run lacks are left out)."""
    final = {
        "hparam/best_val_acc": summary["best_val_acc"],
        "hparam/test_acc": summary["test_acc"],
        f"hparam/best_{summary['monitor']}": summary["best_value"],
        "hparam/epochs_run": summary["epochs_run"],
    }
    return {key: float(value) for key, value in final.items() if value is not None}
