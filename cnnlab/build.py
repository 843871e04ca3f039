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
from cnnlab.data.folds import check_folds
from cnnlab.data.mmap import host_available
from cnnlab.data.options import check_dataset
from cnnlab.data.pseudo import check_pseudo_label
from cnnlab.engine.adversarial import Adversary, check_adversarial
from cnnlab.engine.device import check_compile
from cnnlab.engine.distributed import check_backend
from cnnlab.engine.ema import check_decay
from cnnlab.engine.finetune import check_finetune, lr_groups
from cnnlab.engine.lookahead import check_lookahead
from cnnlab.engine.losses import build_loss, check_loss, loss_node
from cnnlab.engine.optim import implementation_kwargs, param_groups
from cnnlab.engine.schedulers import Schedule, build_scheduler, check_schedule
from cnnlab.engine.threads import check_threads
from cnnlab.engine.tta import parse_tta
from cnnlab.errors import CnnlabError, ConfigError, did_you_mean
from cnnlab.models.sizes import check_image_size

OPTIMIZER_OWN_KEYS = (
    "name",
    "decay_bias_norm",
    "bias_lr_mult",
    "implementation",
    "backbone_lr_mult",
)  # not torch's
FREE_FORM = ("scheduler.options",)  # dict nodes whose keys the schema does not list (checked by their owner)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check(cfg: DictConfig) -> None:
    """Every check a train config can fail, with no data read: keys the schema does not know (a ``+key``
    typo), values (:func:`cnnlab.config.validate`), the augmentation, the schedule and its options, the
    EMA decay and lookahead, the compile mode, the test-time augmentation and the distributed backend."""
    check_known_keys(cfg)
    validate(cfg)
    check_dataset(cfg.dataset)
    check_image_size(cfg.model, cfg.dataset.image_size)
    check_model_memory(cfg)
    check_loss(loss_node(cfg))
    check_finetune(cfg)
    aug = OmegaConf.to_container(cfg.augmentation, resolve=True)
    check_augment({**aug, "channels": cfg.dataset.channels, "image_size": cfg.dataset.image_size})
    sched = OmegaConf.to_container(cfg.scheduler, resolve=True)
    check_schedule(sched["name"], sched["options"])
    if sched["warmup_epochs"] and sched["warmup_steps"]:
        raise ConfigError("Set one of scheduler.warmup_epochs or scheduler.warmup_steps, not both.")
    check_decay(cfg.trainer.ema)
    check_lookahead(**cfg.trainer.lookahead)
    check_compile(cfg.trainer.compile)
    check_threads(cfg.trainer.threads)
    parse_tta(cfg.trainer.tta)
    check_backend(str(cfg.trainer.backend))
    check_tips(cfg)


def check_tips(cfg: DictConfig) -> None:
    """k-fold, adversarial training, weight averaging and pseudo-labelling options (issue 20)."""
    check_folds(cfg.dataset)
    adv = cfg.augmentation.adversarial
    check_adversarial(adv.method, adv.eps, adv.steps, adv.step_size, adv.fraction)
    tc = cfg.trainer
    if tc.swa_start is not None and not 1 <= tc.swa_start <= tc.max_epochs:
        raise ConfigError(
            f"trainer.swa_start is the first epoch averaged, 1 to trainer.max_epochs ({tc.max_epochs}), "
            f"or null; got {tc.swa_start}."
        )
    check_pseudo_label(tc.pseudo_label, max_epochs=tc.max_epochs)


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


