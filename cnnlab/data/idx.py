"""MNIST-style IDX files (``*-idx3-ubyte`` images, ``*-idx1-ubyte`` labels), plain or gzipped."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.types import ArraySplits
from cnnlab.errors import DataError

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


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
    """Read one IDX file into a uint8 array, checking magic number and length."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} could not be read ({exc}); download or copy the file again.") from exc
    if len(data) < 8 or int.from_bytes(data[:4], "big") != magic:
        found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        raise DataError(
            f"{path} is not an IDX file of the expected kind (magic {found!r}, expected {magic:#010x}); "
            "replace it with the original file."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            f"{path} is truncated or padded: {len(data)} bytes where the header promises {expected}; "
            "download or copy the file again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_dataset(root: Path) -> ArraySplits:
    """Read the four MNIST-style files from ``root`` into uint8 tensors (images get a channel axis)."""
    paths = {key: find_file(root, stem) for key, stem in STEMS.items()}
    arrays = {}
    for key, path in paths.items():
        kind = IMAGE_MAGIC if key.endswith("_x") else LABEL_MAGIC
        arrays[key] = torch.from_numpy(read_idx(path, kind).copy())
    for split in ("train", "test"):
        n_x, n_y = len(arrays[f"{split}_x"]), len(arrays[f"{split}_y"])
        if n_x != n_y:
            raise DataError(f"{split} images ({n_x}) and labels ({n_y}) in {root} differ in count.")
    return ArraySplits(
        train_x=arrays["train_x"].unsqueeze(1),
        train_y=arrays["train_y"].long(),
        test_x=arrays["test_x"].unsqueeze(1),
        test_y=arrays["test_y"].long(),
        classes=[],
        files=list(paths.values()),
    )
