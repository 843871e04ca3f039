"""Folder scans of the photo formats: which image files a split holds, and their labels."""

from __future__ import annotations

import re
from pathlib import Path

from cnnlab.data.images import SUFFIXES
from cnnlab.errors import DataError


def image_files(folder: Path) -> list[Path]:
    """Image files in ``folder`` by name, skipping hidden ones (macOS ``._x.jpg`` forks are not images)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; expected images laid out as {layout}.")


def scan_class_folders(
    split_dir: Path, classes: list[str] | None = None, *, train: bool = False
) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of ``split_dir/<class>/*.<image suffix>``; classes sorted by folder name.

    Pass the training split's ``classes`` when scanning val/test so labels agree; a class folder
    missing there is fine, an unknown one is an error. With ``train``, given ``classes`` (the user's
    ``dataset.classes``, in their order) must name exactly the folders. An empty class folder is an error.
    """
    layout = f"{split_dir}/<class>/<image files: {', '.join(sorted(SUFFIXES))}>"
    _require_dir(split_dir, layout)
    folders = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = folders
    unknown = sorted(set(folders) - set(classes))
    missing = sorted(set(classes) - set(folders)) if train else []
    if unknown or missing:
        expected = (
            f"dataset.classes lists {list(classes)}" if train else f"the training split has {list(classes)}"
        )
        raise DataError(
            f"{split_dir} has the class folders {folders} but {expected}; rename or remove folders so the "
            "classes agree."
        )
    files, labels = [], []
    for label, name in enumerate(classes):
        found = image_files(split_dir / name) if name in folders else []
        if name in folders and not found:
            raise DataError(
                f"{split_dir / name} is a class folder without image files; add images or remove it."
            )
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{split_dir} holds no image files; expected {layout}.")
    return files, labels, list(classes)


FOOD11_NAME = re.compile(r"(\d+)_.+")


def food11_labeled(split_dir: Path) -> bool:
    """Are all image files in ``split_dir`` named ``<label>_<n>`` (so the split carries labels)?"""
    files = image_files(split_dir)
    return bool(files) and all(FOOD11_NAME.fullmatch(path.stem) for path in files)


def scan_food11(split_dir: Path, *, labeled: bool, num_classes: int) -> tuple[list[Path], list[int] | None]:
    """Food-11 files in ``split_dir`` by name: ``<label>_<n>.jpg`` when ``labeled``, any names otherwise."""
    layout = f"{split_dir}/<label>_<n>.jpg" if labeled else f"{split_dir}/*.jpg"
    _require_dir(split_dir, layout)
    files = image_files(split_dir)
    if not files:
        raise DataError(f"{split_dir} holds no image files; expected {layout}.")
    if not labeled:
        return files, None
    labels = []
    for path in files:
        match = FOOD11_NAME.fullmatch(path.stem)
        if match is None:
            raise DataError(f"{path} is not named <label>_<n>.jpg; rename it or move it out of {split_dir}.")
        label = int(match.group(1))
        if label >= num_classes:
            raise DataError(
                f"{path} has label {label} but the dataset has {num_classes} classes "
                f"(0 to {num_classes - 1}); fix the file name or dataset.num_classes."
            )
        labels.append(label)
    return files, labels
