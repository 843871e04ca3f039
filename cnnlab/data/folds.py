"""k-fold cross-validation: ``dataset.folds=K dataset.fold=k`` makes fold k of K the validation split.

The pool is the training split plus the dataset's own validation split when it ships one (Food-11's
``valid/``), so every labeled image outside the test split is validated on exactly once over the K runs.
Folds are stratified (each class spread evenly over the folds) and drawn with ``dataset.split_seed``, so
they do not move when the run seed changes and every fold run of a sweep sees the same partition.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from cnnlab.data.options import setting
from cnnlab.data.types import ArraySplits
from cnnlab.errors import ConfigError, DataError

Split = tuple[torch.Tensor, torch.Tensor]


def check_folds(cfg: DictConfig) -> None:
    """``dataset.folds``: null or at least 2; ``dataset.fold``: 0 to folds - 1 (0 without folds)."""
    folds, fold = setting(cfg, "folds"), setting(cfg, "fold")
    if folds is None:
        if fold != 0:
            raise ConfigError(f"dataset.fold={fold} needs dataset.folds=K (the number of folds, e.g. 5).")
        return
    if folds < 2:
        raise ConfigError(f"dataset.folds must be at least 2 (or null: one validation split), got {folds}.")
    if not 0 <= fold < folds:
        raise ConfigError(f"dataset.fold must be 0 to {folds - 1} for dataset.folds={folds}, got {fold}.")


def fold_of(labels: torch.Tensor, folds: int, *, seed: int, stratified: bool) -> torch.Tensor:
    """The fold (0 to ``folds - 1``) of every sample. Stratified: each class's samples, shuffled, are
    dealt round-robin, continuing across classes, so fold sizes differ by at most one and every class
    is split as evenly as its count allows."""
    g = torch.Generator().manual_seed(seed)
    if stratified:
        order = torch.cat([
            idx[torch.randperm(len(idx), generator=g)]
            for idx in ((labels == c).nonzero().flatten() for c in labels.unique(sorted=True))
        ])  # fmt: skip
    else:
        order = torch.randperm(len(labels), generator=g)
    assignment = torch.empty(len(labels), dtype=torch.long)
    assignment[order] = torch.arange(len(labels)) % folds
    return assignment


def fold_split(cfg: DictConfig, splits: ArraySplits) -> tuple[Split, Split]:
    """(train, validation) for fold ``dataset.fold`` of ``dataset.folds`` over the labeled pool."""
    x, y = splits.train_x, splits.train_y
    if splits.val_x is not None:
        x, y = torch.cat([x, splits.val_x]), torch.cat([y, splits.val_y])
    folds = setting(cfg, "folds")
    if len(y) < folds:
        raise DataError(f"{cfg.name}: {len(y)} labeled images cannot make {folds} folds; lower the folds.")
    in_val = fold_of(y, folds, seed=cfg.split_seed, stratified=cfg.stratified) == setting(cfg, "fold")
    train_rows, val_rows = (~in_val).nonzero().flatten(), in_val.nonzero().flatten()
    return (x[train_rows], y[train_rows]), (x[val_rows], y[val_rows])
