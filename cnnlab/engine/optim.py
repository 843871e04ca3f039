"""Build the optimizer from the ``optimizer`` config group (any torch.optim class via ``_target_``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.engine.finetune import lr_groups
from cnnlab.errors import ConfigError

OWN_KEYS = ("name", "decay_bias_norm", "backbone_lr_mult")  # cnnlab's keys, not constructor arguments


def param_groups(model: nn.Module, weight_decay: float, decay_bias_norm: bool) -> list[dict]:
    """Weight decay off for biases and normalisation weights (1-D tensors) unless asked for."""
    if decay_bias_norm or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: DictConfig):
    """The optimizer over every trainable parameter; with ``backbone_lr_mult`` (see engine.finetune),
    the parameters not new to the model learn at ``lr * backbone_lr_mult``."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    decay_bias_norm = bool(kwargs.get("decay_bias_norm", False))
    backbone_lr_mult = float(kwargs.get("backbone_lr_mult", 1.0))
    for key in OWN_KEYS:
        kwargs.pop(key, None)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    groups = param_groups(model, kwargs.get("weight_decay", 0.0), decay_bias_norm)
    groups = lr_groups(model, groups, kwargs["lr"], backbone_lr_mult)
    try:
        return hydra.utils.instantiate(kwargs, groups)
    except Exception as exc:
        raise ConfigError(
            f"Could not build optimizer {cfg.get('_target_')}: {exc.__cause__ or exc}."
        ) from None
