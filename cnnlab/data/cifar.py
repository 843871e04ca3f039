"""CIFAR-10 in any of its usual shapes: binary batches, python pickles, JPEG class folders, or a zip of those.

The python batches are pickles, and a pickle can run any code when loaded; they are read with an
unpickler that builds numpy arrays and nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle  # used only through _BatchUnpickler, which builds numpy arrays alone
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from cnnlab.data import cache
from cnnlab.data.folders import read_image_folder
from cnnlab.data.types import ArraySplits
from cnnlab.errors import DataError
from cnnlab.io import open_regular, read_regular_bytes

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS  # binary format: one label byte, then the image as CHW bytes
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
LAYOUTS = (
    "cifar-10-batches-bin/, cifar-10-batches-py/, train/<class>/*.jpg with test/<class>/*.jpg, "
    "or a .zip of those folders"
)


def find_cifar10(root: Path) -> tuple[str, Path] | None:
    """Which layout ``root`` holds and where: ``("bin"|"py"|"folders"|"zip", path)``, or None."""
    if root.is_file() and root.suffix.lower() == ".zip":
        return "zip", root
    if not root.is_dir():
        return None
    for kind, subdir, probe in (
        ("bin", "cifar-10-batches-bin", "data_batch_1.bin"),
        ("py", "cifar-10-batches-py", "data_batch_1"),
    ):
        for place in (root, root / subdir):
            if (place / probe).is_file():
                return kind, place
    if (root / "train").is_dir():
        return "folders", root
    zips = sorted(root.glob("*.zip"))
    preferred = [z for z in zips if z.name == "cifar10-jpg.zip"]
    if preferred or len(zips) == 1:
        return "zip", (preferred or zips)[0]
    return None


def has_cifar10(root: Path) -> bool:
    return find_cifar10(root) is not None


def read_cifar10(root: Path, *, cache_dir: Path, num_workers: int = 0) -> ArraySplits:
    """Read CIFAR-10 from ``root`` (see :data:`LAYOUTS`) into uint8 ``(N, 3, 32, 32)`` tensors.

    A zip is unpacked once under ``cache_dir``, and JPEG folders are decoded once into a tensor file
    there, so later runs load one file.
    """
    found = find_cifar10(root)
    if found is None:
        raise DataError(f"{root} holds no CIFAR-10 data; provide one of {LAYOUTS}.")
    kind, path = found
    if kind == "bin":
        return _read_binary(path)
    if kind == "py":
        return _read_python(path)
    tree = _tree_root(unpack_zip(path, cache_dir)) if kind == "zip" else path
    splits = _read_jpeg_folders(tree, cache_dir, num_workers)
    if kind == "zip":
        splits.files = [path]  # the archive fingerprints the data; its unpacked copy lives in a cache
    return splits


def _split_files(folder: Path, suffix: str) -> list[Path]:
    paths = [folder / f"{name}{suffix}" for name in (*TRAIN_BATCHES, TEST_BATCH)]
    for path in paths:
        if not path.is_file():
            raise DataError(
                f"{path} is missing; CIFAR-10 needs data_batch_1..5{suffix} and test_batch{suffix} "
                f"in {folder}, so copy the complete set."
            )
    return paths


def _to_splits(
    parts: list[tuple[np.ndarray, np.ndarray]], classes: list[str], files: list[Path]
) -> ArraySplits:
    """Assemble ``(images, labels)`` per batch file, the last one being the test batch."""
    train_x = np.concatenate([x for x, _ in parts[:-1]])
    train_y = np.concatenate([y for _, y in parts[:-1]])
    return ArraySplits(
        train_x=torch.from_numpy(train_x.reshape(-1, 3, 32, 32)),
        train_y=torch.from_numpy(train_y.astype(np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(parts[-1][0]).reshape(-1, 3, 32, 32)),
        test_y=torch.from_numpy(parts[-1][1].astype(np.int64)),
        classes=classes,
        files=files,
    )


def _check_labels(labels: np.ndarray, path: Path) -> None:
    if labels.dtype.kind not in "iu" or (len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES))):
        raise DataError(
            f"{path} holds labels outside 0..9, so it is not a CIFAR-10 batch; replace it with the original."
        )


def _read_binary(folder: Path) -> ArraySplits:
    files = _split_files(folder, ".bin")
    parts = []
    for path in files:
        size = path.stat().st_size
        if size == 0 or size % RECORD:
            raise DataError(
                f"{path} is {size} bytes, not a whole number of {RECORD}-byte CIFAR-10 records; "
                "download or copy it again."
            )
        with open_regular(path) as f:
            records = np.fromfile(f, dtype=np.uint8).reshape(-1, RECORD)
        _check_labels(records[:, 0], path)
        parts.append((records[:, 1:], records[:, 0]))
    meta = folder / "batches.meta.txt"
    return _to_splits(parts, _text_class_names(meta) if meta.is_file() else list(CLASSES), files)


def _text_class_names(meta: Path) -> list[str]:
    """The ten class names of ``batches.meta.txt``, one per line."""
    try:
        names = [
            line.strip() for line in read_regular_bytes(meta).decode("utf-8").splitlines() if line.strip()
        ]
    except UnicodeDecodeError as exc:
        raise DataError(f"{meta} is not a text file of class names ({exc.reason}); copy it again.") from exc
    if len(names) != len(CLASSES):
        raise DataError(f"{meta} names {len(names)} classes, not CIFAR-10's {len(CLASSES)}; copy it again.")
    return names


def _reconstruct_function():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _BatchUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain Python values; any other global is refused before it is looked up.

    The original batches were pickled by Python 2 numpy, which names ``numpy.core.multiarray``; numpy 2
    renamed the module to ``numpy._core``, so both spellings map to the same function.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path
        reconstruct = _reconstruct_function()
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise DataError(
                f"Refusing to unpickle {module}.{name} from {self.path}: not a CIFAR-10 batch; "
                "replace the file with the original."
            )
        return found


def _load_batch(path: Path) -> dict[str, object]:
    """One python batch as a dict with str keys (the originals use bytes keys)."""
    try:
        with open_regular(path) as f:
            obj = _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle fails with almost any exception type
        raise DataError(
            f"{path} is not a readable CIFAR-10 python batch ({exc}); download it again."
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR-10 batch dict; download it again.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_batch(path)
    data, labels = batch.get("data"), np.asarray(batch.get("labels", []))
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS
    ):
        raise DataError(f"{path} has no uint8 'data' array of shape (N, {PIXELS}); download it again.")
    if labels.shape != (len(data),):
        raise DataError(f"{path} has {labels.size} labels for {len(data)} images; download it again.")
    _check_labels(labels, path)
    return data, labels


def _read_python(folder: Path) -> ArraySplits:
    files = _split_files(folder, "")
    parts = [_batch_arrays(path) for path in files]
    classes = list(CLASSES)
    meta = folder / "batches.meta"
    if meta.is_file():
        names = _load_batch(meta).get("label_names")
        if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
            raise DataError(f"{meta} has no list of label_names; download it again.")
        if len(names) != len(CLASSES):
            raise DataError(
                f"{meta} names {len(names)} classes, not CIFAR-10's {len(CLASSES)}; download it again."
            )
        classes = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    return _to_splits(parts, classes, [*files, meta] if meta.is_file() else files)


def _read_jpeg_folders(tree: Path, cache_dir: Path, num_workers: int) -> ArraySplits:
    splits = read_image_folder(
        tree,
        size=None,
        channels=3,
        num_workers=num_workers,
        on_bad_image="error",
        cache_dir=cache_dir / "decoded",
    )
    if splits.train_x.shape[1:] != (3, 32, 32):
        raise DataError(
            f"Images in {tree} are {tuple(splits.train_x.shape[1:])} (C, H, W), not CIFAR-10's (3, 32, 32); "
            "read them with the image-folder format and an image_size instead."
        )
    return splits


def unpack_zip(archive: Path, cache_dir: Path) -> Path:
    """Unpack ``archive`` once into ``cache_dir/<stem>-<hash of size and mtime>/`` and return that dir.

    It is extracted into a temporary directory renamed into place at the end, so an interrupted unpack
    never leaves a half tree that a later run would trust; a killed unpack's temporary directory is
    removed at the next start (see :mod:`cnnlab.data.cache`).
    """
    stat = archive.stat()
    tag = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir / f"{archive.stem}-{tag}"
    cache.remove_stale(cache_dir)
    if target.is_dir():
        return target
    try:
        with cache.writing(cache_dir):
            _unpack(archive, target)
    except OSError as exc:
        if target.is_dir():  # another process finished the same unpack first
            return target
        raise DataError(
            f"Could not unpack {archive} into {cache_dir} ({exc}); free space or set cache_dir."
        ) from exc
    return target


def _unpack(archive: Path, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    log.info("unpacking %s into %s (once)", archive, target)
    try:
        _extract(archive, tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extract(archive: Path, dest: Path) -> None:
    """Extract every member, refusing the whole archive if any path would land outside ``dest``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if not parts or parts[0] == "/" or ".." in parts or ":" in parts[0]:
                    raise DataError(f"{archive} contains the unsafe path {name!r}; refusing to unpack it.")
            zf.extractall(dest)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{archive} is not a readable zip file ({exc}); download or copy it again.") from exc


def _tree_root(unpacked: Path) -> Path:
    """The directory holding ``train/``: the unpacked dir itself, or its single top-level folder."""
    if (unpacked / "train").is_dir():
        return unpacked
    subdirs = [p for p in unpacked.iterdir() if p.is_dir() and (p / "train").is_dir()]
    if len(subdirs) == 1:
        return subdirs[0]
    raise DataError(f"{unpacked} (unpacked from a zip) has no train/<class>/ folders; expected {LAYOUTS}.")
