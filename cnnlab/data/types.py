"""Plain containers passed between the dataset readers and the loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class ArraySplits:
    """A dataset decoded into memory as uint8 image tensors.

    Images are ``(N, C, H, W)`` uint8, labels ``(N,)`` int64. ``val_*`` is set only when the dataset
    ships its own validation split; otherwise the caller carves one from train. ``test_y`` is ``None``
    for an unlabeled test split, and ``test_ids`` names test images (file stems) when they come from
    files, for submissions. ``files`` lists the source files, for the data fingerprint. ``cache_key``
    is set when the images are memory-mapped from the decode cache (the training split's entry).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    classes: list[str]
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    test_ids: list[str] | None = None
    files: list[Path] = field(default_factory=list)
    cache_key: str | None = None
