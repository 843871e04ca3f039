"""MNIST-style IDX files (``*-idx3-ubyte`` images, ``*-idx1-ubyte`` labels), plain or gzipped."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from cnnlab.data.types import ArraySplits
from cnnlab.errors import DataError
from cnnlab.io import open_regular

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
# deflate cannot expand data more than 1032:1, so a header promising more than that is a lie
MAX_GZIP_RATIO = 1032
STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_LAYOUT = (
    "the four MNIST IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
    "and t10k-labels-idx1-ubyte (or .gz)"
)


def find_file(root: Path, stem: str) -> Path | None:
    """The file for ``stem`` in ``root``: plain or .gz, also torchvision's dotted spelling."""
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            path = root / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def has_idx_files(root: Path) -> bool:
    return root.is_dir() and all(find_file(root, stem) for stem in STEMS.values())


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file into a uint8 array, checking magic number and length.

    The header is read first and the data is read into an array of the size it promises, so a
    decompression bomb (a small .gz that inflates far beyond its header) is refused after inflating
    one byte more than promised, not all of it.
    """
    try:
        with open_regular(path) as f:
            stream = Inflated(f.read()) if path.suffix == ".gz" else f
            dims = _read_header(stream, path, magic)
            return _read_body(stream, path, dims)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} could not be read ({exc}); download or copy the file again.") from exc


class Inflated:
    """The inflated bytes of gzip data, read in as few zlib calls as the reads ask for.

    ``gzip.open`` inflates 32 KB per call and keeps the CRC in Python: 1,400 calls and 0.2 s for MNIST's
    training images; here zlib fills each read in one call and checks each member's CRC itself.
    ``read(n)`` never inflates more than ``n`` bytes, which is what keeps a decompression bomb harmless.
    """

    def __init__(self, data: bytes):
        self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._input = data

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            if self._inflate.eof:  # a member ended: another may follow, as gzip.open reads them
                if not self._inflate.unused_data:
                    break
                self._input = self._inflate.unused_data
                self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            chunk = self._inflate.decompress(self._input, n - len(out))
            self._input = self._inflate.unconsumed_tail
            if not (chunk or self._input or self._inflate.eof):  # the data ended inside a member
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            out += chunk
        return out

    def readinto(self, view: memoryview) -> int:
        out = self.read(len(view))
        view[: len(out)] = out
        return len(out)


def _read_header(f: BinaryIO, path: Path, magic: int) -> list[int]:
    ndim = magic & 0xFF
    head = f.read(4)
    found = int.from_bytes(head, "big") if len(head) == 4 else None
    if found != magic:
        raise DataError(
            f"{path} is not an IDX file of the expected kind (magic {found!r}, expected {magic:#010x}); "
            "replace it with the original file."
        )
    sizes = f.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataError(f"{path} ends inside its IDX header; download or copy the file again.")
    return [int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim)]


def _read_body(f: BinaryIO, path: Path, dims: list[int]) -> np.ndarray:
    promised = 4 + 4 * len(dims) + math.prod(dims)
    size = path.stat().st_size
    if promised > (MAX_GZIP_RATIO * size if path.suffix == ".gz" else size):
        raise DataError(
            f"{path} is truncated: its header promises {promised} bytes but the file is {size} bytes"
            f"{' of gzip' if path.suffix == '.gz' else ''}; download or copy the file again."
        )
    data = np.empty(math.prod(dims), dtype=np.uint8)
    view, got = memoryview(data), 0
    while got < len(data):  # gzip fills at most one internal buffer per call
        n = f.readinto(view[got:])
        if not n:
            raise DataError(
                f"{path} is truncated: {promised - len(data) + got} bytes where the header promises "
                f"{promised}; download or copy the file again."
            )
        got += n
    if f.read(1):
        raise DataError(
            f"{path} holds more data than its header promises ({promised} bytes), like a decompression "
            "bomb or a damaged file; replace it with the original file."
        )
    return data.reshape(dims)


def read_idx_dataset(root: Path) -> ArraySplits:
    """Read the four MNIST-style files from ``root`` into uint8 tensors (images get a channel axis)."""
    paths = {key: find_file(root, stem) for key, stem in STEMS.items()}
    arrays = {}
    for key, path in paths.items():
        kind = IMAGE_MAGIC if key.endswith("_x") else LABEL_MAGIC
        arrays[key] = torch.from_numpy(read_idx(path, kind))
    for split in ("train", "test"):
        n_x, n_y = len(arrays[f"{split}_x"]), len(arrays[f"{split}_y"])
        if n_x != n_y:
            raise DataError(f"{split} images ({n_x}) and labels ({n_y}) in {root} differ in count.")
        if n_x == 0:  # nothing to train on or to score: a header-only file from a failed export or copy
            raise DataError(
                f"{paths[split + '_x']} holds no images (its header counts 0); download or copy the "
                "dataset's files again."
            )
    return ArraySplits(
        train_x=arrays["train_x"].unsqueeze(1),
        train_y=arrays["train_y"].long(),
        test_x=arrays["test_x"].unsqueeze(1),
        test_y=arrays["test_y"].long(),
        classes=[],
        files=list(paths.values()),
    )
