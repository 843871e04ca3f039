"""The IDX reader: round trip, both spellings, gzip or not, and every malformed file."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.data.idx import IMAGE_MAGIC, LABEL_MAGIC, read_idx, read_idx_dataset
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
