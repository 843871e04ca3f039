"""What one training run holds (:class:`Run`: built once, saved whole in ``last.pt`` and put back on a
resume) and the hooks a caller can attach to it (:class:`Callback`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import nn

from cnnlab.data.pseudo import PseudoLabels
from cnnlab.data.registry import DataBundle
from cnnlab.engine import distributed
from cnnlab.engine.checkpoint import rng_state, set_rng_state
from cnnlab.engine.finetune import Freezer
from cnnlab.engine.loop import EpochState, StepContext
from cnnlab.engine.schedulers import Schedule
from cnnlab.engine.swa import WeightAverage
from cnnlab.engine.tracker import MetricTracker
from cnnlab.errors import CheckpointError
from cnnlab.run.layout import RunDir
from cnnlab.run.load import load_state_strict
from cnnlab.run.metrics import MetricsWriter
from cnnlab.run.record import RunRecord

log = logging.getLogger("cnnlab")
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "tracker", "rng", "pipeline_rng",
               "global_step")  # fmt: skip


class Callback:
    """Hooks into a run (all optional): ``on_step(run)`` after every optimizer step, ``on_epoch_end(run,
    row, value)`` after each epoch's checkpoints are written, with the monitored ``value``. An Optuna
    pruner raises from ``on_epoch_end``; a test can stop a run there as a kill would."""

    def on_start(self, run: Run) -> None: ...

    def on_step(self, run: Run) -> None: ...

    def on_epoch_end(self, run: Run, row: dict, value: float) -> None: ...


@dataclass
class Run:
    """Everything one training run holds: built once by :func:`build_run`, saved whole by
    :meth:`checkpoint` and put back by :meth:`restore`."""

    cfg: DictConfig
    folder: RunDir
    dist: distributed.Dist
    data: DataBundle
    model: nn.Module
    train_model: nn.Module  # DDP (gradient all-reduce) around ``model``, or the model itself
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    ctx: StepContext  # also holds the batch pipeline and the EMA
    tracker: MetricTracker
    metrics: MetricsWriter
    config_yaml: str
    freezer: Freezer  # trainer.freeze_epochs: the backbone frozen for the first epochs
    callbacks: tuple[Callback, ...] = ()
    swa: WeightAverage | None = None  # trainer.swa_start
    pseudo: PseudoLabels | None = None  # trainer.pseudo_label
    notes: dict = field(default_factory=dict)  # added to summary.json (SWA, pseudo-labels)

    def record(self, epoch: int, weights: str = "raw") -> RunRecord:
        data = self.data
        return RunRecord(
            model_name=str(self.cfg.model.name), classes=list(data.classes), mean=list(data.mean),
            std=list(data.std), image_size=data.image_size, in_channels=data.channels,
            config=self.config_yaml, epoch=epoch, weights=weights, precision=self.ctx.precision,
        )  # fmt: skip

    def checkpoint(self, epoch: int, weights: str, partial: EpochState | None = None) -> dict:
        state = {
            **self.record(epoch, weights).to_state(),  # epoch: epochs completed; weights: raw or ema
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.ctx.scaler.state_dict(),
            "tracker": self.tracker.state_dict(),
            "rng": rng_state(),
            "pipeline_rng": self.ctx.pipeline.generator.get_state(),
            "global_step": self.metrics.global_step,
        }
        if self.ctx.ema is not None:
            state["ema"] = self.ctx.ema.state_dict()
        if self.ctx.lookahead is not None:  # at an epoch's end the weights are the slow copy
            state["lookahead"] = self.ctx.lookahead.state_dict()
        if self.swa is not None:
            state["swa"] = self.swa.state_dict()
        if self.pseudo is not None:
            state["pseudo"] = self.pseudo.state_dict()
        if partial is not None:
            state["partial"] = partial.state_dict()
        return state

    def restore(self, resumed: dict) -> tuple[int, EpochState | None, dict]:
        """Load a ``last.pt``; return the epoch to start at, the partial epoch (or None) and the best row."""
        path = self.folder.last
        optional = {
            "ema": self.ctx.ema,
            "lookahead": self.ctx.lookahead,
            "swa": self.swa,
            "pseudo": self.pseudo,
        }
        missing = [k for k in (*RESUME_KEYS, *(k for k, v in optional.items() if v)) if k not in resumed]
        if missing:
            raise CheckpointError(
                f"{path} lacks {', '.join(missing)}, so the run cannot continue exactly; it is damaged or "
                "not a cnnlab last.pt: start a new run."
            )
        load_state_strict(self.model, resumed["model"], path)
        try:
            self.optimizer.load_state_dict(resumed["optimizer"])
            self.schedule.load_state_dict(resumed["scheduler"])
            self.ctx.scaler.load_state_dict(resumed["scaler"])
            self.tracker.load_state_dict(resumed["tracker"])
            if self.ctx.ema is not None:
                load_state_strict(self.ctx.ema.module, resumed["ema"]["module"], path)
                self.ctx.ema.updates = resumed["ema"]["updates"]
            if self.ctx.lookahead is not None:
                self.ctx.lookahead.load_state_dict(resumed["lookahead"])
            if self.swa is not None:
                self.swa.load_state_dict(resumed["swa"])
            if self.pseudo is not None:
                self.pseudo.load_state_dict(resumed["pseudo"])
            set_rng_state(resumed["rng"])
            self.ctx.pipeline.generator.set_state(resumed["pipeline_rng"])
            partial = EpochState(**resumed["partial"]) if "partial" in resumed else None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path} does not fit this run ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "it is damaged or from another run: start a new run."
            ) from None
        self.metrics.global_step = resumed["global_step"]
        if partial is not None and not self.dist.is_main:  # the saved sums are all ranks': count once
            partial.loss_sum, partial.correct, partial.seen = 0.0, 0, 0
        best_row = self.metrics.resume(resumed["epoch"], self.tracker.best_epoch)
        if self.dist.is_main:
            self.folder.status_file.unlink(missing_ok=True)  # the interruption record is history now
        where = (
            f"in epoch {resumed['epoch'] + 1} at step {partial.step}"
            if partial
            else f"after epoch {resumed['epoch']}"
        )
        log.info("resuming %s %s", self.folder, where)
        return resumed["epoch"] + 1, partial, best_row
