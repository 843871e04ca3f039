"""What predict classifies: a run's test split, a folder of images, or a digit-recognizer CSV.

Images are produced at the channels and size each model needs (ensemble members may differ): files
are decoded and resized to it; tensors read whole (IDX, CIFAR-10, CSV) must already match it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab.data.folders import TEST_NAMES, find_split, has_image_folder, has_subdirs
from cnnlab.data.images import SUFFIXES, decode_all
from cnnlab.data.kagglecsv import read_digit_csv
from cnnlab.data.lookup import find_root
from cnnlab.data.registry import has_train_dir, read_splits, workers
from cnnlab.errors import DataError
from cnnlab.io import is_regular


@dataclass
class Inputs:
    """``count`` images to classify; ``names`` are file stems in row order (None when not from files)."""

    where: str
    count: int
    names: list[str] | None
    labels: torch.Tensor | None  # known labels (for the accuracy), None when unlabeled
    load: Callable[[int, int], torch.Tensor]  # (channels, size) -> uint8 (count, channels, size, size)
    _loaded: dict = field(default_factory=dict)

    def images(self, channels: int, size: int) -> torch.Tensor:
        if (channels, size) not in self._loaded:
            self._loaded[channels, size] = self.load(channels, size)
        return self._loaded[channels, size]


def _natural_key(path: Path) -> tuple:
    """``2.png`` before ``10.png`` (Kaggle's CIFAR-10 test names); ``0001.jpg`` order is unchanged."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name)
    )


def folder_files(folder: Path) -> list[Path]:
    """Every image directly in ``folder``, in file-name order; anything else there is an error."""
    entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=_natural_key)
    for path in entries:
        if path.is_dir():
            raise DataError(
                f"{folder} holds the folder {path.name}; put the images to classify directly in {folder}."
            )
        if not is_regular(path):  # a FIFO named b.png would block the decoder
            raise DataError(f"{path} is not a regular file; cnnlab reads only regular files: move it out of "
                            f"{folder}.")  # fmt: skip
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(
                f"{path} is not an image file (expected {', '.join(sorted(SUFFIXES))}); "
                f"move it out of {folder}."
            )
    if not entries:
        raise DataError(f"{folder} holds no image files; put the .jpg or .png images to classify in it.")
    return entries


def from_folder(folder: Path, *, num_workers: int) -> Inputs:
    files = folder_files(folder)

    def load(channels: int, size: int) -> torch.Tensor:
        decoded = decode_all(files, None, size=size, channels=channels, num_workers=num_workers,
                             on_bad_image="error", cache_dir=None)  # fmt: skip
        return decoded.x

    return Inputs(str(folder), len(files), [p.stem for p in files], None, load)


def _fixed(x: torch.Tensor, where: str) -> Callable[[int, int], torch.Tensor]:
    """A loader for images read whole: they are used as they are, so the model must fit them."""

    def load(channels: int, size: int) -> torch.Tensor:
        if tuple(x.shape[1:]) != (channels, size, size):
            c, h, w = x.shape[1:]
            raise DataError(
                f"{where} holds {c}x{h}x{w} images but the run expects {channels}x{size}x{size} "
                "(channels x height x width); use a run trained on images like these."
            )
        return x

    return load


def from_csv(path: Path) -> Inputs:
    x, y = read_digit_csv(path)
    return Inputs(str(path), len(x), None, y, _fixed(x, str(path)))


def from_path(path: Path, *, num_workers: int) -> Inputs:
    """``input=``: a folder of images, or a ``.csv`` file in Kaggle's digit-recognizer layout."""
    if path.is_dir():
        return from_folder(path, num_workers=num_workers)
    if path.is_file() and path.suffix.lower() == ".csv":
        return from_csv(path)
    if path.is_file():
        raise DataError(f"input={path} is a file but not a .csv; pass a folder of images or a test.csv.")
    raise DataError(f"input={path} does not exist; pass a folder of images or a digit-recognizer test.csv.")


def from_dataset(cfg: DictConfig) -> Inputs:
    """The test split of the run's dataset (``cfg`` is its saved ``dataset`` config).

    An unlabeled folder of test images (Food-11's ``test/``) is read like ``input=<folder>``, without
    decoding the training images again; other formats are read whole with the training reader.
    """
    if cfg.format in ("food11", "imagefolder"):
        root = find_root(cfg, has_image_folder if cfg.format == "imagefolder" else has_train_dir)
        test_dir = find_split(root, TEST_NAMES) if has_train_dir(root) else None
        if test_dir is None:
            raise DataError(f"{root} has no test/ folder; pass input=<a folder of images> to classify.")
        if cfg.format == "food11" or not has_subdirs(test_dir):
            return from_folder(test_dir, num_workers=workers(cfg))
    splits = read_splits(cfg)
    if splits.test_x is None:
        raise DataError(f"Dataset '{cfg.name}' has no test split; pass input=<a folder of images>.")
    where = f"the {cfg.name} test split"
    return Inputs(where, len(splits.test_x), splits.test_ids, splits.test_y, _fixed(splits.test_x, where))
