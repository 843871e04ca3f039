"""Kaggle's digit-recognizer CSV files: a header row, then one 28x28 grayscale image per row.

``test.csv`` has 784 columns ``pixel0 ... pixel783``; ``train.csv`` has a ``label`` column first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import DataError
from cnnlab.io import open_regular

SIDE = 28
PIXELS = SIDE * SIDE


def read_digit_csv(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images ``(N, 1, 28, 28)`` uint8 and labels ``(N,)`` (None for test.csv, which has none)."""
    expect = f"a Kaggle digit-recognizer test.csv has a header row and {PIXELS} columns pixel0 ... pixel783"
    try:
        with open_regular(path, "r") as f:
            header = [name.strip() for name in f.readline().split(",")]
            labeled = len(header) == PIXELS + 1 and header[0].lower() == "label"
            if len(header) != PIXELS and not labeled:
                raise DataError(f"{path} has {len(header)} columns but {expect} (train.csv: label first).")
            values = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} could not be read as a CSV file ({exc}); {expect}.") from exc
    except ValueError as exc:  # loadtxt: a row with another column count or a non-number
        raise DataError(f"{path} is malformed ({exc}); {expect}.") from exc
    if values.size == 0:
        raise DataError(f"{path} holds no image rows; {expect}.")
    if values.shape[1] != len(header):
        raise DataError(f"{path} has {values.shape[1]} values per row but {len(header)} header columns.")
    pixels = values[:, 1:] if labeled else values
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path} has pixel values outside 0..255; {expect} holding 0..255.")
    x = torch.from_numpy(pixels.astype(np.uint8)).view(-1, 1, SIDE, SIDE)
    return x, torch.from_numpy(values[:, 0].copy()) if labeled else None
