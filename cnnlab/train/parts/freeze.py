"""``trainer.freeze_epochs``: the pretrained backbone frozen for the first epochs (fine-tuning), released
after; see :class:`cnnlab.engine.finetune.Freezer`. Its state is the epoch, so it saves nothing."""

from __future__ import annotations

from cnnlab.engine import distributed
from cnnlab.engine.finetune import Freezer
from cnnlab.train.parts.base import Part


class FreezePart(Part):
    name, has_state = "freeze", False

    def __init__(self, freezer: Freezer):
        self.freezer = freezer

    def on_epoch_start(self, run, epoch: int) -> None:
        if self.freezer.at_epoch(epoch) and run.dist.enabled:  # DDP registers the trainable parameters
            run.train_model = distributed.wrap(run.model, run.dist)


def build(cfg, *, model, **_) -> FreezePart | None:
    epochs = cfg.trainer.get("freeze_epochs", 0)
    return FreezePart(Freezer(model, epochs)) if epochs else None
