"""Whole-split array helpers and the dataset.image_size of fixed-size formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.data.arrays import channel_stats, resize_images
from cnnlab.data.registry import build_data, read_splits
from cnnlab.errors import DataError


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


def test_channel_stats_match_float64_numpy():
    x = torch.randint(0, 256, (2500, 3, 5, 4), dtype=torch.uint8)  # more than one chunk
    mean, std = channel_stats(x)
    ref = x.numpy().astype(np.float64) / 255
    assert np.allclose(mean, ref.mean((0, 2, 3)), atol=1e-12) and np.allclose(
        std, ref.std((0, 2, 3)), atol=1e-12
    )


def test_mean_std_auto_over_the_training_split_only(make_cfg):
    cpu = dict(device=torch.device("cpu"), batch_size=8, eval_batch_size=8, seed=0)
    data = build_data(make_cfg("dataset.mean=auto", "dataset.std=auto").dataset, **cpu)
    mean, std = channel_stats(data.train.x)
    assert data.mean == mean and data.std == std
    everything = channel_stats(torch.cat([data.train.x, data.val.x]))
    assert data.mean != everything[0]  # the validation images are not part of it
    half = build_data(make_cfg("dataset.mean=auto").dataset, **cpu)
    assert half.mean == mean and half.std == [0.353]  # only what is auto is computed (Fashion-MNIST's std)
    fixed = build_data(make_cfg().dataset, **cpu)
    assert fixed.mean == [0.286] and torch.equal(fixed.train.x, data.train.x)  # nothing else changes


def test_computed_statistics_go_into_the_checkpoint(make_cfg, tmp_path):
    from cnnlab.run.checkpoints import read_state
    from cnnlab.train import train

    cfg = make_cfg("dataset.mean=auto", "dataset.std=auto", "trainer.max_epochs=1", "trainer.report=false")
    train(cfg, tmp_path / "run")
    saved = read_state(tmp_path / "run" / "checkpoints" / "best.pt")
    data = build_data(cfg.dataset, device=torch.device("cpu"), batch_size=8, eval_batch_size=8, seed=0)
    assert saved["mean"] == data.mean and saved["std"] == data.std and saved["mean"] != [0.5]


def test_constant_images_cannot_be_normalised_automatically(make_cfg, tiny_idx):
    from tests.conftest import write_idx

    write_idx(tiny_idx / "train-images-idx3-ubyte", np.full((400, 28, 28), 9, dtype=np.uint8))
    with pytest.raises(DataError, match=r"dataset\.std=auto found a channel without variation"):
        build_data(make_cfg("dataset.std=auto").dataset, device=torch.device("cpu"), batch_size=8,
                   eval_batch_size=8, seed=0)  # fmt: skip
