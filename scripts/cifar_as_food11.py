"""Lay out CIFAR-10 JPEG folders as a Food-11 tree, to try `cnnlab predict` end to end on real images.

    python scripts/cifar_as_food11.py /tmp/cifar10-jpg /tmp/cifar-food11 --train-per-class 2000

Reads ``<src>/train/<class>/*.jpg`` and ``<src>/test/<class>/*.jpg`` and writes
``<dst>/train/<classidx>_<n>.jpg``, a held-out ``<dst>/valid/`` taken from train, an unlabeled
``<dst>/test/00001.jpg ...`` (test images shuffled with a fixed seed) and ``<dst>/test_labels.csv``
(``Id,Category``) holding the true labels of the test images, kept out of the tree cnnlab reads.
Prints the class names in index order (pass them as ``dataset.classes``).
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--train-per-class", type=int, default=2000)
    parser.add_argument("--valid-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible shuffle, not a secret
    classes = sorted(d.name for d in (args.src / "train").iterdir() if d.is_dir())
    for split in ("train", "valid", "test"):
        (args.dst / split).mkdir(parents=True, exist_ok=False)
    n = 0
    for k, name in enumerate(classes):
        files = sorted((args.src / "train" / name).glob("*.jpg"))
        rng.shuffle(files)
        chosen = files[: args.train_per_class + args.valid_per_class]
        for i, path in enumerate(chosen):
            split = "train" if i < args.train_per_class else "valid"
            shutil.copyfile(path, args.dst / split / f"{k}_{n}.jpg")
            n += 1
    test = [
        (path, k)
        for k, name in enumerate(classes)
        for path in sorted((args.src / "test" / name).glob("*.jpg"))[: args.test_per_class]
    ]
    rng.shuffle(test)
    width = max(4, len(str(len(test))))
    with open(args.dst / "test_labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Id", "Category"])
        for i, (path, k) in enumerate(test, start=1):
            stem = f"{i:0{width}d}"
            shutil.copyfile(path, args.dst / "test" / f"{stem}.jpg")
            writer.writerow([stem, k])
    print(f"classes: [{','.join(classes)}]")
    counts = {split: len(list((args.dst / split).iterdir())) for split in ("train", "valid", "test")}
    print(f"{counts} images in {args.dst}; true test labels in {args.dst / 'test_labels.csv'}")


if __name__ == "__main__":
    main()
