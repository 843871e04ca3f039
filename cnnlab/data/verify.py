"""Check a dataset's files: read every file once with the training decoder and list what cannot be used.

Photo datasets (food11, imagefolder, CIFAR-10 as JPEG folders or their zip) are checked file by file
with the same decoder as training, in worker processes; files with other extensions are listed too,
since training would ignore them silently. Formats stored as a few binary files (IDX, CIFAR batches)
are read whole, with every check their readers make.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab.data.cifar import unpack_zip
from cnnlab.data.images import SUFFIXES, ImageFileDataset, collate_skip_bad
from cnnlab.data.lookup import cache_dir, find_root
from cnnlab.data.registry import read_splits
from cnnlab.errors import DataError

ACTIONS = ("verify",)


def photo_root(cfg: DictConfig) -> Path | None:
    """The folder of image files to scan, or None for binary formats."""
    if cfg.format in ("food11", "imagefolder"):
        return find_root(cfg, lambda p: (p / "train").is_dir())
    if cfg.format == "cifar10":
        root = find_root(cfg, lambda p: p.is_dir() or p.suffix == ".zip")
        zips = [root] if root.suffix == ".zip" else sorted(root.glob("*.zip"))
        if not any((root / d).is_dir() for d in ("cifar-10-batches-bin", "cifar-10-batches-py")) and zips:
            return unpack_zip(zips[0], cache_dir(cfg))
        return root if (root / "train").is_dir() else None
    return None


def scan_images(root: Path, *, num_workers: int) -> tuple[int, list[tuple[Path, str]]]:
    """Decode every file under ``root``; returns how many were checked and ``(file, problem)`` pairs."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    problems = [
        (p, f"not an image file ({p.suffix or 'no extension'})")
        for p in files
        if p.suffix.lower() not in SUFFIXES
    ]
    images = [p for p in files if p.suffix.lower() in SUFFIXES]
    dataset = ImageFileDataset(images, None, size=8, channels=3, on_bad_image="skip")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=256, num_workers=num_workers, collate_fn=collate_skip_bad
    )
    for batch in loader:
        problems += [(images[i], reason) for i, reason in batch.bad]
    return len(files), sorted(problems)


def verify(cfg: DictConfig) -> tuple[int, list[tuple[Path, str]]]:
    root = photo_root(cfg)
    if root is not None:
        workers = (os.cpu_count() or 1) if cfg.num_workers is None else cfg.num_workers
        return scan_images(root, num_workers=workers)
    try:
        splits = read_splits(cfg)
    except DataError as exc:
        return 1, [(Path(str(cfg.root or cfg.name)), str(exc))]
    return len(splits.files), []
