"""``cnnlab data stats``: what a dataset holds, as training will see it.

Class counts per split (after the validation split is carved out of train), the image size the
model gets and, for image files, the sizes on disk, the per-channel mean and std of the training
split (what ``dataset.mean=auto dataset.std=auto`` computes), and a warning for empty or tiny classes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image

from cnnlab.data.arrays import channel_stats
from cnnlab.data.images import FORMATS, SUFFIXES
from cnnlab.data.lookup import cache_dir
from cnnlab.data.place import carve
from cnnlab.data.registry import locate, read_splits
from cnnlab.io import open_regular

TINY_SHARE = 0.2  # a class with fewer training images than this share of the largest class is "tiny"


@dataclass
class Stats:
    name: str
    where: Path
    classes: list[str]
    counts: dict[str, list[int]]  # split -> images per class (-1 labels of an unlabeled split not counted)
    shape: tuple[int, ...]  # (C, H, W) as the model gets them
    mean: list[float]
    std: list[float]
    file_sizes: Counter = field(default_factory=Counter)  # (width, height) of the image files
    unlabeled: dict[str, int] = field(default_factory=dict)  # split -> images without labels


def dataset_stats(cfg: DictConfig) -> Stats:
    splits = read_splits(cfg)
    (train_x, train_y), (_, val_y) = carve(cfg, splits, spill=cache_dir(cfg) / "decoded")
    n = len(splits.classes)
    labels = {"train": train_y, "val": val_y}
    unlabeled = {}
    if splits.test_x is not None:
        if splits.test_y is None:
            unlabeled["test"] = len(splits.test_x)
        else:
            labels["test"] = splits.test_y
    mean, std = channel_stats(train_x)
    return Stats(
        name=cfg.name,
        where=locate(cfg),
        classes=splits.classes,
        counts={split: torch.bincount(y, minlength=n).tolist() for split, y in labels.items()},
        shape=tuple(train_x.shape[1:]),
        mean=mean,
        std=std,
        file_sizes=_file_sizes(splits.files),
        unlabeled=unlabeled,
    )


def _file_sizes(files: list[Path]) -> Counter:
    """(width, height) of every image file, from its header alone; binary formats have none."""
    sizes: Counter = Counter()
    for path in files:
        if path.suffix.lower() in SUFFIXES:
            with open_regular(path) as f, Image.open(f, formats=FORMATS) as img:
                sizes[img.size] += 1
    return sizes


def class_warnings(stats: Stats) -> list[str]:
    """A line for classes without training images and one for classes far smaller than the largest."""
    train = stats.counts["train"]
    largest = max(train)
    empty = [name for name, count in zip(stats.classes, train, strict=True) if count == 0]
    tiny = [
        f"{name} ({count})"
        for name, count in zip(stats.classes, train, strict=True)
        if 0 < count < TINY_SHARE * largest
    ]
    lines = []
    if empty:
        lines.append(f"warning: no training images for class {', '.join(empty)}; the model cannot learn it.")
    if tiny:
        lines.append(
            f"warning: {len(tiny)} tiny class(es), under {TINY_SHARE:.0%} of the largest class ({largest} "
            f"training images): {', '.join(tiny)}; consider dataset.sampler=balanced."
        )
    return lines


def format_stats(stats: Stats) -> list[str]:
    """The report as plain lines: a class table, sizes, normalisation and warnings."""
    c, h, w = stats.shape
    lines = [f"{stats.name} in {stats.where}: {len(stats.classes)} classes, images {c}x{h}x{w} (uint8)"]
    splits = list(stats.counts)
    width = max(len("class"), *(len(name) for name in stats.classes))
    lines.append(f"{'class':<{width}}" + "".join(f"{split:>9}" for split in splits))
    for k, name in enumerate(stats.classes):
        lines.append(f"{name:<{width}}" + "".join(f"{stats.counts[split][k]:>9}" for split in splits))
    lines.append(f"{'total':<{width}}" + "".join(f"{sum(stats.counts[split]):>9}" for split in splits))
    for split, count in stats.unlabeled.items():
        lines.append(f"{split}: {count} unlabeled images")
    if stats.file_sizes:
        common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in stats.file_sizes.most_common(3))
        widths = [size[0] for size in stats.file_sizes]
        heights = [size[1] for size in stats.file_sizes]
        lines.append(
            f"image files: {sum(stats.file_sizes.values())}, most common sizes {common}; widths "
            f"{min(widths)}-{max(widths)}, heights {min(heights)}-{max(heights)} px"
        )
    lines.append(
        f"mean {_rounded(stats.mean)} std {_rounded(stats.std)} over the {sum(stats.counts['train'])} "
        "training images (what dataset.mean=auto dataset.std=auto use)"
    )
    return lines + class_warnings(stats)


def _rounded(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
