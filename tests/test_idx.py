"""The IDX reader: round trip, both spellings, gzip or not, and every malformed file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from cnnlab.data.idx import IMAGE_MAGIC, LABEL_MAGIC, Inflated, read_idx, read_idx_dataset
from cnnlab.errors import DataError
from tests.conftest import make_images, write_idx, write_tiny_idx


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(tmp_path, gz):
    root = write_tiny_idx(tmp_path, n_train=50, n_test=20, gz=gz)
    splits = read_idx_dataset(root)
    x, y = make_images(50, 0)
    assert splits.train_x.shape == (50, 1, 28, 28) and splits.train_x.dtype.is_floating_point is False
    assert np.array_equal(splits.train_x[:, 0].numpy(), x) and np.array_equal(splits.train_y.numpy(), y)
    assert len(splits.test_y) == 20 and len(splits.files) == 4


def test_wrong_magic(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros(10, dtype=np.uint8), gz=False)  # a label file where images are expected
    with pytest.raises(DataError, match="not an IDX file of the expected kind"):
        read_idx(path, IMAGE_MAGIC)


def test_truncated(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    write_idx(path, np.arange(100, dtype=np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path, LABEL_MAGIC)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(DataError, match="could not be read"):
        read_idx(path, LABEL_MAGIC)


def test_count_mismatch(tmp_path):
    root = write_tiny_idx(tmp_path, n_train=50, n_test=20)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(49, dtype=np.uint8))
    with pytest.raises(DataError, match="differ in count"):
        read_idx_dataset(root)


def write_gzip_stream(path, header: bytes, zeros: int) -> None:
    """A .gz of ``header`` followed by ``zeros`` zero bytes, compressed in pieces (no big buffer)."""
    chunk = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        for start in range(0, zeros, len(chunk)):
            f.write(chunk[: min(len(chunk), zeros - start)])


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path, monkeypatch):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    promised = 1000
    write_gzip_stream(path, LABEL_MAGIC.to_bytes(4, "big") + promised.to_bytes(4, "big"), 64 << 20)
    assert path.stat().st_size < 1 << 20  # 64 MiB of zeros in well under 1 MiB
    inflated = []
    real_read = Inflated.read

    def counting_read(self, size):
        data = real_read(self, size)
        inflated.append(len(data))
        return data

    monkeypatch.setattr(Inflated, "read", counting_read)
    with pytest.raises(DataError, match="more data than its header promises") as info:
        read_idx(path, LABEL_MAGIC)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert inflated and sum(inflated) <= promised + 16  # header, the promised labels and one byte more


def test_gzip_of_several_members_reads_as_gzip_open_does(tmp_path):
    labels = np.arange(250, dtype=np.uint8)
    whole = LABEL_MAGIC.to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.tobytes()
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(b"".join(gzip.compress(whole[i : i + 100]) for i in range(0, len(whole), 100)))
    assert gzip.decompress(path.read_bytes()) == whole  # what gzip.open reads
    assert np.array_equal(read_idx(path, LABEL_MAGIC), labels)


def test_inflated_reads_in_pieces_and_stops_at_the_end():
    data = bytes(range(256)) * 1000
    stream = Inflated(gzip.compress(data))
    assert stream.read(10) + stream.read(100_000) + stream.read(1 << 20) == data
    assert stream.read(1) == b""


@pytest.mark.parametrize("damage", ["cut", "crc"])
def test_damaged_gzip_fails_with_one_line(tmp_path, damage):
    labels = np.arange(200, dtype=np.uint8)
    packed = bytearray(
        gzip.compress(LABEL_MAGIC.to_bytes(4, "big") + (200).to_bytes(4, "big") + labels.tobytes())
    )
    if damage == "cut":  # the end of the deflate stream and the trailer are missing
        packed = packed[:-12]
    else:  # the trailer's CRC of the uncompressed data is wrong
        packed[-8] ^= 0xFF
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(DataError) as info:
        read_idx(path, LABEL_MAGIC)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_header_promising_more_than_gzip_can_hold(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    dims = b"".join(d.to_bytes(4, "big") for d in (60000, 1000, 1000))  # 60 GB promised
    write_gzip_stream(path, IMAGE_MAGIC.to_bytes(4, "big") + dims, 1000)
    with pytest.raises(DataError, match="truncated: its header promises 60000000016 bytes"):
        read_idx(path, IMAGE_MAGIC)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not an IDX file"),
        (LABEL_MAGIC.to_bytes(4, "big") + b"\x00\x00", "ends inside its IDX header"),
        (LABEL_MAGIC.to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\x01\x02", "truncated"),
        (LABEL_MAGIC.to_bytes(4, "big") + (2).to_bytes(4, "big") + b"\x01\x02\x03", "more data than"),
    ],
    ids=["empty", "short-header", "short-data", "padded"],
)
@pytest.mark.parametrize("gz", [True, False])
def test_malformed_files_fail_with_one_line(tmp_path, data, message, gz):
    path = tmp_path / ("x-idx1-ubyte.gz" if gz else "x-idx1-ubyte")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path, LABEL_MAGIC)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
