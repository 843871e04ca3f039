"""What one training run holds (:class:`Run`: built once, saved whole in ``last.pt`` and put back on a
resume) and the hooks a caller can attach to it (:class:`Callback`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import nn

from cnnlab.data.registry import DataBundle
from cnnlab.engine import distributed
from cnnlab.engine.loop import EpochState, StepContext
from cnnlab.engine.rng import rng_state, set_rng_state
from cnnlab.engine.schedulers import Schedule
from cnnlab.engine.tracker import MetricTracker
from cnnlab.errors import CheckpointError
from cnnlab.run.checkpoints import RunCheckpoints
from cnnlab.run.layout import RunDir
from cnnlab.run.load import load_state_strict
from cnnlab.run.metrics import MetricsWriter
from cnnlab.run.record import RunRecord
from cnnlab.train.parts import Part

log = logging.getLogger("cnnlab")
RESUME_KEYS = ("model", "epoch", "rng", "pipeline_rng", "global_step")  # with every part's name


class Callback:
    """Hooks into a run (all optional): ``on_step(run)`` after every optimizer step, ``on_epoch_end(run,
    row, value)`` after each epoch's checkpoints are written, with the monitored ``value``. An Optuna
    pruner raises from ``on_epoch_end``; a test can stop a run there as a kill would."""

    def on_start(self, run: Run) -> None: ...

    def on_step(self, run: Run) -> None: ...

    def on_epoch_end(self, run: Run, row: dict, value: float) -> None: ...


@dataclass
class Run:
    """Everything one training run holds: built once by :func:`build_run`; :meth:`states` are saved
    whole in ``last.pt`` and put back by :meth:`restore`."""

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
    files: RunCheckpoints  # the checkpoint files of ``folder``: the only writer of .pt and .safetensors
    parts: dict[str, Part] = field(default_factory=dict)  # the features that are on (cnnlab.train.parts)
    callbacks: tuple[Callback, ...] = ()
    notes: dict = field(default_factory=dict)  # added to summary.json (SWA, pseudo-labels)

    def record(self, epoch: int, weights: str = "raw") -> RunRecord:
        data = self.data
        return RunRecord(
            model_name=str(self.cfg.model.name), classes=list(data.classes), mean=list(data.mean),
            std=list(data.std), image_size=data.image_size, in_channels=data.channels,
            config=self.config_yaml, epoch=epoch, weights=weights, precision=self.ctx.precision,
        )  # fmt: skip

    def stateful(self) -> dict:
        """Everything ``last.pt`` holds, by name: the training core, then the features that are on."""
        core = {"optimizer": self.optimizer, "scheduler": self.schedule, "scaler": self.ctx.scaler,
                "tracker": self.tracker}  # fmt: skip
        return {**core, **{name: part for name, part in self.parts.items() if part.has_state}}

    def states(self, partial: EpochState | None = None) -> dict:
        """The states of every part (plain tensors and values), for :class:`RunCheckpoints`; at an
        epoch's end the lookahead's weights are the slow copy. Under DDP every rank calls it (each
        rank's random streams and BatchNorm statistics are gathered: they differ per rank)."""
        own = {"rng": rng_state(), "pipeline_rng": self.ctx.pipeline.generator.get_state()}
        if self.dist.enabled:  # BatchNorm statistics are rank-local between DDP's broadcasts from rank 0
            own["buffers"] = dict(self.model.named_buffers())
        streams = self.dist.gather(own)
        states = {
            "model": self.model.state_dict(),
            **{name: part.state_dict() for name, part in self.stateful().items()},
            "rng": streams[0]["rng"],  # rank 0's (a single process's) streams
            "pipeline_rng": streams[0]["pipeline_rng"],
            "global_step": self.metrics.global_step,
        }
        if self.dist.enabled:
            states["rank_streams"] = streams
        if partial is not None:
            states["partial"] = partial.state_dict()
        return states

    def restore(self, resumed: dict) -> tuple[int, EpochState | None, dict]:
        """Load a ``last.pt``; return the epoch to start at, the partial epoch (or None) and the best row."""
        path = self.folder.last
        parts = self.stateful()
        missing = [k for k in (*RESUME_KEYS, *parts) if k not in resumed]
        if missing:
            raise CheckpointError(
                f"{path} lacks {', '.join(missing)}, so the run cannot continue exactly; it is damaged or "
                "not a cnnlab last.pt: start a new run."
            )
        load_state_strict(self.model, resumed["model"], path)
        if "ema" in parts:  # the same one-sentence refusal as the model's for weights that do not fit
            load_state_strict(self.ctx.ema.module, resumed["ema"]["module"], path)
        try:
            for name, part in parts.items():
                part.load_state_dict(resumed[name])
            streams = resumed.get("rank_streams") or [resumed]
            own = streams[self.dist.rank] if len(streams) == self.dist.world_size else resumed
            set_rng_state(own["rng"])
            self.ctx.pipeline.generator.set_state(own["pipeline_rng"])
            with torch.no_grad():
                for name, buffer in self.model.named_buffers() if "buffers" in own else ():
                    buffer.copy_(own["buffers"][name])
            partial = EpochState(**resumed["partial"]) if "partial" in resumed else None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path} does not fit this run ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "it is damaged or from another run: start a new run."
            ) from None
        self.metrics.global_step = resumed["global_step"]
        if partial is not None and not self.dist.is_main:  # the saved sums are all ranks': count once
            partial.loss_sum, partial.correct, partial.seen = 0.0, 0, 0
        from_csv = self.metrics.resume(resumed["epoch"], self.tracker.best_epoch)  # also drops later rows
        best_row = self.tracker.best_scores or from_csv
        if self.dist.is_main:
            self.folder.status_file.unlink(missing_ok=True)  # the interruption record is history now
        where = (
            f"in epoch {resumed['epoch'] + 1} at step {partial.step}"
            if partial
            else f"after epoch {resumed['epoch']}"
        )
        log.info("resuming %s %s", self.folder, where)
        return resumed["epoch"] + 1, partial, best_row
