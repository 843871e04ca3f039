"""metrics.csv (one row per epoch) and TensorBoard events, as a run goes."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cnnlab.run.layout import RunDir

METRIC_FIELDS = [
    "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
    "data_s", "compute_s", "eval_s", "img_per_s",
]  # fmt: skip
CLIP_FIELDS = ["grad_norm"]  # with trainer.grad_clip: the gradient norm before clipping, last step
EMA_FIELDS = ["ema_val_loss", "ema_val_acc", "weights"]  # with trainer.ema: which weights were monitored
TB_SCALARS = {
    "train_loss": "loss", "val_loss": "loss", "ema_val_loss": "loss", "train_acc": "acc", "val_acc": "acc",
    "ema_val_acc": "acc", "lr": "lr", "img_per_s": "speed",
}  # fmt: skip


class MetricsWriter:
    """metrics.csv (one row per epoch, appended and flushed) and TensorBoard scalars.

    ``global_step`` counts optimizer steps over the whole run (the x axis of the per-step learning
    rate); it is checkpointed so a resumed run continues the same curves. With ``enabled=False``
    (data-parallel ranks other than 0) it counts steps but writes nothing.
    """

    def __init__(self, run: RunDir, *, tensorboard: bool, ema: bool = False, clip: bool = False,
                 enabled: bool = True):  # fmt: skip
        self.run = run
        self.fields = METRIC_FIELDS + (CLIP_FIELDS if clip else []) + (EMA_FIELDS if ema else [])
        self.global_step = 0
        self.enabled = enabled
        self.tb = None
        self.pending_lr: list[tuple[int, float]] = []  # (global step, lr) not yet in TensorBoard
        if tensorboard and enabled:
            from torch.utils.tensorboard import SummaryWriter  # lazy: seconds of import time

            self.tb = SummaryWriter(str(run.tb))

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
        self.write_pending()
        if not self.enabled:
            return
        self.run.append_metrics(self.fields, row)
        if self.tb is not None:
            for key, group in TB_SCALARS.items():
                if key in row:
                    self.tb.add_scalar(f"{group}/{key}", row[key], row["epoch"])

    def step(self, lr: float) -> None:
        """After every optimizer step: count it, and keep the learning rate for TensorBoard.

        The values are written at the end of the epoch (:meth:`write`, :meth:`flush`): one
        ``add_scalar`` per step woke TensorBoard's writer thread every step, which took a third of the
        time of a tiny model's step.
        """
        self.global_step += 1
        if self.tb is not None:
            self.pending_lr.append((self.global_step, lr))

    def write_pending(self) -> None:
        if self.tb is not None:
            for step, lr in self.pending_lr:
                self.tb.add_scalar("lr/step", lr, step)
        self.pending_lr.clear()

    def flush(self) -> None:
        self.write_pending()
        if self.tb is not None:
            self.tb.flush()

    def close(self, cfg: DictConfig | None = None, overrides: list[str] = (), summary: dict | None = None):
        """Log the run's hyperparameters and final metrics for TensorBoard's hparams view, then close.

        ``run_name="."`` keeps them in the run's own tb/ folder, so ``tensorboard --logdir multirun/...``
        lists every job of a sweep as one row of the hparams table.
        """
        self.write_pending()
        if self.tb is not None:
            if cfg is not None and summary is not None:
                self.tb.add_hparams(run_hparams(cfg, list(overrides)), final_metrics(summary), run_name=".")
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
