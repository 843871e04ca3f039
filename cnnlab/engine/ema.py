"""An exponential moving average (EMA) of a model's weights, evaluated instead of the raw weights.

Hand-written rather than ``torch.optim.swa_utils.AveragedModel`` because AveragedModel either leaves
buffers (BatchNorm statistics) at their initial copy (``use_buffers=False``) or averages them,
integer ``num_batches_tracked`` included (``use_buffers=True``); it overwrites the average with the
model on the first update; it reads a device tensor on every update (a sync on GPUs); and its decay
is fixed, with no warmup. Here parameters are averaged with the same fused ``_foreach_lerp_`` that
``get_ema_multi_avg_fn`` uses, and buffers are copied from the model with one ``_foreach_copy_``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cnnlab.errors import ConfigError


def check_decay(decay) -> None:
    """``trainer.ema``: null, or a decay strictly between 0 and 1."""
    if decay is not None and not 0 < decay < 1:
        raise ConfigError(
            f"trainer.ema is a decay in (0, 1) (between 0 and 1, exclusive), e.g. 0.999, or null; "
            f"got {decay}."
        )


class ModelEMA:
    """``ema = d * ema + (1 - d) * weights`` after every optimizer step.

    With ``warmup`` the decay starts low and rises to ``decay`` as ``d = min(decay, (1 + t) / (10 + t))``
    after ``t`` earlier updates (TensorFlow's ``ExponentialMovingAverage(num_updates=...)``), so the
    average is not dominated by the random initial weights in short runs.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        check_decay(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self._ema_params, self._ema_buffers = list(self.module.parameters()), list(self.module.buffers())
        self._pairs: tuple | None = None

    @property
    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1 - self.current_decay
        self.updates += 1
        if self._pairs is None or self._pairs[0] is not model:  # the lists, once per model
            self._pairs = (model, [p.detach() for p in model.parameters()], list(model.buffers()))
        _, params, buffers = self._pairs
        torch._foreach_lerp_(self._ema_params, params, weight)
        if buffers:
            torch._foreach_copy_(self._ema_buffers, buffers)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
