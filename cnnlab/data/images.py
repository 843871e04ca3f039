"""Image files shared by every photo format: safe decoding, parallel decode, the decode cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from cnnlab.data import cache
from cnnlab.data.lookup import cannot_read
from cnnlab.data.mmap import check_fits
from cnnlab.errors import ConfigError, DataError
from cnnlab.io import NotRegularFile, open_regular

log = logging.getLogger(__name__)

# Only the decoders we need: PIL otherwise sniffs dozens of rarely audited formats from the file's bytes.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
MODES = {1: "L", 3: "RGB"}
ON_BAD_IMAGE = ("error", "skip")
CACHE_VERSION = 2  # bump when the cached layout or the decoding changes
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
            with open_regular(path) as f, Image.open(f, formats=FORMATS) as img:
                img.load()
                img = img.convert(MODES[channels])
    except NotRegularFile as exc:  # a FIFO would block the read for ever
        raise bad_image(path, f"{exc.kind}, not a regular file") from None
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


def decode_loader(dataset: ImageFileDataset, num_workers: int) -> torch.utils.data.DataLoader:
    """Batches of decoded files in order. The loader has its own generator: drawing its worker seeds from
    the global one would make a run that decodes start from other weights than one that hits the cache."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=256,
        num_workers=num_workers,
        collate_fn=collate_skip_bad,
        generator=torch.Generator().manual_seed(0),
    )


@dataclass
class Decoded:
    x: torch.Tensor  # (N, C, H, W) uint8; memory-mapped from the cache when ``key`` is set
    y: torch.Tensor  # (N,) int64, -1 when unlabeled
    files: list[Path]  # the files kept, in order (skipped ones removed)
    cache_hit: bool
    key: str | None = None  # the cache entry holding ``x``


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

    With ``cache_dir`` the images are streamed into a cache entry named by :func:`cache_key` (see
    :mod:`cnnlab.data.cache`) and returned memory-mapped from it; a later call with the same files
    and settings maps the entry without decoding. A cache that cannot be written costs a warning.
    """
    check_on_bad_image(on_bad_image)
    if not files:
        raise DataError("No image files to decode; check the dataset directory.")
    settings = dict(size=size, channels=channels, num_workers=num_workers, on_bad_image=on_bad_image)
    if cache_dir is not None:
        try:
            key = cache_key(files, labels, size=size, channels=channels, on_bad_image=on_bad_image)
        except OSError as exc:
            raise cannot_read(exc) from exc
        decoded = _cached(files, labels, cache_dir, key, settings)
        if decoded is not None:
            return decoded
    if size is not None:  # into memory: refuse a size that cannot fit before decoding the first image
        check_fits(
            len(files) * channels * size**2, what=f"{len(files):,} images at dataset.image_size={size}"
        )
    x, y, kept = _collect(_decoded_batches(files, labels, **settings), len(files))
    return Decoded(x, y, [files[i] for i in kept.tolist()], cache_hit=False)


def _cached(files, labels, cache_dir: Path, key: str, settings: dict) -> Decoded | None:
    """Decoded images from the cache entry ``key``, decoding into it first when it is missing; None
    when the cache cannot be written (the caller decodes into memory)."""
    cache.remove_stale(cache_dir)
    found = cache.load_entry(cache_dir, key)
    if found is not None and len(found[1]["kept"]) <= len(files):
        x, meta = found
        log.info("loaded %d decoded images from cache %s", len(x), cache_dir / key)
        return Decoded(x, meta["y"], [files[i] for i in meta["kept"].tolist()], cache_hit=True, key=key)
    meta: dict = {}

    def images():
        y, kept = [], []
        for batch in _decoded_batches(files, labels, **settings):
            y.append(batch.y)
            kept.append(batch.index)
            yield batch.x
        meta.update(y=torch.cat(y), kept=torch.cat(kept))

    try:
        with cache.writing(cache_dir):
            x = cache.save_entry(cache_dir, key, images(), meta)
    except OSError as exc:
        log.warning("could not write the decode cache in %s (%s); decoding into memory", cache_dir, exc)
        return None
    return Decoded(x, meta["y"], [files[i] for i in meta["kept"].tolist()], cache_hit=False, key=key)


def _decoded_batches(files, labels, *, size, channels, num_workers, on_bad_image) -> Iterator[Batch]:
    """The decoded batches in file order, bad files reported or dropped as ``on_bad_image`` says."""
    # Workers always return markers; whether a bad file is an error is decided here, so the user sees
    # one clean message rather than an exception re-raised from a worker with its traceback inside.
    dataset = ImageFileDataset(files, labels, size=size, channels=channels, on_bad_image="skip")
    loader = decode_loader(dataset, num_workers)
    log.info("decoding %d images in %s with %d worker processes", len(files), _common_dir(files), num_workers)
    shape, count = None, 0
    for batch in loader:
        for index, reason in batch.bad:
            if on_bad_image == "error":
                raise bad_image(files[index], reason)
            log.warning("skipping %s: %s", files[index], reason)
        if not len(batch.x):
            continue
        shape = shape or tuple(batch.x.shape[1:])
        _check_shapes(batch, shape, files)
        count += len(batch.x)
        yield batch
    if not count:
        raise DataError(
            f"None of the {len(files)} images in {_common_dir(files)} could be read; check the files."
        )


def _collect(batches: Iterator[Batch], n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, kept)`` in memory; ``kept`` holds the positions of the files that decoded."""
    x, y, kept, filled = None, [], [], 0
    for batch in batches:
        if x is None:
            x = torch.empty((n, *batch.x.shape[1:]), dtype=torch.uint8)
        x[filled : filled + len(batch.x)] = batch.x
        filled += len(batch.x)
        y.append(batch.y)
        kept.append(batch.index)
    return x[:filled], torch.cat(y), torch.cat(kept)


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
