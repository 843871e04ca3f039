"""Weight averaging: stochastic weight averaging over epochs (``trainer.swa_start``) and the average of
saved checkpoints (``cnnlab export average=[...]``).

Both use ``torch.optim.swa_utils``: :class:`~torch.optim.swa_utils.AveragedModel` keeps the equal-weight
running mean of the parameters, and :func:`~torch.optim.swa_utils.update_bn` recomputes the BatchNorm
statistics afterwards, since averaged weights do not match any one epoch's running statistics.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class WeightAverage:
    """The mean of the weights at the end of every epoch from ``start`` on (Izmailov et al. 2018)."""

    def __init__(self, model: nn.Module, start: int):
        self.start = start
        self.averaged = AveragedModel(model, use_buffers=False)  # buffers: recomputed by recompute_bn

    @property
    def count(self) -> int:
        return int(self.averaged.n_averaged)

    def update(self, model: nn.Module, epoch: int) -> None:
        if epoch >= self.start:
            self.averaged.update_parameters(model)

    def recompute_bn(self, inputs: Iterable[torch.Tensor]) -> nn.Module:
        """Set the BatchNorm statistics of the averaged weights from one pass over ``inputs``
        (normalised training batches); return the averaged model, in eval mode."""
        module = self.averaged.module
        if has_batchnorm(module):
            update_bn(inputs, module)
        return module.eval()

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)


def average_states(states: list[dict]) -> dict:
    """The element-wise mean of state dicts with the same keys and shapes; integer buffers (BatchNorm's
    ``num_batches_tracked``) take the largest value."""
    first = states[0]
    out = {}
    for key, value in first.items():
        values = [s[key] for s in states]
        if value.is_floating_point():
            out[key] = torch.stack([v.float() for v in values]).mean(0).to(value.dtype)
        else:
            out[key] = torch.stack(values).amax(0)
    return out
