"""``trainer.swa_start``: stochastic weight averaging. Every epoch from ``swa_start`` on adds the weights
to a running mean (:class:`cnnlab.engine.swa.WeightAverage`); after the last epoch the average gets
BatchNorm statistics from the training images, is validated and compared with the best epoch on the
monitored value (the tracker's rule), and replaces best.pt when it is better. It is kept either way
as ``checkpoints/swa.safetensors``."""

from __future__ import annotations

import logging

from cnnlab.engine.swa import WeightAverage
from cnnlab.train.parts.base import Part

log = logging.getLogger("cnnlab")


class SwaPart(Part):
    name = "swa"

    def __init__(self, average: WeightAverage):
        self.average = average

    def on_epoch_end(self, run, epoch: int, row: dict) -> None:
        self.average.update(run.model, epoch)

    def on_fit_end(self, run, epoch: int) -> bool:
        """Score the average; True when it became best.pt (weights ``swa``)."""
        swa, tracker = self.average, run.tracker
        if swa.count == 0:
            log.warning("swa: no epoch reached trainer.swa_start=%d; nothing averaged", swa.start)
            return False
        model = swa.recompute_bn(run.ctx.pipeline(xb, train=False) for xb, _ in run.data.train)
        val = run.ctx.scorer.score(model, run.data.val)  # every rank: validation sums over all of them
        value = tracker.value(val)  # the same monitored value as every epoch's, never another metric
        run.notes.update(swa_epochs=swa.count, swa_val_acc=float(val["acc"]),
                         swa_val_loss=float(val["loss"]), swa_value=value)  # fmt: skip
        better = tracker.beats_best(value)
        log.info("swa: the mean of epochs %d-%d scores %s %.4f (best single epoch %.4f)%s", swa.start, epoch,
                 tracker.monitor, value, tracker.best, ", kept as best.pt" if better else "")  # fmt: skip
        best_states = run.states() if better else None  # every rank (see Run.states)
        if run.dist.is_main:  # kept either way, for evaluate/predict ckpt=<run>/checkpoints/swa.safetensors
            run.files.save_average(model.state_dict(), run.record(epoch, "swa"), best_states=best_states)
        if better:
            tracker.best, tracker.best_epoch = value, epoch
            run.notes["best_val_acc"] = run.notes["swa_val_acc"]  # the summary's, of the weights kept
        return better

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)


def build(cfg, *, model, **_) -> SwaPart | None:
    start = cfg.trainer.swa_start
    return SwaPart(WeightAverage(model, start)) if start else None
