"""Builders from config nodes, and ``check(cfg)``: every option check, before any data is read.

Each builder takes its own config node (and what the data says: channels, image size, classes) and
raises :class:`~cnnlab.errors.ConfigError` with one line. ``train``, ``load_run`` (predict, evaluate,
viz, export, resume) and the scripts build here, so a run is rebuilt exactly as it was trained.
"""

from __future__ import annotations

import dataclasses
import random

import hydra
import numpy as np
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.config import SCHEMAS, validate
from cnnlab.data.augment import BatchAugment, build_augment, check_augment
from cnnlab.engine.distributed import check_backend
from cnnlab.engine.ema import check_decay
from cnnlab.engine.optim import param_groups
from cnnlab.engine.schedulers import Schedule, build_scheduler, check_schedule
from cnnlab.engine.tta import parse_tta
from cnnlab.errors import CnnlabError, ConfigError, did_you_mean

OPTIMIZER_OWN_KEYS = ("name", "decay_bias_norm")  # cnnlab's keys, not constructor arguments
FREE_FORM = ("scheduler.options",)  # dict nodes whose keys the schema does not list (checked by their owner)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check(cfg: DictConfig) -> None:
    """Every check a train config can fail, with no data read: keys the schema does not know (a ``+key``
    typo), values (:func:`cnnlab.config.validate`), the augmentation, the schedule and its options, the
    EMA decay, the test-time augmentation and the distributed backend."""
    check_known_keys(cfg)
    validate(cfg)
    aug = OmegaConf.to_container(cfg.augmentation, resolve=True)
    check_augment({**aug, "channels": cfg.dataset.channels, "image_size": cfg.dataset.image_size})
    sched = OmegaConf.to_container(cfg.scheduler, resolve=True)
    check_schedule(sched["name"], sched["options"])
    if sched["warmup_epochs"] and sched["warmup_steps"]:
        raise ConfigError("Set one of scheduler.warmup_epochs or scheduler.warmup_steps, not both.")
    check_decay(cfg.trainer.ema)
    parse_tta(cfg.trainer.tta)
    check_backend(str(cfg.trainer.backend))


def check_known_keys(cfg: DictConfig, path: str = "") -> None:
    """Refuse keys a ``+key=value`` override added that the schema does not know (``+trainer.max_epoch``,
    ``+optimiser=sgd``), with the nearest known key. A model whose ``_target_`` is not one of cnnlab's
    may take options of its own."""
    kind = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(kind) and path not in FREE_FORM:
        known = [f.name for f in dataclasses.fields(kind)]
        own_model = path == "model" and cfg.get("_target_") in {s._target_ for s in SCHEMAS["model"].values()}
        for key in cfg:
            if key not in known and (path != "model" or own_model):
                hint = did_you_mean(str(key), known)
                where = f"{path}.{key}" if path else str(key)
                listed = f"; {path or 'the config'} has: {', '.join(known)}."
                raise ConfigError(f"Unknown config key '{where}'" + (f".{hint}" if hint else listed))
    for key in cfg:
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            check_known_keys(child, f"{path}.{key}" if path else str(key))


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


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """Any ``torch.optim`` class (``_target_``), weight decay off for biases and norms unless asked."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    decay_bias_norm = bool(kwargs.get("decay_bias_norm", False))
    for key in OPTIMIZER_OWN_KEYS:
        kwargs.pop(key, None)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    groups = param_groups(model, kwargs.get("weight_decay", 0.0), decay_bias_norm)
    try:
        return hydra.utils.instantiate(kwargs, groups)
    except Exception as exc:
        raise ConfigError(
            f"Could not build optimizer {cfg.get('_target_')}: {exc.__cause__ or exc}."
        ) from None


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: DictConfig, *, steps_per_epoch: int, max_epochs: int, mode: str
) -> Schedule:
    sched = OmegaConf.to_container(cfg, resolve=True)
    options = sched.pop("options")
    return build_scheduler(
        optimizer, name=sched.pop("name"), steps_per_epoch=steps_per_epoch, max_epochs=max_epochs, mode=mode,
        **options, **sched,
    )  # fmt: skip


def build_augment_from(cfg: DictConfig, *, channels: int, image_size: int) -> BatchAugment | None:
    return build_augment(
        **OmegaConf.to_container(cfg, resolve=True), channels=channels, image_size=image_size
    )


def build_criterion(trainer: DictConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=trainer.label_smoothing)
