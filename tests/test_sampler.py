"""dataset.sampler: balanced draws each class equally often, from the seeded per-epoch order."""

from __future__ import annotations

import torch

from cnnlab.data.loader import TensorLoader
from cnnlab.data.registry import build_data


def imbalanced_labels() -> torch.Tensor:
    """10 classes of 500 images, three of them cut to 10% (50 images)."""
    counts = [50 if k in (0, 1, 2) else 500 for k in range(10)]
    return torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])[torch.randperm(3650)]


def loader(y, **kwargs) -> TensorLoader:
    x = torch.arange(len(y)).view(-1, 1, 1, 1)  # each image is its own index
    return TensorLoader(x, y, 64, shuffle=True, seed=7, sampler="balanced", **kwargs)


def epoch_labels(data: TensorLoader) -> torch.Tensor:
    return torch.cat([y for _, y in data.batches()])


def test_balanced_classes_are_drawn_about_equally_often():
    y = imbalanced_labels()
    data = loader(y)
    counts = torch.bincount(epoch_labels(data), minlength=10).float()
    assert counts.sum() == len(y)  # as many samples per epoch as the random sampler
    assert (counts / counts.mean() - 1).abs().max() < 0.15  # 365 each on average; 50 images of rare ones
    random = torch.bincount(epoch_labels(TensorLoader(data.x, y, 64, shuffle=True, seed=7)), minlength=10)
    assert random[:3].max() <= 50 and random[3:].min() >= 400  # the random sampler keeps the imbalance


def test_balanced_draws_within_a_class_uniformly_and_with_replacement():
    y = imbalanced_labels()
    data = loader(y)
    drawn = torch.cat([data.order() for data.epoch in range(1, 6)])
    rare = drawn[y[drawn] == 0]
    assert len(torch.unique(rare)) == 50  # every rare image is used over five epochs
    assert len(rare) > 5 * 50  # rare images repeat within epochs


def test_balanced_order_depends_only_on_seed_and_epoch():
    y = imbalanced_labels()
    a, b = loader(y), loader(y)
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a.order(), b.order())
    b.set_epoch(4)
    assert not torch.equal(a.order(), b.order())
    other = TensorLoader(a.x, y, 64, shuffle=True, seed=8, sampler="balanced")
    other.set_epoch(3)
    assert not torch.equal(a.order(), other.order())


def test_balanced_resumes_mid_epoch_with_the_same_batches():
    y = imbalanced_labels()
    whole, resumed = loader(y), loader(y)
    whole.set_epoch(2)
    resumed.set_epoch(2)
    full = list(whole.batches())
    for (xa, ya), (xb, yb) in zip(full[9:], resumed.batches(start=9), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_sampler_reaches_the_training_loader_only(make_cfg):
    data = build_data(make_cfg("dataset.sampler=balanced").dataset, device=torch.device("cpu"), batch_size=32,
                      eval_batch_size=100, seed=0)  # fmt: skip
    assert data.train.sampler == "balanced" and data.val.sampler == "random" and not data.val.shuffle
    plain = build_data(
        make_cfg().dataset, device=torch.device("cpu"), batch_size=32, eval_batch_size=100, seed=0
    )
    plain.train.set_epoch(1)
    data.train.set_epoch(1)
    assert torch.equal(
        plain.train.order(), torch.randperm(len(plain.train.x), generator=torch.Generator().manual_seed(1))
    )
    assert not torch.equal(plain.train.order(), data.train.order())
