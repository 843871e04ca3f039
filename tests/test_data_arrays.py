"""Whole-split array helpers and the dataset.image_size of fixed-size formats."""

from __future__ import annotations

import torch

from cnnlab.data.arrays import resize_images
from cnnlab.data.registry import build_data, read_splits


def test_resize_images_keeps_flat_images_flat_and_smooths_when_shrinking():
    flat = torch.full((3, 1, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(resize_images(flat, 32), torch.full((3, 1, 32, 32), 77, dtype=torch.uint8))
    checker = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    checker[..., ::2, ::2] = checker[..., 1::2, 1::2] = 255
    small = resize_images(checker, 4)
    assert small.dtype == torch.uint8 and (small.float() - 127.5).abs().max() < 20  # antialiased


def test_image_size_resizes_a_fixed_size_dataset_and_changes_nothing_else(make_cfg):
    plain = read_splits(make_cfg().dataset)
    resized = read_splits(make_cfg("dataset.image_size=32").dataset)
    assert plain.train_x.shape[1:] == (1, 28, 28) and resized.train_x.shape[1:] == (1, 32, 32)
    assert resized.test_x.shape == (len(plain.test_x), 1, 32, 32)
    assert torch.equal(resized.train_y, plain.train_y) and resized.classes == plain.classes
    assert torch.equal(resized.train_x, resize_images(plain.train_x, 32))
    data = build_data(make_cfg("dataset.image_size=32").dataset, device=torch.device("cpu"), batch_size=8,
                      eval_batch_size=8, seed=0)  # fmt: skip
    assert data.image_size == 32 and data.val.x.shape[-1] == 32
