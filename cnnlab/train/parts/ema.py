"""``trainer.ema``: an exponential moving average of the weights (:class:`cnnlab.engine.ema.ModelEMA`),
updated inside the step and scored beside the raw weights every epoch; the better of the two (the
tracker's rule) is the epoch's value and goes into best.pt as ``weights: ema``."""

from __future__ import annotations

from cnnlab.engine.ema import ModelEMA
from cnnlab.train.parts.base import Part


class EmaPart(Part):
    name = "ema"

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)


def build(cfg, *, model, ctx, **_) -> EmaPart | None:
    if not cfg.trainer.ema:
        return None
    ctx.ema = ModelEMA(model, cfg.trainer.ema)  # the step updates it
    return EmaPart(ctx.ema)
