"""Pruning: global magnitude masks over every convolution and linear weight (unstructured), and L1
channel pruning that removes a share of every convolution's filters (structured).

Unstructured masks come from ``torch.nn.utils.prune.global_unstructured`` (L1 magnitude over all the
weights at once, so layers lose different shares) and are then kept outside the module: the weights stay
plain parameters with the same state-dict keys, and :func:`apply_masks` zeroes them again after every
optimizer step while fine-tuning, so the saved weights hold the zeros themselves. Structured pruning
keeps the filters with the largest L1 norm and copies them into a narrower model of the same
architecture (:func:`copy_channels`), which is what makes it smaller and faster.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def magnitude_masks(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    """Masks (1 keep, 0 pruned) of the ``amount`` share of all conv and linear weights with the least
    magnitude, pooled over the layers; the weights are zeroed where the mask is 0."""
    layers = weight_layers(model)
    prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured,
                              amount=amount)  # fmt: skip
    masks = {}
    for name, module in layers:
        masks[name] = module.weight_mask.detach().clone()
        prune.remove(module, "weight")  # back to a plain parameter, the zeros written into it
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        weight = modules[name].weight
        weight.mul_(mask.to(weight.device))


def sparsity(model: nn.Module) -> float:
    """The share of exact zeros among the conv and linear weights."""
    weights = [m.weight for _, m in weight_layers(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def kept_channels(model: nn.Module, amount: float) -> list[torch.Tensor]:
    """For every convolution in order, the indices of the ``1 - amount`` share of its filters (at least
    one) with the largest L1 norm, sorted."""
    kept = []
    for _, conv in weight_layers(model):
        if isinstance(conv, nn.Conv2d):
            norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
            k = max(1, round(len(norms) * (1 - amount)))
            kept.append(norms.topk(k).indices.sort().values)
    return kept


@torch.no_grad()
def copy_channels(old: nn.Module, new: nn.Module, kept: list[torch.Tensor]) -> None:
    """Fill ``new`` (the same chain of layers, each convolution narrowed to ``len(kept[i])`` filters)
    with ``old``'s weights: the kept filters, the matching input channels of the next convolution,
    BatchNorm entries, and the matching columns of the first linear layer after the flatten."""
    old_leaves = [m for m in old.modules() if not list(m.children())]
    new_leaves = [m for m in new.modules() if not list(m.children())]
    if len(old_leaves) != len(new_leaves):
        raise ValueError("the narrowed model has another structure")
    convs = iter(kept)
    prev, prev_width = None, None  # the kept output channels of the last convolution
    for a, b in zip(old_leaves, new_leaves, strict=True):
        if isinstance(a, nn.Conv2d):
            keep = next(convs)
            weight = a.weight[keep]
            b.weight.copy_(weight if prev is None else weight[:, prev])
            if a.bias is not None:
                b.bias.copy_(a.bias[keep])
            prev, prev_width = keep, a.out_channels
        elif isinstance(a, nn.BatchNorm2d):
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(b, key).copy_(getattr(a, key)[prev])
            b.num_batches_tracked.copy_(a.num_batches_tracked)
        elif isinstance(a, nn.Linear) and prev is not None:  # the first linear layer: flattened (C, H, W)
            area = a.in_features // prev_width
            columns = (prev.view(-1, 1) * area + torch.arange(area)).flatten()
            b.weight.copy_(a.weight[:, columns])
            b.bias.copy_(a.bias)
            prev = None
        else:
            b.load_state_dict(a.state_dict())
