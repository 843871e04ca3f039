"""Builders from config nodes: each takes its own node (and what the data says) and raises ConfigError.

``train``, ``load_run`` (predict, evaluate, viz, export, resume) and the scripts build models here, so a
run is rebuilt exactly as it was trained.
"""

from __future__ import annotations

import random

import hydra
import numpy as np
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.errors import CnnlabError, ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    kwargs.pop("name", None)
    try:
        return hydra.utils.instantiate(
            kwargs, in_channels=in_channels, num_classes=num_classes, image_size=image_size
        )
    except InstantiationException as exc:
        if isinstance(exc.__cause__, CnnlabError):
            raise exc.__cause__ from None
        raise ConfigError(f"Could not build model {cfg.get('_target_')}: {exc.__cause__ or exc}.") from None


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
