"""Image files shared by every photo format: safe decoding, folder scans, parallel decode with a cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from cnnlab.data.lookup import cannot_read
from cnnlab.errors import ConfigError, DataError
from cnnlab.io import atomic_write

log = logging.getLogger(__name__)

# Only the decoders we need: PIL otherwise sniffs dozens of rarely audited formats from the file's bytes.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
MODES = {1: "L", 3: "RGB"}
ON_BAD_IMAGE = ("error", "skip")
CACHE_VERSION = 1  # bump when the cached layout or the decoding changes
SKIP_HINT = "delete or replace it, or set dataset.on_bad_image=skip"


class BadImageError(DataError):
    """An image file that cannot be used; ``reason`` says why without naming the file, so a caller
    that prints the path itself (verify, the skip warning) does not print it twice."""

    reason = ""


def bad_image(path: Path, reason: str) -> BadImageError:
    # The message is the only constructor argument, so the error survives pickling out of a worker.
    exc = BadImageError(f"{path}: {reason}; {SKIP_HINT}.")
    exc.reason = reason
    return exc


def open_image(path: Path, *, size: int | None, channels: int = 3) -> torch.Tensor:
    """Decode one image file fully into a uint8 ``(C, H, W)`` tensor, resized to ``size`` when given.

    ``img.load()`` forces the whole decode here, so a truncated file fails now and not in a batch later.
    PIL's decompression-bomb warning (over ``Image.MAX_IMAGE_PIXELS``) is an error too.
    """
    if channels not in MODES:
        raise ConfigError(f"dataset.channels must be 1 or 3, got {channels}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as img:
                img.load()
                img = img.convert(MODES[channels])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = (
            f"more pixels than the decompression-bomb limit Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS})"
        )
        raise bad_image(path, reason) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # UnidentifiedImageError is an OSError
        raise bad_image(path, f"not a readable image ({_without_path(exc, path)})") from exc
    if size is not None and img.size != (size, size):
        # PIL widens the bilinear kernel when shrinking, i.e. it antialiases.
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    array = np.array(img, dtype=np.uint8)
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def _without_path(exc: Exception, path: Path) -> str:
    """PIL's message without the file name it often repeats ("cannot identify image file '<path>'")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).replace(f" {str(path)!r}", "").replace(str(path), "the file")


def _image_files(folder: Path) -> list[Path]:
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
    layout = f"{split_dir}/<class>/*.jpg"
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
        found = _image_files(split_dir / name) if name in folders else []
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
    files = _image_files(split_dir)
    return bool(files) and all(FOOD11_NAME.fullmatch(path.stem) for path in files)


def scan_food11(split_dir: Path, *, labeled: bool, num_classes: int) -> tuple[list[Path], list[int] | None]:
    """Food-11 files in ``split_dir`` by name: ``<label>_<n>.jpg`` when ``labeled``, any names otherwise."""
    layout = f"{split_dir}/<label>_<n>.jpg" if labeled else f"{split_dir}/*.jpg"
    _require_dir(split_dir, layout)
    files = _image_files(split_dir)
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


def check_on_bad_image(value: str) -> None:
    if value not in ON_BAD_IMAGE:
        raise ConfigError(
            f"Unknown dataset.on_bad_image '{value}'; choose one of: {', '.join(ON_BAD_IMAGE)}."
        )


class ImageFileDataset(torch.utils.data.Dataset):
    """Image files as ``(uint8 CHW tensor, label or -1, index)`` items.

    With ``on_bad_image="skip"`` an unreadable file yields the marker ``(None, reason, index)`` instead of
    raising; :func:`collate_skip_bad` sets it aside so the caller can warn (in the main process, where
    logging is configured) and drop it.
    """

    def __init__(
        self,
        files: list[Path],
        labels: list[int] | None,
        *,
        size: int | None,
        channels: int,
        on_bad_image: str,
    ):
        check_on_bad_image(on_bad_image)
        self.files, self.labels = files, labels
        self.size, self.channels, self.on_bad_image = size, channels, on_bad_image

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        label = -1 if self.labels is None else self.labels[index]
        try:
            return open_image(self.files[index], size=self.size, channels=self.channels), label, index
        except BadImageError as exc:
            if self.on_bad_image == "error":
                raise
            return None, exc.reason, index


class Batch(NamedTuple):
    """A collated batch: the images that decoded, plus what was set aside."""

    x: torch.Tensor  # (k, C, H, W) uint8
    y: torch.Tensor  # (k,) int64, -1 when unlabeled
    index: torch.Tensor  # (k,) positions in the file list
    bad: list[tuple[int, str]]  # (position, reason) of files that failed to decode
    odd: list[tuple[int, tuple[int, ...]]]  # (position, shape) of images shaped unlike ``x``


def collate_skip_bad(items: list[tuple]) -> Batch:
    """Stack the decoded items of a batch, setting aside skip markers and images of another shape.

    Nothing here raises: an exception in a worker process reaches the user wrapped in a traceback, so
    :func:`decode_all` decides in the main process what is an error.
    """
    good = [item for item in items if item[0] is not None]
    bad = [(index, reason) for image, reason, index in items if image is None]
    same = [item for item in good if item[0].shape == good[0][0].shape]
    odd = [(index, tuple(image.shape)) for image, _, index in good if image.shape != good[0][0].shape]
    x = torch.stack([item[0] for item in same]) if same else torch.empty(0, dtype=torch.uint8)
    y = torch.tensor([item[1] for item in same], dtype=torch.int64)
    return Batch(x, y, torch.tensor([item[2] for item in same], dtype=torch.int64), bad, odd)


