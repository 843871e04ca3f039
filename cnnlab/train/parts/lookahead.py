"""``trainer.lookahead``: a slow copy of the weights pulled towards the fast ones every k steps (inside
the step, :class:`cnnlab.engine.lookahead.Lookahead`); every epoch validates and keeps the slow weights."""

from __future__ import annotations

from cnnlab.engine.lookahead import Lookahead
from cnnlab.engine.loop import optimizer_steps
from cnnlab.train.parts.base import Part


class LookaheadPart(Part):
    name = "lookahead"

    def __init__(self, lookahead: Lookahead):
        self.lookahead = lookahead

    def on_train_end(self, run, epoch: int) -> None:
        self.lookahead.sync()  # validate and keep the slow weights

    def state_dict(self) -> dict:
        return self.lookahead.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.lookahead.load_state_dict(state)


def build(cfg, *, model, data, ctx, schedule, **_) -> LookaheadPart | None:
    tc = cfg.trainer
    la = tc.lookahead
    if not la.every:
        return None
    steps_per_epoch = optimizer_steps(data.train, tc.accumulate)
    ctx.lookahead = Lookahead(model, every=la.every, alpha=la.alpha, power=la.power,
                              start_step=la.start_epoch * steps_per_epoch,
                              total_steps=schedule.total_steps)  # fmt: skip
    return LookaheadPart(ctx.lookahead)
