"""Decoded images kept on disk between runs, and the clean-up of cache writes that were killed.

An entry is two files named by a key: ``<key>.u8``, the uint8 images ``(N, C, H, W)`` as raw bytes,
streamed to disk while they are decoded (so a dataset larger than memory can be cached), and
``<key>.pt``, a small torch file with their shape and labels, written after it. An entry is read
memory-mapped (pages are loaded when a batch touches them) or whole.

Writers hold a shared lock on the folder's lock file while their temporary files exist. A killed
writer leaves a temporary file behind; :func:`remove_stale` removes the temporary files that cnnlab's
own writers name, and only while it holds the lock exclusively, i.e. while no live writer is at work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from cnnlab.io import atomic_write

log = logging.getLogger(__name__)

LOCK_NAME = ".cnnlab-cache.lock"
# Temporary names of cnnlab's writers: io.atomic_write's ".<name>.<random>.tmp" for a cache entry, and
# the unpacked-archive folder ".<archive stem>-<12 hex>.<random>.tmp" (cifar.unpack_zip).
STALE = (
    re.compile(r"\.[0-9a-f]{64}(-[a-z]+)?\.(u8|pt)\.[^/]+\.tmp"),
    re.compile(r"\..+-[0-9a-f]{12}\.[^/]+\.tmp"),
)


@contextlib.contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock shared while writing into it, so :func:`remove_stale` leaves our files."""
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder, exclusive=False, wait=True):
        yield


def remove_stale(folder: Path) -> list[Path]:
    """Remove temporary files of killed cache writes in ``folder``; returns what was removed.

    Only names that cnnlab's writers make are touched, and only when no writer holds the lock.
    """
    if not folder.is_dir():
        return []
    candidates = [p for p in folder.iterdir() if any(r.fullmatch(p.name) for r in STALE)]
    if not candidates:
        return []
    removed = []
    with _locked(folder, exclusive=True, wait=False) as held:
        if not held:  # a live writer: its files are not stale, try again next time
            return []
        for path in candidates:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    log.info("removed %d unfinished cache file(s) in %s left by a killed run", len(removed), folder)
    return removed


@contextlib.contextmanager
def _locked(folder: Path, *, exclusive: bool, wait: bool) -> Iterator[bool]:
    """``fcntl.flock`` on ``folder/.cnnlab-cache.lock``; yields whether the lock is held. Without fcntl
    (Windows) nothing is locked and nothing is swept."""
    try:
        import fcntl
    except ImportError:
        yield not exclusive
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def entry_paths(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / f"{key}.u8", folder / f"{key}.pt"


def write_images(path: Path, batches: Iterable[torch.Tensor]) -> tuple[int, ...]:
    """Stream uint8 batches ``(k, C, H, W)`` into the raw file ``path`` (atomically); returns the shape."""
    shape: list[int] = []

    def write(f) -> None:
        count = 0
        for batch in batches:
            if not shape:
                shape.extend(batch.shape[1:])
            f.write(batch.contiguous().numpy().tobytes())
            count += len(batch)
        shape.insert(0, count)

    atomic_write(path, write)
    return tuple(shape)


def save_entry(folder: Path, key: str, batches: Iterable[torch.Tensor], meta: dict) -> torch.Tensor:
    """Write an entry: the images from ``batches``, then ``meta`` (tensors and plain values) with their
    shape. Returns the images, memory-mapped. ``meta`` may be filled while ``batches`` is consumed."""
    raw, info = entry_paths(folder, key)
    shape = write_images(raw, batches)
    atomic_write(info, lambda f: torch.save({**meta, "shape": list(shape)}, f))
    return map_images(raw, shape)


def map_images(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The raw uint8 file ``path`` as a tensor of ``shape``, mapped privately: nothing is read until used,
    and nothing written to the tensor reaches the file."""
    count = int(torch.Size(shape).numel())
    if count == 0:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.from_file(str(path), shared=False, size=count, dtype=torch.uint8).view(shape)


def load_entry(folder: Path, key: str) -> tuple[torch.Tensor, dict] | None:
    """The mapped images and meta of an entry, or None when absent or unusable (it is then rebuilt)."""
    raw, info = entry_paths(folder, key)
    if not (raw.is_file() and info.is_file()):
        return None
    try:
        meta = torch.load(info, weights_only=True)
        shape = tuple(int(n) for n in meta["shape"])
        usable = len(shape) == 4 and raw.stat().st_size == torch.Size(shape).numel()
    except Exception as exc:  # a torn or foreign file is just a cache miss
        log.warning("ignoring unreadable cache entry %s (%s)", info, exc)
        return None
    if not usable:
        log.warning("ignoring cache entry %s: its images do not match its shape", raw)
        return None
    return map_images(raw, shape), meta


def rows_entry(folder: Path, key: str, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` as a mapped entry ``key`` in ``folder``, written once in chunks (``x`` may be mapped
    and larger than memory)."""
    remove_stale(folder)
    found = load_entry(folder, key)
    if found is not None and len(found[0]) == len(rows):
        return found[0]
    chunks = (x[rows[lo : lo + 4096]] for lo in range(0, len(rows), 4096))
    with writing(folder):
        return save_entry(folder, key, chunks, {})
