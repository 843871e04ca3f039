"""The cache folder: entries streamed to disk and mapped back, and the clean-up after killed writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import torch

from cnnlab.data import cache
from cnnlab.data.cifar import unpack_zip
from cnnlab.data.images import decode_all
from tests.test_data_images import make_files

KEY = "ab" * 32


def leftovers(folder):
    """What killed writers leave: a half-unpacked archive folder and half-written cache entries."""
    (folder / "decoded").mkdir(parents=True)
    half_tree = folder / ".cifar10-jpg-0123456789ab.k2j3h4.tmp"
    (half_tree / "train" / "cat").mkdir(parents=True)
    (half_tree / "train" / "cat" / "0001.jpg").write_bytes(b"\xff" * 1000)
    torn = [folder / "decoded" / f".{KEY}.u8.x81kq_.tmp", folder / "decoded" / f".{KEY}-train.pt.0a9z.tmp"]
    for path in torn:
        path.write_bytes(b"half")
    return [half_tree, *torn]


def foreign(folder):
    """Files that are not cnnlab's temporary files, though they look alike."""
    names = [
        ".notes.tmp",
        "data.u8.tmp",
        f"{KEY}.u8",
        ".cifar10-jpg-0123456789ab",
        ".backup-0123456789ab.tmp",
    ]
    paths = [folder / "decoded" / name for name in names] + [folder / "mine.tmp"]
    for path in paths:
        path.write_bytes(b"keep me")
    return paths


def test_remove_stale_takes_only_cnnlab_temp_names(tmp_path):
    stale, kept = leftovers(tmp_path), foreign(tmp_path)
    assert set(cache.remove_stale(tmp_path)) == {stale[0]}
    assert set(cache.remove_stale(tmp_path / "decoded")) == set(stale[1:])
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_remove_stale_leaves_a_live_writers_files(tmp_path):
    stale = leftovers(tmp_path)
    with cache.writing(tmp_path / "decoded"):
        assert cache.remove_stale(tmp_path / "decoded") == []
    assert all(p.exists() for p in stale[1:])
    assert len(cache.remove_stale(tmp_path / "decoded")) == 2


def test_a_writer_in_another_process_keeps_its_files(tmp_path):
    folder = tmp_path / "decoded"
    folder.mkdir()
    temp = folder / f".{KEY}.u8.live01.tmp"
    holder = subprocess.Popen(  # holds the shared lock while its temp file exists, like a decode in progress
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from cnnlab.data import cache\n"
         f"with cache.writing(Path({str(folder)!r})):\n"
         f"    Path({str(temp)!r}).write_bytes(b'x'); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert cache.remove_stale(folder) == [] and temp.exists()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while temp.exists() and time.monotonic() < deadline:  # the lock dies with its process
        cache.remove_stale(folder)
    assert not temp.exists()


def test_next_decode_and_unpack_remove_the_leftovers(tmp_path):
    stale = leftovers(tmp_path / "cache")
    files = make_files(tmp_path / "data", n=2)
    decode_all(files, None, size=None, channels=3, num_workers=0, on_bad_image="error",
               cache_dir=tmp_path / "cache" / "decoded")  # fmt: skip
    assert not any(p.exists() for p in stale[1:]) and stale[0].exists()
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zf.writestr("train/cat/a.txt", "x")
    unpack_zip(tmp_path / "c.zip", tmp_path / "cache")
    assert not stale[0].exists()


def test_entry_streams_batches_and_maps_them_back(tmp_path):
    batches = [torch.randint(0, 256, (k, 3, 4, 5), dtype=torch.uint8) for k in (3, 1, 4)]
    x = cache.save_entry(tmp_path, KEY, iter(batches), {"y": torch.arange(8)})
    assert x.shape == (8, 3, 4, 5) and torch.equal(x, torch.cat(batches))
    assert (tmp_path / f"{KEY}.u8").stat().st_size == x.numel()
    mapped, meta = cache.load_entry(tmp_path, KEY)
    assert (
        torch.equal(mapped, x) and meta["shape"] == [8, 3, 4, 5] and torch.equal(meta["y"], torch.arange(8))
    )
    mapped[0] = 0  # a private mapping: the file does not change
    assert (
        np.fromfile(tmp_path / f"{KEY}.u8", dtype=np.uint8)[:60].tolist() == batches[0][0].flatten().tolist()
    )
    os.truncate(tmp_path / f"{KEY}.u8", 10)
    assert cache.load_entry(tmp_path, KEY) is None
