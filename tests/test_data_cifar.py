"""CIFAR-10 readers: binary batches, restricted pickles, JPEG folders and a zip unpacked once."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import cifar
from cnnlab.data.cifar import has_cifar10, read_cifar10
from cnnlab.errors import DataError

NAMES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]


def fake_batches(n=3):
    """Per batch file: (uint8 images (n, 3072), int labels (n,)), distinct in every batch."""
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)) for _ in BATCHES]


def write_bin(folder, batches):
    folder.mkdir(parents=True)
    for name, (x, y) in zip(BATCHES, batches, strict=True):
        records = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(NAMES) + "\n\n")
    return folder


def write_py(folder, batches, *, legacy_numpy_name=False):
    """Pickles shaped like the originals (bytes keys); optionally with numpy 1's module name in them."""
    folder.mkdir(parents=True)

    def dump(path, obj):
        blob = pickle.dumps(obj, protocol=3)  # protocol 3 spells globals as plain text lines
        if legacy_numpy_name:
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        path.write_bytes(blob)

    for name, (x, y) in zip(BATCHES, batches, strict=True):
        dump(folder / name, {b"batch_label": b"x", b"labels": y.tolist(), b"data": x, b"filenames": []})
    dump(folder / "batches.meta", {b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072})
    return folder


def check_round_trip(splits, batches):
    train_x = np.concatenate([x for x, _ in batches[:-1]]).reshape(-1, 3, 32, 32)
    assert splits.train_x.dtype == torch.uint8 and splits.train_x.shape == (15, 3, 32, 32)
    assert torch.equal(splits.train_x, torch.from_numpy(train_x))
    assert splits.train_y.dtype == torch.int64
    assert splits.train_y.tolist() == np.concatenate([y for _, y in batches[:-1]]).tolist()
    assert torch.equal(splits.test_x, torch.from_numpy(batches[-1][0].reshape(-1, 3, 32, 32)))
    assert splits.test_y.tolist() == batches[-1][1].tolist()
    assert splits.classes == NAMES


def test_binary_round_trip(tmp_path):
    batches = fake_batches()
    folder = write_bin(tmp_path / "cifar-10-batches-bin", batches)
    splits = read_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    check_round_trip(splits, batches)
    assert [f.name for f in splits.files] == [f"{name}.bin" for name in BATCHES]
    check_round_trip(read_cifar10(folder, cache_dir=tmp_path / "cache"), batches)  # root is the batch dir


def test_binary_wrong_size_names_file(tmp_path):
    folder = write_bin(tmp_path / "cifar-10-batches-bin", fake_batches())
    with (folder / "data_batch_3.bin").open("ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(DataError, match=r"data_batch_3\.bin is 9229 bytes"):
        read_cifar10(tmp_path, cache_dir=tmp_path / "cache")


def test_binary_missing_batch_and_bad_label(tmp_path):
    folder = write_bin(tmp_path / "cifar-10-batches-bin", fake_batches())
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=r"test_batch\.bin is missing"):
        read_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    bad = fake_batches()
    bad[0][1][0] = 12
    write_bin(tmp_path / "other" / "cifar-10-batches-bin", bad)
    with pytest.raises(DataError, match=r"data_batch_1\.bin holds labels outside"):
        read_cifar10(tmp_path / "other", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("legacy", [False, True], ids=["numpy2-names", "numpy1-names"])
def test_python_round_trip(tmp_path, legacy):
    batches = fake_batches()
    write_py(tmp_path / "cifar-10-batches-py", batches, legacy_numpy_name=legacy)
    splits = read_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    check_round_trip(splits, batches)
    assert splits.files[-1].name == "batches.meta"


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    folder = write_py(tmp_path / "cifar-10-batches-py", fake_batches())
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(marker)}))
    with pytest.raises(DataError, match=r"[Rr]efusing to unpickle \w+\.system from .*data_batch_1"):
        read_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_python_batch_with_wrong_shape(tmp_path):
    folder = write_py(tmp_path / "cifar-10-batches-py", fake_batches())
    batch = {b"labels": [1, 2], b"data": np.zeros((2, 100), dtype=np.uint8)}
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=3))
    with pytest.raises(DataError, match=r"data_batch_2 has no uint8 'data' array"):
        read_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    (folder / "data_batch_2").write_bytes(b"\x80\x03garbage")
    with pytest.raises(DataError, match=r"data_batch_2 is not a readable"):
        read_cifar10(tmp_path, cache_dir=tmp_path / "cache")


CLASS_DIRS = ["cat", "airplane", "dog"]  # sorted: airplane, cat, dog


