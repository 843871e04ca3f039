"""Check a dataset's files: read every file once with the training decoder and list what cannot be used.

Photo datasets (food11, imagefolder, CIFAR-10 as JPEG folders or their zip) are checked file by file
with the same decoder as training, in worker processes; files with other extensions are listed too,
since training would ignore them silently. Formats stored as a few binary files (IDX, CIFAR batches)
are read whole, with every check their readers make.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from cnnlab.data.cifar import find_cifar10, unpack_zip
from cnnlab.data.images import SUFFIXES, ImageFileDataset, decode_loader
from cnnlab.data.lookup import cache_dir
from cnnlab.data.registry import locate, read_splits, workers
from cnnlab.errors import DataError


@dataclass
class Checked:
    """What ``verify`` looked at: the folder or archive, how many files, and one line per problem."""

    where: Path
    files: int
    problems: list[str]  # "<file>: <what is wrong>"
    unpacked: Path | None = None  # where an archive was unpacked to check its images


def photo_tree(cfg: DictConfig, root: Path) -> Path | None:
    """The folder of image files to scan, or None for datasets stored as binary files."""
    if cfg.format in ("food11", "imagefolder"):
        return root
    found = find_cifar10(root) if cfg.format == "cifar10" else None
    if found is None or found[0] in ("bin", "py"):
        return None
    return unpack_zip(found[1], cache_dir(cfg)) if found[0] == "zip" else found[1]


def list_files(root: Path) -> tuple[list[Path], list[str]]:
    """Every file below ``root`` but hidden ones, and a problem line for each folder that cannot be read."""
    files, problems = [], []

    def unreadable(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot read this folder ({exc.strerror})")

    for folder, subdirs, names in os.walk(root, onerror=unreadable):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        files += [Path(folder) / name for name in names if not name.startswith(".")]
    return sorted(files), problems


def scan_images(root: Path, *, num_workers: int) -> tuple[int, list[str]]:
    """Decode every file under ``root``; returns how many were checked and a line per unusable one."""
    files, problems = list_files(root)
    problems += [
        f"{p}: not an image file ({p.suffix or 'no extension'})"
        for p in files
        if p.suffix.lower() not in SUFFIXES
    ]
    images = [p for p in files if p.suffix.lower() in SUFFIXES]
    dataset = ImageFileDataset(images, None, size=8, channels=3, on_bad_image="skip")
    for batch in decode_loader(dataset, num_workers):
        problems += [f"{images[i]}: {reason}" for i, reason in batch.bad]
    return len(files), sorted(problems)


def verify(cfg: DictConfig) -> Checked:
    root = locate(cfg)
    tree = photo_tree(cfg, root)
    if tree is not None:
        checked, problems = scan_images(tree, num_workers=workers(cfg))
        return Checked(root, checked, problems, unpacked=tree if tree != root else None)
    try:
        splits = read_splits(cfg)
    except DataError as exc:  # the reader's message names the file
        return Checked(root, 1, [str(exc)])
    return Checked(root, len(splits.files), [])
