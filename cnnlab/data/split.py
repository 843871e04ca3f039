"""Carve a validation split out of train, with its own seed so it does not move with the run seed."""

from __future__ import annotations

import torch


def split_indices(labels: torch.Tensor, fraction: float, *, seed: int, stratified: bool) -> tuple:
    """Return (train_idx, val_idx). Stratified keeps each class's share; random ignores labels."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    if not stratified:
        perm = torch.randperm(n, generator=g)
        n_val = max(1, round(n * fraction))
        return perm[n_val:].sort().values, perm[:n_val].sort().values
    val_parts, train_parts = [], []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = round(len(idx) * fraction)
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values