def write_tree(root):
    """train/<class>/NNNN.png and test/<class>/NNNN.png with 32x32 images; returns {relpath: array}."""
    rng = np.random.default_rng(1)
    images = {}
    for split, n in (("train", 3), ("test", 2)):
        for name in CLASS_DIRS:
            for i in range(n):
                rel = f"{split}/{name}/{i:04d}.png"
                images[rel] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[rel]).save(root / rel)
    return images


def check_tree(splits, images):
    assert splits.classes == ["airplane", "cat", "dog"]
    assert splits.train_x.shape == (9, 3, 32, 32) and splits.test_x.shape == (6, 3, 32, 32)
    assert splits.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert splits.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    expected = torch.from_numpy(images["train/cat/0001.png"]).permute(2, 0, 1)
    assert torch.equal(splits.train_x[4], expected)


def test_class_folders_decode_once_into_cache(tmp_path):
    images = write_tree(tmp_path / "data")
    cache = tmp_path / "cache"
    check_tree(read_cifar10(tmp_path / "data", cache_dir=cache), images)
    cached = sorted((cache / "decoded").glob("[!.]*"))
    assert len(cached) == 4  # train and test: images and meta each
    mtimes = [p.stat().st_mtime_ns for p in cached]
    check_tree(read_cifar10(tmp_path / "data", cache_dir=cache), images)
    assert [p.stat().st_mtime_ns for p in sorted((cache / "decoded").glob("[!.]*"))] == mtimes


def test_class_folders_of_wrong_size(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / split / "cat" / "a.png")
    with pytest.raises(DataError, match=r"\(3, 16, 16\).*\(3, 32, 32\)"):
        read_cifar10(tmp_path, cache_dir=tmp_path / "cache")


def zip_tree(tree, archive, prefix=""):
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tree.rglob("*.png")):
            zf.write(path, prefix + path.relative_to(tree).as_posix())
    return archive


def test_zip_is_unpacked_once(tmp_path, monkeypatch):
    images = write_tree(tmp_path / "tree")
    (tmp_path / "dl").mkdir()
    archive = zip_tree(tmp_path / "tree", tmp_path / "dl" / "cifar10-jpg.zip", prefix="cifar10/")
    calls = []
    real_extract = cifar._extract
    monkeypatch.setattr(cifar, "_extract", lambda *a: calls.append(a) or real_extract(*a))
    cache = tmp_path / "cache"
    assert has_cifar10(tmp_path / "dl") and has_cifar10(archive)
    splits = read_cifar10(tmp_path / "dl", cache_dir=cache)
    check_tree(splits, images)
    assert splits.files == [archive]
    (unpacked,) = cache.glob("cifar10-jpg-*")
    assert not list(cache.glob(".*.tmp"))
    mtime = unpacked.stat().st_mtime_ns
    check_tree(read_cifar10(archive, cache_dir=cache), images)  # root is the zip itself
    assert len(calls) == 1 and unpacked.stat().st_mtime_ns == mtime
    os.utime(archive, ns=(0, 10**18))  # a changed archive is unpacked again
    read_cifar10(archive, cache_dir=cache)
    assert len(calls) == 2 and len(list(cache.glob("cifar10-jpg-*"))) == 2


def test_interrupted_unpack_leaves_no_half_tree(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree")
    archive = zip_tree(tmp_path / "tree", tmp_path / "c.zip")
    real_extract = cifar._extract

    def interrupted(archive, dest):
        (dest / "train").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(cifar, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        read_cifar10(archive, cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".cnnlab-cache.lock"]  # no half tree
    monkeypatch.setattr(cifar, "_extract", real_extract)
    assert read_cifar10(archive, cache_dir=tmp_path / "cache").train_x.shape == (9, 3, 32, 32)


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "in" / "evil.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/cat/a.png", b"x")
        zf.writestr("../../escaped.txt", b"owned")
    with pytest.raises(DataError, match=r"unsafe path '\.\./\.\./escaped\.txt'"):
        read_cifar10(archive, cache_dir=tmp_path / "cache" / "deep")
    assert not list(tmp_path.rglob("escaped.txt"))
    assert [p.name for p in (tmp_path / "cache" / "deep").iterdir()] == [".cnnlab-cache.lock"]


def test_nothing_found_lists_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no CIFAR-10 data.*cifar-10-batches-bin"):
        read_cifar10(tmp_path / "empty", cache_dir=tmp_path / "cache")
    assert not has_cifar10(tmp_path / "empty")
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(DataError, match=r"broken\.zip is not a readable zip"):
        read_cifar10(tmp_path / "broken.zip", cache_dir=tmp_path / "cache")
