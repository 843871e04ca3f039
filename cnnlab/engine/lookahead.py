"""Lookahead on the weights (Zhang et al. 2019), as airbench uses it in place of a separate EMA.

Every ``every`` optimizer steps the slow copy moves towards the trained ("fast") weights,
``slow += alpha * (fast - slow)``, and the fast weights are set back to it; at the end of each epoch
the fast weights are set to the slow copy once more, so what is validated and checkpointed is the
average. ``alpha`` may fall over the run, ``alpha_t = 1 - (1 - alpha) * (t / T) ** power`` after ``t``
of ``T`` optimizer steps: close to 1 early (the slow copy follows the weights), ``alpha`` at the end
(it averages strongly). The slow copy starts at the first update after ``start_step``. Parameters
and floating-point buffers (BatchNorm statistics) are averaged, with two fused kernels per update.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import ConfigError


def check_lookahead(every: int, alpha: float, power: float, start_epoch: int) -> None:
    """``trainer.lookahead.*``: every >= 0 (0: off), alpha in (0, 1], power >= 0, start_epoch >= 0."""
    if every < 0:
        raise ConfigError(
            f"trainer.lookahead.every is a number of optimizer steps >= 0 (0: off), got {every}."
        )
    if every and not 0 < alpha <= 1:
        raise ConfigError(f"trainer.lookahead.alpha must be in (0, 1], e.g. 0.23, got {alpha}.")
    if every and (power < 0 or start_epoch < 0):
        raise ConfigError(
            f"trainer.lookahead.power and start_epoch must be 0 or more, got {power} and {start_epoch}."
        )


def _averaged(model: nn.Module) -> list[torch.Tensor]:
    """What the slow copy holds: parameters and floating-point buffers, in state-dict order."""
    return [t for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()]


class Lookahead:
    """The slow copy of ``model``'s weights; :meth:`step` after every optimizer step."""

    def __init__(self, model: nn.Module, *, every: int, alpha: float, power: float, start_step: int,
                 total_steps: int):  # fmt: skip
        self.every, self.alpha, self.power = every, alpha, power
        self.start_step, self.total_steps = start_step, max(total_steps, 1)
        self.fast = [t.detach() for t in _averaged(model)]
        self.slow: list[torch.Tensor] | None = None

    def current_alpha(self, step: int) -> float:
        return 1 - (1 - self.alpha) * min(step / self.total_steps, 1.0) ** self.power

    @torch.no_grad()
    def step(self, step: int) -> None:
        """After optimizer step number ``step`` (counted over the whole run, from 1)."""
        if step <= self.start_step or step % self.every:
            return
        if self.slow is None:
            self.slow = [t.clone() for t in self.fast]
            return
        torch._foreach_lerp_(self.slow, self.fast, self.current_alpha(step))
        torch._foreach_copy_(self.fast, self.slow)

    @torch.no_grad()
    def sync(self) -> None:
        """Set the weights to the slow copy (end of an epoch)."""
        if self.slow is not None:
            torch._foreach_copy_(self.fast, self.slow)

    def state_dict(self) -> dict:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        slow = state["slow"]
        self.slow = None if slow is None else [s.to(f.device) for s, f in zip(slow, self.fast, strict=True)]
