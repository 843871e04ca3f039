"""Optimizer parameter groups and kernels (the optimizer is built by :func:`cnnlab.build.build_optimizer`)."""

from __future__ import annotations

import inspect

from torch import nn

from cnnlab.errors import ConfigError

IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_bias_norm: bool,
    *,
    lr: float | None = None,
    bias_lr_mult: float = 1.0,
) -> list[dict]:
    """Weights (2-D and up) and the 1-D tensors (biases, normalisation weights) as two groups.

    The 1-D group gets no weight decay unless ``decay_bias_norm``, and ``bias_lr_mult`` times the
    learning rate (airbench trains BatchNorm biases 64x faster); its weight decay is then divided by the
    multiplier, so that the decay step, ``lr * weight_decay``, is the weights' one.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if bias_lr_mult == 1 and (decay_bias_norm or weight_decay == 0):
        return [{"params": params}]
    vectors = {"params": [p for p in params if p.ndim <= 1],
               "weight_decay": weight_decay / bias_lr_mult if decay_bias_norm else 0.0}  # fmt: skip
    if bias_lr_mult != 1:
        vectors["lr"] = lr * bias_lr_mult
    return [{"params": [p for p in params if p.ndim > 1]}, vectors]


def implementation_kwargs(optimizer_class: type, implementation: str) -> list[dict]:
    """Constructor arguments to try in order for ``optimizer.implementation``.

    ``auto``: torch's fused kernel where the class has one (one kernel for all parameters: Adam, AdamW,
    SGD, Adagrad on CPU and CUDA), else its foreach kernels (one kernel per operation), else nothing.
    The caller falls back to the next choice when torch refuses one for these parameters' device.
    """
    accepted = inspect.signature(optimizer_class.__init__).parameters
    name = optimizer_class.__name__
    if implementation == "auto":
        return [kw for kw in ({"fused": True}, {"foreach": True}) if next(iter(kw)) in accepted] + [{}]
    if implementation == "for_loop":
        return [{"foreach": False}] if "foreach" in accepted else [{}]
    if implementation not in accepted:
        have = [i for i in ("fused", "foreach") if i in accepted]
        raise ConfigError(
            f"optimizer.implementation={implementation}: {name} has no {implementation} kernels; choose one "
            f"of: {', '.join(['auto', *have, 'for_loop'])}."
        )
    return [{implementation: True}]