@dataclass
class Decoded:
    x: torch.Tensor  # (N, C, H, W) uint8
    y: torch.Tensor  # (N,) int64, -1 when unlabeled
    files: list[Path]  # the files kept, in order (skipped ones removed)
    cache_hit: bool


def cache_key(
    files: list[Path], labels: list[int] | None, *, size: int | None, channels: int, on_bad_image: str
) -> str:
    """sha256 over the decode settings and each file's relative path, size and mtime.

    Editing, adding, removing or relabelling a file changes the key; moving the whole tree does not.
    """
    base = _common_dir(files)
    entries = []
    for path in files:
        stat = path.stat()
        entries.append([path.relative_to(base).as_posix(), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps([CACHE_VERSION, size, channels, on_bad_image, labels, entries]).encode()
    return hashlib.sha256(blob).hexdigest()


def decode_all(
    files: list[Path],
    labels: list[int] | None,
    *,
    size: int | None,
    channels: int,
    num_workers: int,
    on_bad_image: str,
    cache_dir: Path | None,
) -> Decoded:
    """Decode every file into one uint8 tensor with ``num_workers`` processes.

    With ``cache_dir`` the result is kept in ``cache_dir/<key>.pt`` (see :func:`cache_key`) and reused.
    """
    check_on_bad_image(on_bad_image)
    if not files:
        raise DataError("No image files to decode; check the dataset directory.")
    try:
        key = cache_key(files, labels, size=size, channels=channels, on_bad_image=on_bad_image)
    except OSError as exc:
        raise cannot_read(exc) from exc
    path = cache_dir / f"{key}.pt" if cache_dir is not None else None
    cached = _load_cache(path, len(files)) if path is not None else None
    if cached is not None:
        x, y, kept = cached
        return Decoded(x, y, [files[i] for i in kept.tolist()], cache_hit=True)
    x, y, kept = _decode(
        files, labels, size=size, channels=channels, num_workers=num_workers, on_bad_image=on_bad_image
    )
    if path is not None:
        _save_cache(path, {"x": x, "y": y, "kept": kept})
    return Decoded(x, y, [files[i] for i in kept.tolist()], cache_hit=False)


def _decode(files, labels, *, size, channels, num_workers, on_bad_image):
    """Returns ``(x, y, kept)``; ``kept`` holds the positions of the files that decoded."""
    # Workers always return markers; whether a bad file is an error is decided here, so the user sees
    # one clean message rather than an exception re-raised from a worker with its traceback inside.
    dataset = ImageFileDataset(files, labels, size=size, channels=channels, on_bad_image="skip")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=256, num_workers=num_workers, collate_fn=collate_skip_bad
    )
    log.info("decoding %d images in %s with %d worker processes", len(files), _common_dir(files), num_workers)
    x = None
    y = torch.full((len(files),), -1, dtype=torch.int64)
    ok = torch.zeros(len(files), dtype=torch.bool)
    for batch in loader:
        for index, reason in batch.bad:
            if on_bad_image == "error":
                raise bad_image(files[index], reason)
            log.warning("skipping %s: %s", files[index], reason)
        if not len(batch.x):
            continue
        if x is None:
            x = torch.empty((len(files), *batch.x.shape[1:]), dtype=torch.uint8)
        _check_shapes(batch, tuple(x.shape[1:]), files)
        x[batch.index], y[batch.index], ok[batch.index] = batch.x, batch.y, True
    if x is None:
        raise DataError(
            f"None of the {len(files)} images in {_common_dir(files)} could be read; check the files."
        )
    kept = ok.nonzero().squeeze(1)
    return (x, y, kept) if len(kept) == len(files) else (x[kept], y[kept], kept)


def _check_shapes(batch: Batch, shape: tuple[int, ...], files: list[Path]) -> None:
    odd = batch.odd or (
        [(int(batch.index[0]), tuple(batch.x.shape[1:]))] if batch.x.shape[1:] != shape else []
    )
    if odd:
        index, odd_shape = odd[0]
        raise DataError(
            f"{files[index]} is {odd_shape} (C, H, W) but other images are {shape}; "
            "set dataset.image_size so every image is resized to one size."
        )


def _common_dir(files: list[Path]) -> Path:
    return Path(os.path.commonpath(files)) if len(files) > 1 else files[0].parent


def _load_cache(path: Path, n_files: int):
    """The cached ``(x, y, kept)``, or None when absent or unusable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
        x, y, kept = state["x"], state["y"], state["kept"]
        valid = (
            x.dtype == torch.uint8 and x.ndim == 4 and len(x) == len(y) == len(kept) and len(kept) <= n_files
        )
    except Exception as exc:  # a torn or foreign file is just a cache miss
        log.warning("ignoring unreadable decode cache %s (%s)", path, exc)
        return None
    if not valid:
        log.warning("ignoring malformed decode cache %s", path)
        return None
    log.info("loaded %d decoded images from cache %s", len(x), path)
    return x, y, kept


def _save_cache(path: Path, state: dict) -> None:
    """Write the cache atomically; a read-only or full cache dir costs a warning, not the run."""
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as exc:
        log.warning("could not write decode cache %s (%s); decoding again next run", path, exc)
