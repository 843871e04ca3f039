"""Turn a ``dataset`` config into loaders: locate, read and check the data, carve validation, normalise,
and place the splits in device memory or on the host (see :mod:`cnnlab.data.place`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab.data.arrays import channel_stats, resize_images
from cnnlab.data.cifar import LAYOUTS as CIFAR_LAYOUTS
from cnnlab.data.cifar import has_cifar10, read_cifar10
from cnnlab.data.folders import (
    FOLDER_LAYOUT,
    FOOD11_LAYOUT,
    has_image_folder,
    has_train_dir,
    read_food11,
    read_image_folder,
)
from cnnlab.data.idx import IDX_LAYOUT, has_idx_files, read_idx_dataset
from cnnlab.data.loader import TensorLoader
from cnnlab.data.lookup import cache_dir, cannot_read, find_root
from cnnlab.data.mmap import check_fits
from cnnlab.data.options import check_dataset, is_auto, setting
from cnnlab.data.place import carve, image_bytes, keep_in_memory, loader
from cnnlab.data.types import ArraySplits
from cnnlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def workers(cfg: DictConfig) -> int:
    return (os.cpu_count() or 1) if cfg.num_workers is None else cfg.num_workers


def _read_idx(cfg: DictConfig, root: Path) -> ArraySplits:
    return read_idx_dataset(root)


def _read_cifar10(cfg: DictConfig, root: Path) -> ArraySplits:
    return read_cifar10(root, cache_dir=cache_dir(cfg), num_workers=workers(cfg))


def _photo_kwargs(cfg: DictConfig) -> dict:
    return {
        "size": cfg.image_size,
        "num_workers": workers(cfg),
        "on_bad_image": cfg.on_bad_image,
        "cache_dir": cache_dir(cfg) / "decoded" if cfg.cache else None,
    }


def _read_image_folder(cfg: DictConfig, root: Path) -> ArraySplits:
    return read_image_folder(
        root,
        channels=cfg.channels,
        classes=list(cfg.classes),
        num_classes=cfg.num_classes,
        **_photo_kwargs(cfg),
    )


def _read_food11(cfg: DictConfig, root: Path) -> ArraySplits:
    return read_food11(root, classes=list(cfg.classes), **_photo_kwargs(cfg))


@dataclass(frozen=True)
class Format:
    read: Callable[[DictConfig, Path], ArraySplits]
    looks_complete: Callable[[Path], bool]  # does a candidate folder hold this format?
    layout: str  # what a folder must hold, for the "not found" message


FORMATS = {
    "idx": Format(_read_idx, has_idx_files, IDX_LAYOUT),
    "cifar10": Format(_read_cifar10, has_cifar10, CIFAR_LAYOUTS),
    "imagefolder": Format(_read_image_folder, has_image_folder, FOLDER_LAYOUT),
    "food11": Format(_read_food11, has_train_dir, FOOD11_LAYOUT),
}


def data_format(cfg: DictConfig) -> Format:
    found = FORMATS.get(cfg.format)
    if found is None:
        raise ConfigError(f"Unknown dataset.format '{cfg.format}'; choose one of: {', '.join(FORMATS)}.")
    return found


def locate(cfg: DictConfig) -> Path:
    """The folder (or archive) holding the dataset named by ``cfg``; a DataError naming every place."""
    fmt = data_format(cfg)
    return find_root(cfg, fmt.looks_complete, expected=fmt.layout)


@dataclass
class DataBundle:
    train: TensorLoader
    val: TensorLoader
    test: TensorLoader | None  # labels are -1 throughout when ``test_labeled`` is False
    classes: list[str]
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    files: list[Path]
    test_ids: list[str] | None = None
    test_labeled: bool = True


def read_splits(cfg: DictConfig) -> ArraySplits:
    """Read the dataset named by ``cfg`` (a ``dataset`` config) into uint8 tensors, checked."""
    check_dataset(cfg)
    fmt = data_format(cfg)
    try:
        splits = fmt.read(cfg, locate(cfg))
    except OSError as exc:  # an unreadable folder or file: not the disk-space advice the CLI gives
        raise cannot_read(exc, cfg) from exc
    _resize_fixed(cfg, splits)
    splits.classes = _class_names(cfg, splits)
    n = len(splits.classes)
    for name in ("train_y", "val_y", "test_y"):
        labels = getattr(splits, name)
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= n):
            raise DataError(
                f"{cfg.name}: {name} holds label {int(labels.max())} but the dataset has {n} classes; "
                "fix dataset.num_classes / dataset.classes or the data."
            )
    return splits


def _resize_fixed(cfg: DictConfig, splits: ArraySplits) -> None:
    """Honour ``dataset.image_size`` for formats stored at one size (IDX, CIFAR-10): resize every split."""
    have = splits.train_x.shape[-1]
    if cfg.image_size == have:
        return
    images = sum(len(x) for x in (splits.train_x, splits.val_x, splits.test_x) if x is not None)
    size = f"dataset.image_size={cfg.image_size}"
    check_fits(images * splits.train_x.shape[1] * cfg.image_size**2, what=f"{cfg.name} at {size}")
    log.info("%s: resizing the %d x %d images to %s", cfg.name, have, have, size)
    splits.cache_key = None  # the resized images are in memory, not in the cache entry
    for name in ("train_x", "val_x", "test_x"):
        if getattr(splits, name) is not None:
            setattr(splits, name, resize_images(getattr(splits, name), cfg.image_size))


def _class_names(cfg: DictConfig, splits: ArraySplits) -> list[str]:
    """``dataset.classes``, else the data's own names, else numbers; ``num_classes`` (when set) must agree."""
    count = cfg.num_classes
    if count is None:
        count = int(splits.train_y.max()) + 1 if len(splits.train_y) else 0
    names = list(cfg.classes) or splits.classes or [str(i) for i in range(count)]
    if cfg.num_classes is not None and len(names) != cfg.num_classes:
        raise ConfigError(
            f"dataset.classes lists {len(names)} names but dataset.num_classes is {cfg.num_classes}; "
            "make them agree."
        )
    return names