def check_model_memory(cfg: DictConfig) -> None:
    """Refuse large images that make a model too big for memory (LeNet's and the MLP's first linear layer
    grow with the square of dataset.image_size), counted on the meta device, before anything is built."""
    own = {s._target_ for s in SCHEMAS["model"].values()}
    if cfg.dataset.image_size <= 512 or cfg.model.get("_target_") not in own:
        return
    node = {**OmegaConf.to_container(cfg.model, resolve=True), "weights": None}
    node.pop("name", None)
    try:
        with torch.device("meta"):
            model = hydra.utils.instantiate(
                node, in_channels=cfg.dataset.channels, num_classes=cfg.dataset.num_classes or 2,
                image_size=cfg.dataset.image_size,
            )  # fmt: skip
    except Exception:  # building it for real reports the model's own error
        return
    params = sum(p.numel() for p in model.parameters())
    need, available = 16 * params, host_available()  # float32 weights, gradients and two optimizer moments
    if need > available:
        raise ConfigError(
            f"model {cfg.model.name} at dataset.image_size={cfg.dataset.image_size} has {params:,} "
            f"parameters, {need / 1e9:,.1f} GB to train, but {available / 1e9:,.1f} GB of memory is "
            "available; lower dataset.image_size or take a model with global pooling (model=simplecnn)."
        )


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def uses_channels_last(model: nn.Module, setting) -> bool:
    """Whether a run computes in channels_last: ``trainer.channels_last``, or for null (auto) whether the
    model has convolutions. Training and every scorer of the run decide it here."""
    return has_conv(model) if setting is None else bool(setting)


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """Any ``torch.optim`` class (``_target_``), weight decay off for biases and norms unless asked, with
    the kernels ``implementation`` names (see :func:`cnnlab.engine.optim.implementation_kwargs`); with
    ``backbone_lr_mult`` (see :mod:`cnnlab.engine.finetune`) the parameters not new to the model learn at
    that multiple of their group's learning rate."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    own = {key: kwargs.pop(key) for key in OPTIMIZER_OWN_KEYS if key in kwargs}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    groups = param_groups(model, kwargs.get("weight_decay", 0.0), bool(own.get("decay_bias_norm", False)),
                          lr=kwargs["lr"], bias_lr_mult=own.get("bias_lr_mult", 1.0))  # fmt: skip
    groups = lr_groups(model, groups, kwargs["lr"], float(own.get("backbone_lr_mult", 1.0)))
    try:
        optimizer_class = hydra.utils.get_class(kwargs.pop("_target_"))
        choices = implementation_kwargs(optimizer_class, own.get("implementation", "auto"))
        for i, kernels in enumerate(choices):
            try:
                return optimizer_class(groups, **kwargs, **kernels)
            except RuntimeError:  # torch has no such kernel for these parameters' device
                if i + 1 == len(choices):
                    raise
    except CnnlabError:
        raise
    except Exception as exc:
        target = cfg.get("_target_")
        raise ConfigError(f"Could not build optimizer {target}: {exc.__cause__ or exc}.") from None


def build_schedule(
    optimizer: torch.optim.Optimizer,
    cfg: DictConfig,
    *,
    steps_per_epoch: int,
    max_epochs: int,
    mode: str,
    max_steps: int | None = None,
) -> Schedule:
    sched = OmegaConf.to_container(cfg, resolve=True)
    options = sched.pop("options")
    return build_scheduler(
        optimizer, name=sched.pop("name"), steps_per_epoch=steps_per_epoch, max_epochs=max_epochs, mode=mode,
        max_steps=max_steps, **options, **sched,
    )  # fmt: skip


def build_augment_from(cfg: DictConfig, *, channels: int, image_size: int) -> BatchAugment | None:
    options = OmegaConf.to_container(cfg, resolve=True)
    options.pop("adversarial", None)  # made in the training step (build_adversary), not a batch op
    return build_augment(**options, channels=channels, image_size=image_size)


def build_adversary(cfg: DictConfig, *, mean: torch.Tensor, std: torch.Tensor) -> Adversary | None:
    """``augmentation.adversarial`` (None when off, or in a run stored before it existed)."""
    adv = cfg.get("adversarial")
    if adv is None or adv.method == "none":
        return None
    return Adversary(str(adv.method), float(adv.eps), mean, std, steps=int(adv.steps),
                     step_size=adv.step_size, fraction=float(adv.fraction))  # fmt: skip


def build_criterion(cfg: DictConfig, *, train_labels: torch.Tensor, num_classes: int) -> nn.Module:
    """The loss of a train config: its ``loss`` group, the deprecated trainer.label_smoothing moved in."""
    return build_loss(loss_node(cfg, warn=True), train_labels=train_labels, num_classes=num_classes)
