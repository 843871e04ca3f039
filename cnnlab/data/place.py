"""Where the splits live while training: in device memory, or on the host (memory-mapped or in RAM)
and copied one batch at a time (:mod:`cnnlab.data.mmap`); and the validation split carved out of train.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab.data import cache
from cnnlab.data.folds import fold_split
from cnnlab.data.loader import TensorLoader
from cnnlab.data.mmap import HostLoader, memory_budget
from cnnlab.data.options import in_memory_choice, setting
from cnnlab.data.split import split_indices
from cnnlab.data.types import ArraySplits
from cnnlab.errors import DataError

log = logging.getLogger(__name__)

Split = tuple[torch.Tensor, torch.Tensor]


def keep_in_memory(setting, nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of images go into device memory: ``dataset.in_memory``, or for ``auto``,
    whether they fit in :func:`cnnlab.data.mmap.memory_budget`."""
    choice = in_memory_choice(setting)
    if choice != "auto":
        return choice == "true"
    budget = memory_budget(device)
    if nbytes > budget:
        log.info("data: %.2f GB of images exceed the %.2f GB budget on %s; keeping them on the host",
                 nbytes / 1e9, budget / 1e9, device)  # fmt: skip
    return nbytes <= budget


def image_bytes(splits: ArraySplits) -> int:
    return sum(t.numel() for t in (splits.train_x, splits.val_x, splits.test_x) if t is not None)


def carve(cfg: DictConfig, splits: ArraySplits, *, spill: Path | None = None) -> tuple[Split, Split]:
    """Train and validation: the dataset's own validation split, else one carved out of train with
    ``dataset.split_seed``. With ``spill`` (a cache folder), carved splits of memory-mapped images are
    written there once and mapped, so carving never needs the split in memory. With ``dataset.folds``
    the validation split is one fold (:mod:`cnnlab.data.folds`)."""
    if setting(cfg, "folds"):
        return fold_split(cfg, splits)
    if splits.val_x is not None:
        return (splits.train_x, splits.train_y), (splits.val_x, splits.val_y)
    train_idx, val_idx = split_indices(
        splits.train_y, cfg.val_split, seed=cfg.split_seed, stratified=cfg.stratified
    )
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(
            f"{cfg.name}: dataset.val_split={cfg.val_split} leaves an empty split of "
            f"{len(splits.train_y)} training images; choose a different val_split."
        )
    parts = []
    for part, rows in (("train", train_idx), ("val", val_idx)):
        if spill is not None and splits.cache_key is not None:
            key = _carve_key(cfg, splits.cache_key, part)
            parts.append((cache.rows_entry(spill, key, splits.train_x, rows), splits.train_y[rows]))
        else:
            parts.append((splits.train_x[rows], splits.train_y[rows]))
    return parts[0], parts[1]


def _carve_key(cfg: DictConfig, source: str, part: str) -> str:
    blob = json.dumps([source, cfg.val_split, cfg.split_seed, cfg.stratified]).encode()
    return f"{hashlib.sha256(blob).hexdigest()}-{part}"


def loader(
    split: Split, batch_size: int, *, device: torch.device, in_memory: bool, mapped: bool, **kwargs
) -> TensorLoader:
    """A loader over ``split``: on the device when ``in_memory`` (read whole when ``mapped``), else a
    :class:`HostLoader` that leaves the images where they are."""
    x, y = split
    if not in_memory:
        return HostLoader(x, y, batch_size, device=device, **kwargs)
    x = x.clone() if mapped and device.type == "cpu" else x.to(device)  # .to(cpu) would keep the mapping
    return TensorLoader(x, y.to(device), batch_size, **kwargs)