def build_data(
    cfg: DictConfig, *, device: torch.device, batch_size: int, eval_batch_size: int, seed: int
) -> DataBundle:
    """Locate and read the data, carve validation from train when needed, and make the loaders: on the
    device, or on the host when ``dataset.in_memory`` says so (or, for auto, the images do not fit)."""
    splits = read_splits(cfg)
    channels = splits.train_x.shape[1]
    for key in ("mean", "std"):
        if not is_auto(cfg[key]) and len(cfg[key]) != channels:
            raise ConfigError(
                f"{cfg.name}: the images have {channels} channels but dataset.{key} has {len(cfg[key])} "
                f"values; set dataset.channels, dataset.mean and dataset.std to match (or auto)."
            )
    in_memory = keep_in_memory(setting(cfg, "in_memory"), image_bytes(splits), device)
    mapped = splits.cache_key is not None  # the images are mapped from the decode cache
    train, val = carve(cfg, splits, spill=None if in_memory else cache_dir(cfg) / "decoded")
    mean, std = normalisation(cfg, train[0])
    log.info(
        "data: %s train %d, val %d, test %d images of %s, %s",
        cfg.name, len(train[0]), len(val[0]), 0 if splits.test_x is None else len(splits.test_x),
        tuple(train[0].shape[1:]), "in device memory" if in_memory else "on the host, a batch ahead",
    )  # fmt: skip
    place = dict(device=device, in_memory=in_memory)
    carved = dict(place, mapped=mapped and splits.val_x is not None)  # carving in memory copied them
    test = None
    if splits.test_x is not None:
        test_y = splits.test_y
        if test_y is None:  # an unlabeled test split (food11 test/): for predict, never scored
            test_y = torch.full((len(splits.test_x),), -1, dtype=torch.long)
        test = loader((splits.test_x, test_y), eval_batch_size, shuffle=False, mapped=mapped, **place)
    return DataBundle(
        train=loader(train, batch_size, shuffle=True, seed=seed, sampler=setting(cfg, "sampler"), **carved),
        val=loader(val, eval_batch_size, shuffle=False, **carved),
        test=test,
        classes=splits.classes,
        channels=channels,
        image_size=splits.train_x.shape[-1],
        mean=mean,
        std=std,
        files=splits.files,
        test_ids=splits.test_ids,
        test_labeled=splits.test_y is not None,
    )


def normalisation(cfg: DictConfig, train_x: torch.Tensor) -> tuple[list[float], list[float]]:
    """``dataset.mean`` and ``dataset.std``; ``auto`` computes them over the training split (after the
    validation split is carved out), in one pass."""
    if not (is_auto(cfg.mean) or is_auto(cfg.std)):
        return list(cfg.mean), list(cfg.std)
    mean, std = channel_stats(train_x)
    if is_auto(cfg.std) and min(std) == 0:
        raise DataError(
            f"{cfg.name}: dataset.std=auto found a channel without variation in the training images; "
            "set dataset.std to values of your own."
        )
    mean = mean if is_auto(cfg.mean) else list(cfg.mean)
    std = std if is_auto(cfg.std) else list(cfg.std)
    log.info(
        "data: normalising with mean %s, std %s", [round(m, 4) for m in mean], [round(s, 4) for s in std]
    )
    return mean, std
