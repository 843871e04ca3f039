"""Photo datasets laid out as folders: a generic ``train/<class>/*`` tree and Food-11."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from cnnlab.data.images import SUFFIXES, Decoded, decode_all
from cnnlab.data.scan import food11_labeled, image_files, scan_class_folders, scan_food11
from cnnlab.data.types import ArraySplits
from cnnlab.errors import DataError

log = logging.getLogger(__name__)

# The usual spellings: the ML course's train/valid/test, the original Food-11's training/validation/
# evaluation, and testing/ of other course years.
TRAIN_NAMES = ("train", "training")
VAL_NAMES = ("val", "valid", "validation")
TEST_NAMES = ("test", "testing", "evaluation")
IMAGES = "*.{" + ",".join(sorted(s.lstrip(".") for s in SUFFIXES)) + "}"
FOLDER_LAYOUT = (
    f"<class>/{IMAGES} (validation carved off, no test split), or train/<class>/{IMAGES} (or training/) "
    "with optional val/, valid/ or validation/ and test/, testing/ or evaluation/"
)
FOOD11_LAYOUT = (
    "train/, valid/ and test/ (or training/, validation/ and evaluation/ or testing/) holding "
    "<label>_<n>.jpg files (test/ may hold any names)"
)


def find_split(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / name for name in names if (root / name).is_dir()), None)


def has_train_dir(path: Path) -> bool:
    return find_split(path, TRAIN_NAMES) is not None


def has_subdirs(path: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def has_image_folder(path: Path) -> bool:
    """An image folder: ``train/`` (see :data:`FOLDER_LAYOUT`), or class folders holding images directly."""
    return has_train_dir(path) or (path.is_dir() and flat_classes(path))


def flat_classes(root: Path) -> bool:
    """Does ``root`` hold ``<class>/<image>`` directly, with no split folders (train/, val/, test/, ...)?"""
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    split_names = {*TRAIN_NAMES, *VAL_NAMES, *TEST_NAMES}
    return not any(f.name in split_names for f in folders) and any(image_files(f) for f in folders)


def read_image_folder(
    root: Path,
    *,
    size: int | None,
    channels: int,
    num_workers: int,
    on_bad_image: str,
    cache_dir: Path | None,
    classes: list[str] | None = None,
    num_classes: int | None = None,
) -> ArraySplits:
    """Read ``root/train/<class>/*`` plus optional validation and test splits (see :data:`FOLDER_LAYOUT`).

    Classes are train's folder names, sorted, unless ``classes`` gives them (same folders, that
    order); ``num_classes``, when given, must match. Every split is scanned and checked before any
    image is decoded. ``test`` is labeled when it holds class folders and unlabeled when it holds the
    images directly; either way ``test_ids`` names its images (:func:`file_ids`).
    """
    train_dir = find_split(root, TRAIN_NAMES)
    if train_dir is None:  # root/<class>/*: train on all of it, validation carved off (no test split)
        log.info(
            "data: %s holds class folders directly: training on them with dataset.val_split carved off for "
            "validation; no test split (lay it out as %s/train/<class>/ and %s/test/<class>/ to have one)",
            root, root, root,
        )  # fmt: skip
        train_dir = root
    files, labels, classes = scan_class_folders(train_dir, classes or None, train=True)
    if num_classes is not None and num_classes != len(classes):
        raise DataError(
            f"dataset.num_classes={num_classes} but {train_dir} has {len(classes)} class folders "
            f"({', '.join(classes)}); leave dataset.num_classes unset (the folders name the classes) or "
            "fix the folders."
        )
    val_dir, test_dir = (
        (None, None) if train_dir == root else (find_split(root, VAL_NAMES), find_split(root, TEST_NAMES))
    )
    val = scan_class_folders(val_dir, classes)[:2] if val_dir else None
    labeled_test = test_dir is not None and has_subdirs(test_dir)
    test = None
    if test_dir is not None:
        if labeled_test:
            test = scan_class_folders(test_dir, classes)[:2]
        else:
            test = scan_food11(test_dir, labeled=False, num_classes=len(classes))
    decode = _decoder(
        size=size, channels=channels, num_workers=num_workers, on_bad_image=on_bad_image, cache_dir=cache_dir
    )
    train, val, test = decode((files, labels)), decode(val), decode(test)
    return _splits(train, val, test, classes, labeled_test=labeled_test)


def read_food11(
    root: Path,
    *,
    size: int | None,
    num_workers: int,
    on_bad_image: str,
    cache_dir: Path | None,
    classes: list[str],
) -> ArraySplits:
    """Read Food-11 (see :data:`FOOD11_LAYOUT`): training and validation images named ``<label>_<n>.jpg``.

    The test split is labeled when every file there is named ``<label>_<n>`` (the original dataset's
    ``evaluation/``) and unlabeled otherwise (the course's ``test/``); its images are named in
    ``test_ids`` by file stem. With ``on_bad_image=skip`` a skipped test image is missing from
    ``test_ids`` and so from a submission.
    """
    n = len(classes)
    train = scan_food11(find_split(root, TRAIN_NAMES), labeled=True, num_classes=n)
    val_dir, test_dir = find_split(root, VAL_NAMES), find_split(root, TEST_NAMES)
    val = scan_food11(val_dir, labeled=True, num_classes=n) if val_dir else None
    labeled_test = test_dir is not None and food11_labeled(test_dir)
    test = scan_food11(test_dir, labeled=labeled_test, num_classes=n) if test_dir else None
    decode = _decoder(
        size=size, channels=3, num_workers=num_workers, on_bad_image=on_bad_image, cache_dir=cache_dir
    )
    train, val, test = decode(train), decode(val), decode(test)
    return _splits(train, val, test, list(classes), labeled_test=labeled_test)


def _decoder(**settings) -> Callable[[tuple | None], Decoded | None]:
    """``decode_all`` with fixed settings for a scanned ``(files, labels)``; None (no split) stays None."""

    def decode(scanned: tuple | None) -> Decoded | None:
        return None if scanned is None else decode_all(*scanned, **settings)

    return decode


def _splits(
    train: Decoded, val: Decoded | None, test: Decoded | None, classes: list[str], *, labeled_test: bool
) -> ArraySplits:
    """Assemble the decoded splits; ``files`` lists every image kept, for the data fingerprint."""
    splits = ArraySplits(
        train_x=train.x, train_y=train.y, classes=classes, files=list(train.files), cache_key=train.key
    )
    if val is not None:
        splits.val_x, splits.val_y = val.x, val.y
        splits.files += val.files
    if test is not None:
        splits.test_x = test.x
        if labeled_test:
            splits.test_y = test.y
        splits.test_ids = file_ids(test.files)
        splits.files += test.files
    return splits


def file_ids(files: list[Path]) -> list[str]:
    """A submission's ids of test images: their file stems (``0001.jpg`` -> ``0001``), or, when a stem
    repeats in two class folders (``cat/1.png``, ``dog/1.png``), ``<folder>/<stem>`` for every image."""
    stems = [path.stem for path in files]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{path.parent.name}/{path.stem}" for path in files]
