"""Training losses: what the step minimises, given the logits and the (possibly mixed) targets.

``loss=cross_entropy`` (torch's, with ``label_smoothing``) or ``loss=focal`` (Lin et al. 2017), both
with ``class_weights``: null, ``auto`` (the inverse class frequency of the training split, scaled so
that a balanced split gets weights of 1, as scikit-learn's "balanced") or one weight per class. The
focal loss follows torch's cross-entropy term by term, label smoothing and weights included, so
``gamma=0`` gives exactly cross-entropy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)

LOSSES = ("cross_entropy", "focal")


class FocalLoss(nn.Module):
    """Mean over the batch of ``sum_k w_k q_k (1 - p_k)^gamma (-log p_k)``, divided by the mean weight of
    the true classes (as torch weights cross-entropy), where ``q`` is the smoothed one-hot target."""

    def __init__(self, gamma: float = 2.0, *, weight: torch.Tensor | None = None, label_smoothing: float = 0):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        # per class (1 - p)^gamma (-log p); the clamp keeps the gradient finite for gamma < 1 at p = 1
        terms = -log_p * (1 - log_p.exp()).clamp(min=1e-12).pow(self.gamma)
        weight = torch.ones(logits.shape[1], device=logits.device) if self.weight is None else self.weight
        true = terms.gather(1, target[:, None]).squeeze(1) * weight[target]
        eps = self.label_smoothing
        per_sample = (1 - eps) * true + eps / logits.shape[1] * (terms * weight).sum(1) if eps else true
        return per_sample.sum() / weight[target].sum()


def check_loss(cfg) -> None:
    """The ``loss`` node's values, before any data is read."""
    if cfg.name not in LOSSES:
        raise ConfigError(f"Unknown loss '{cfg.name}'; choose one of: {', '.join(LOSSES)}.")
    if not 0 <= cfg.label_smoothing < 1:
        raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {cfg.label_smoothing}.")
    if cfg.get("gamma", 0.0) < 0:
        raise ConfigError(f"loss.gamma must be 0 or more, got {cfg.gamma}.")
    weights = cfg.class_weights
    if weights is None or weights == "auto":
        return
    if isinstance(weights, str) or not all(isinstance(w, (int, float)) and w >= 0 for w in weights) \
            or not any(w > 0 for w in weights):  # fmt: skip
        raise ConfigError(
            f"loss.class_weights must be null, auto or a list of one weight >= 0 per class, got {weights}."
        )


def class_weights(spec, train_labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """The weight of each class, on the labels' device: ``spec`` is null, ``auto`` or a list."""
    if spec is None:
        return None
    if spec == "auto":
        counts = torch.bincount(train_labels.long(), minlength=num_classes).double()
        if (counts == 0).any():
            empty = ", ".join(str(int(k)) for k in torch.nonzero(counts == 0).flatten()[:5])
            raise ConfigError(
                f"loss.class_weights=auto: class(es) {empty} have no training images; give the weights "
                "as a list or drop the classes."
            )
        weights = counts.sum() / (num_classes * counts)
        log.info("class weights (inverse frequency): %s", ", ".join(f"{w:.3g}" for w in weights.tolist()))
        return weights.float().to(train_labels.device)
    if len(spec) != num_classes:
        raise ConfigError(
            f"loss.class_weights has {len(spec)} weights for {num_classes} classes; give one per class."
        )
    return torch.tensor([float(w) for w in spec], device=train_labels.device)


def loss_node(cfg: DictConfig, *, warn: bool = False) -> DictConfig:
    """The ``loss`` node of a train config, with the deprecated ``trainer.label_smoothing`` moved in
    (with a deprecation warning when ``warn``: the builder warns, once per run, not every check).

    A config without a ``loss`` node (saved before the group existed) means cross-entropy.
    """
    loss = cfg.get("loss") or OmegaConf.create({"name": "cross_entropy", "label_smoothing": 0.0,
                                                 "class_weights": None})  # fmt: skip
    old = cfg.trainer.get("label_smoothing") or 0.0
    if not old:
        return loss
    if loss.label_smoothing and loss.label_smoothing != old:
        raise ConfigError(
            f"trainer.label_smoothing={old} and loss.label_smoothing={loss.label_smoothing} disagree; "
            "set only loss.label_smoothing (trainer.label_smoothing is deprecated)."
        )
    if warn:
        log.warning("trainer.label_smoothing is deprecated; use loss.label_smoothing=%g instead.", old)
    loss = loss.copy()
    loss.label_smoothing = old
    return loss


def build_loss(cfg: DictConfig, *, train_labels: torch.Tensor, num_classes: int) -> nn.Module:
    """The criterion of the ``loss`` node ``cfg`` (see :func:`loss_node`), with class weights computed
    from the training split's labels (all of them, on every rank under DDP)."""
    check_loss(cfg)
    weight = class_weights(cfg.class_weights, train_labels, num_classes)
    if cfg.name == "focal":
        return FocalLoss(cfg.gamma, weight=weight, label_smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def mixed_loss(criterion: Callable, logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float):
    """lam * loss(y_a) + (1 - lam) * loss(y_b); just loss(y_a) for an unmixed batch."""
    if lam == 1.0:
        return criterion(logits, y_a)
    return lam * criterion(logits, y_a) + (1 - lam) * criterion(logits, y_b)
