"""Write a deliberately imbalanced copy of an MNIST-style IDX dataset, for measurements.

    python scripts/imbalance_idx.py SRC DST [--classes 0 1 2] [--keep 0.1] [--seed 0]

Keeps ``--keep`` of the training images of each class in ``--classes`` (chosen at random with
``--seed``) and every other training image; the test files are copied unchanged. The copy is read like
the original: ``cnnlab train dataset=fashion_mnist dataset.root=DST``.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnlab.data.idx import IMAGE_MAGIC, LABEL_MAGIC, STEMS, find_file, read_idx  # noqa: E402
from cnnlab.io import write_bytes  # noqa: E402


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def kept_rows(labels: np.ndarray, classes: list[int], keep: float, seed: int) -> np.ndarray:
    """Sorted row numbers: all rows, but only ``keep`` of the rows of each class in ``classes``."""
    rng = np.random.default_rng(seed)
    rows = [np.flatnonzero(~np.isin(labels, classes))]
    for k in classes:
        members = np.flatnonzero(labels == k)
        rows.append(rng.choice(members, size=max(1, round(keep * len(members))), replace=False))
    return np.sort(np.concatenate(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    images = read_idx(find_file(args.src, STEMS["train_x"]), IMAGE_MAGIC)
    labels = read_idx(find_file(args.src, STEMS["train_y"]), LABEL_MAGIC)
    rows = kept_rows(labels, args.classes, args.keep, args.seed)
    args.dst.mkdir(parents=True, exist_ok=True)
    for stem, array, magic in (
        (STEMS["train_x"], images[rows], IMAGE_MAGIC),
        (STEMS["train_y"], labels[rows], LABEL_MAGIC),
    ):
        write_bytes(args.dst / f"{stem}.gz", gzip.compress(idx_bytes(array, magic), compresslevel=6))
    for key in ("test_x", "test_y"):
        source = find_file(args.src, STEMS[key])
        write_bytes(args.dst / source.name, source.read_bytes())
    counts = np.bincount(labels[rows], minlength=int(labels.max()) + 1)
    print(f"wrote {args.dst}: {len(rows)} of {len(labels)} training images; per class {counts.tolist()}")


if __name__ == "__main__":
    main()
