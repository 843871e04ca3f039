"""Image-file helpers: safe decoding, folder scans, the skip path and the decode cache."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.images import ImageFileDataset, collate_skip_bad, decode_all, open_image
from cnnlab.data.scan import scan_class_folders, scan_food11
from cnnlab.errors import DataError


def write_image(path, array, **save_args):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_args)
    return path


def pattern(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def truncated_jpeg(path):
    write_image(path, pattern(32, 32), format="JPEG")
    path.write_bytes(path.read_bytes()[:300])
    return path


def test_open_image_keeps_exact_pixels_in_chw(tmp_path):
    array = pattern(5, 7)
    image = open_image(write_image(tmp_path / "a.png", array), size=None)
    assert image.dtype == torch.uint8 and image.shape == (3, 5, 7)
    assert torch.equal(image, torch.from_numpy(array).permute(2, 0, 1))
    gray = open_image(tmp_path / "a.png", size=None, channels=1)
    assert gray.shape == (1, 5, 7)
    assert torch.equal(gray[0], torch.from_numpy(np.array(Image.fromarray(array).convert("L"))))


def test_open_image_resizes_with_antialiasing(tmp_path):
    checker = np.zeros((16, 16, 3), dtype=np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255
    image = open_image(write_image(tmp_path / "c.png", checker), size=4)
    assert image.shape == (3, 4, 4)
    # Nearest-neighbour or unfiltered bilinear sampling would give pure 0 or 255 here.
    assert image.float().sub(127.5).abs().max() < 20


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(truncated_jpeg, id="truncated-jpeg"),
        pytest.param(lambda p: p.write_bytes(b"") and p, id="zero-bytes"),
        pytest.param(lambda p: p.write_text("not an image\n") and p, id="text-named-png"),
        pytest.param(lambda p: write_image(p, pattern(4, 4), format="TIFF"), id="tiff-not-allowed"),
    ],
)
def test_open_image_rejects_unreadable_files_naming_them(tmp_path, make):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(DataError, match="on_bad_image=skip") as info:
        open_image(path, size=None)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("side", [12, 16], ids=["over-limit-warning", "over-twice-limit-error"])
def test_open_image_enforces_decompression_bomb_limit(tmp_path, monkeypatch, side):
    path = write_image(tmp_path / "big.png", pattern(side, side))
    assert open_image(path, size=None).shape == (3, side, side)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="decompression-bomb") as info:
        open_image(path, size=None)
    assert str(path) in str(info.value)


def test_scan_class_folders_sorts_and_filters(tmp_path):
    for rel in ["dog/b.JPG", "dog/a.png", "cat/z.Jpeg", "cat/.hidden.jpg", "ant/x.webp"]:
        write_image(tmp_path / rel, pattern(4, 4), format="PNG")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    files, labels, classes = scan_class_folders(tmp_path)
    assert classes == ["ant", "cat", "dog"]
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "ant/x.webp",
        "cat/z.Jpeg",
        "dog/a.png",
        "dog/b.JPG",
    ]
    assert labels == [0, 1, 2, 2]
    files, labels, _ = scan_class_folders(tmp_path, ["ant", "bee", "cat", "dog"])
    assert labels == [0, 2, 3, 3]


def test_scan_class_folders_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        scan_class_folders(tmp_path / "missing")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="cat is a class folder without image files"):
        scan_class_folders(tmp_path / "empty")
    with pytest.raises(DataError, match="holds no image files"):
        scan_class_folders(tmp_path / "empty" / "cat")
    write_image(tmp_path / "val" / "emu" / "a.png", pattern(4, 4))
    with pytest.raises(DataError, match="emu"):
        scan_class_folders(tmp_path / "val", ["cat"])


def test_scan_food11_labels_and_unlabeled(tmp_path):
    for name in ["3_1.jpg", "10_0.jpg", "0_2.jpg"]:
        write_image(tmp_path / "train" / name, pattern(4, 4))
    files, labels = scan_food11(tmp_path / "train", labeled=True, num_classes=11)
    assert [f.name for f in files] == ["0_2.jpg", "10_0.jpg", "3_1.jpg"]
    assert labels == [0, 10, 3]
    with pytest.raises(DataError, match=r"10_0\.jpg.*10 classes"):
        scan_food11(tmp_path / "train", labeled=True, num_classes=10)
    write_image(tmp_path / "test" / "0001.jpg", pattern(4, 4))
    files, labels = scan_food11(tmp_path / "test", labeled=False, num_classes=11)
    assert labels is None and [f.name for f in files] == ["0001.jpg"]
    with pytest.raises(DataError, match=r"0001\.jpg is not named"):
        scan_food11(tmp_path / "test", labeled=True, num_classes=11)


def test_dataset_marks_bad_files_and_collate_drops_them(tmp_path):
    good = write_image(tmp_path / "good.png", pattern(4, 4))
    bad = truncated_jpeg(tmp_path / "bad.jpg")
    dataset = ImageFileDataset([good, bad], [1, 2], size=None, channels=3, on_bad_image="skip")
    batch = collate_skip_bad([dataset[0], dataset[1]])
    assert batch.x.shape == (1, 3, 4, 4) and batch.y.tolist() == [1] and batch.index.tolist() == [0]
    assert batch.bad[0][0] == 1 and batch.bad[0][1].startswith("not a readable image")
    assert str(bad) not in batch.bad[0][1]  # the reason alone: callers print the path once
    strict = ImageFileDataset([good, bad], None, size=None, channels=3, on_bad_image="error")
    assert strict[0][1] == -1
    with pytest.raises(DataError, match=r"bad\.jpg"):
        strict[1]


def make_files(root, n=6):
    return [write_image(root / f"c{i % 2}" / f"{i}.png", pattern(6, 6, seed=i)) for i in range(n)]


def test_decode_all_values_labels_and_workers(tmp_path):
    files = make_files(tmp_path / "data")
    labels = [i % 2 for i in range(len(files))]
    for workers in (0, 1):
        out = decode_all(
            files, labels, size=None, channels=3, num_workers=workers, on_bad_image="error", cache_dir=None
        )
        assert out.x.shape == (6, 3, 6, 6) and out.x.dtype == torch.uint8
        assert torch.equal(out.x[4], open_image(files[4], size=None))
        assert out.y.dtype == torch.int64 and out.y.tolist() == labels
        assert out.files == files and not out.cache_hit


def test_decode_all_skip_drops_bad_file_and_error_names_it(tmp_path, caplog):
    files = make_files(tmp_path / "data")
    files[2] = truncated_jpeg(tmp_path / "data" / "c0" / "broken.jpg")
    args = dict(size=4, channels=3, num_workers=0, cache_dir=None)
    with pytest.raises(DataError, match=r"broken\.jpg"):
        decode_all(files, None, on_bad_image="error", **args)
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.images"):
        out = decode_all(files, list(range(6)), on_bad_image="skip", **args)
    assert out.x.shape == (5, 3, 4, 4) and out.y.tolist() == [0, 1, 3, 4, 5]
    assert files[2] not in out.files and len(out.files) == 5
    assert "broken.jpg" in caplog.text


def test_decode_all_refuses_mixed_sizes_without_resize(tmp_path):
    files = make_files(tmp_path / "data", n=3)
    files.append(write_image(tmp_path / "data" / "c0" / "wide.png", pattern(6, 9)))
    with pytest.raises(DataError, match=r"wide\.png.*image_size"):
        decode_all(files, None, size=None, channels=3, num_workers=0, on_bad_image="error", cache_dir=None)
    out = decode_all(files, None, size=5, channels=3, num_workers=0, on_bad_image="error", cache_dir=None)
    assert out.x.shape == (4, 3, 5, 5)


def test_decode_cache_hits_and_invalidates(tmp_path):
    files = make_files(tmp_path / "data")
    cache = tmp_path / "cache"

    def decode():
        return decode_all(
            files, None, size=None, channels=3, num_workers=0, on_bad_image="error", cache_dir=cache
        )

    first = decode()
    assert not first.cache_hit
    names = sorted(p.name for p in cache.iterdir())  # one entry (images, meta), the lock, no temp files
    assert [n[64:] for n in names[1:]] == [".pt", ".u8"] and names[0] == ".cnnlab-cache.lock"
    second = decode()
    assert second.cache_hit and torch.equal(second.x, first.x) and second.files == files

    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touch
    assert not decode().cache_hit
    assert decode().cache_hit
    write_image(files[1], pattern(6, 6, seed=99))  # new content
    changed = decode()
    assert not changed.cache_hit and torch.equal(changed.x[1], open_image(files[1], size=None))
    files.append(write_image(tmp_path / "data" / "c0" / "new.png", pattern(6, 6)))
    assert not decode().cache_hit


@pytest.mark.parametrize("part", [".pt", ".u8"], ids=["torn-meta", "short-images"])
def test_decode_cache_survives_a_corrupt_cache_file(tmp_path, part):
    files = make_files(tmp_path / "data", n=2)
    cache = tmp_path / "cache"
    args = dict(size=None, channels=3, num_workers=0, on_bad_image="error", cache_dir=cache)
    first = decode_all(files, None, **args).x.clone()
    (cache_file,) = cache.glob(f"*{part}")
    cache_file.unlink()  # a new file, as any writer would make: the mapping of the old one stays valid
    cache_file.write_bytes(b"torn write")
    again = decode_all(files, None, **args)
    assert not again.cache_hit and torch.equal(again.x, first)
    assert decode_all(files, None, **args).cache_hit


def test_decoded_cache_is_memory_mapped_and_equals_decoding_in_memory(tmp_path):
    files = make_files(tmp_path / "data")
    args = dict(size=None, channels=3, num_workers=0, on_bad_image="error")
    plain = decode_all(files, [0] * 6, cache_dir=None, **args)
    cached = decode_all(files, [0] * 6, cache_dir=tmp_path / "cache", **args)
    hit = decode_all(files, [0] * 6, cache_dir=tmp_path / "cache", **args)
    assert plain.key is None and cached.key == hit.key and hit.cache_hit
    for out in (cached, hit):
        assert torch.equal(out.x, plain.x) and torch.equal(out.y, plain.y) and out.files == plain.files
        assert out.x.untyped_storage().data_ptr() != plain.x.untyped_storage().data_ptr()


def test_decoding_leaves_the_global_random_stream_alone(tmp_path):
    """A run that decodes and one that hits the cache must start from the same weights."""
    files = make_files(tmp_path / "data")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    decode_all(files, None, size=None, channels=3, num_workers=0, on_bad_image="error", cache_dir=None)
    assert torch.equal(torch.rand(3), expected)
