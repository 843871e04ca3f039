"""In-memory batches: one uint8 tensor per split on the training device, sliced by a seeded permutation.

This replaces DataLoader + ToTensor for data that fits in memory (a LeNet epoch ran ~2.3x faster this
way; scripts/benchmark.py compares the two). Conversion to float, augmentation and normalisation run on
whole batches in :class:`BatchPipeline`, on the same device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

SAMPLERS = ("random", "balanced")


def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` by ``index_select`` (on the CPU ~20x faster for uint8 images, same values), keeping
    channels_last images channels_last (gathered as NHWC rows), so the batch needs no copy later."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.index_select(x.permute(0, 2, 3, 1), 0, index).permute(0, 3, 1, 2)
    return torch.index_select(x, 0, index)


class TensorLoader:
    """Iterate ``(x_uint8, y)`` batches over tensors already on the device.

    With ``shuffle`` the order of epoch ``e`` comes from a generator seeded by ``(seed, e)``, so a
    resumed run sees the same batches as an uninterrupted one without saving generator state.
    ``sampler="random"`` is a permutation; ``"balanced"`` draws ``len(x)`` samples with replacement,
    each class equally often (inverse class frequency), from the same generator.
    After :meth:`shard`, ``len()``, ``batch_size`` and ``num_samples`` still describe the global
    batches; iteration yields this rank's slice of each.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        sampler: str = "random",
    ):
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.sampler = sampler
        self.epoch = 0
        self.limit: int | None = None
        self.rank, self.world_size = 0, 1
        self._by_class: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def shard(self, rank: int, world_size: int) -> None:
        """Yield only rank ``rank``'s contiguous part of every batch (data-parallel training)."""
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n = -(-len(self.x) // self.batch_size)
        # A final batch of one sample (per rank) breaks BatchNorm in training; it is dropped.
        if self.shuffle and 0 < len(self.x) % self.batch_size < 2 * self.world_size and n > 1:
            n -= 1
        return n if self.limit is None else min(n, self.limit)

    @property
    def num_samples(self) -> int:
        return min(len(self.x), len(self) * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` images of the split on the training device (e.g. to fit a layer to the data)."""
        return self.x[:n]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from index ``start`` on (a run resumed mid-epoch skips what it did)."""
        order = self.order()
        if order is not None:
            order = order.to(self.x.device)
        for rows in self.batch_rows(start):
            if order is None:
                yield self.x[rows], self.y[rows]
            else:
                index = order[rows]
                yield gather(self.x, index), self.y[index]

    def batch_rows(self, start: int = 0) -> Iterator[slice]:
        """Which positions of the epoch's order each batch takes (this rank's part of it)."""
        for i in range(start, len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, len(self.x))
            if self.world_size > 1:
                m = hi - lo
                lo, hi = lo + m * self.rank // self.world_size, lo + m * (self.rank + 1) // self.world_size
            yield slice(lo, hi)

    def order(self) -> torch.Tensor | None:
        """The sample indices of epoch ``self.epoch`` on the CPU (None: in stored order); they depend
        on ``(seed, epoch)`` alone."""
        if not self.shuffle:
            return None
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.sampler == "balanced":
            return self._balanced(g)
        return torch.randperm(len(self.x), generator=g)

    def _balanced(self, g: torch.Generator) -> torch.Tensor:
        """``len(x)`` indices: a class drawn uniformly among those present, then a sample of it."""
        if self._by_class is None:
            labels = self.y.cpu()
            members = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels)
            counts = counts[counts > 0]
            self._by_class = members, counts, torch.cumsum(counts, 0) - counts
        members, counts, starts = self._by_class
        n = len(self.x)
        cls = torch.randint(len(counts), (n,), generator=g)
        within = (torch.rand(n, generator=g, dtype=torch.float64) * counts[cls]).long()
        return members[starts[cls] + within]


GEOMETRIC_OPS = ("crop", "flip")  # cnnlab.data.augment ops that work on uint8 batches as they are


class BatchPipeline:
    """uint8 batch -> float in [0, 1] -> augmentation (train only) -> normalised, in one place."""

    def __init__(
        self,
        mean: list[float],
        std: list[float],
        device: torch.device,
        *,
        augment: Callable | None = None,
        channels_last: bool = False,
        seed: int = 0,
    ):
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add on the uint8 batch (the kernel converts it), and
        # (x - mean) / std likewise for an augmented batch in [0, 1].
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.inv_std = 1.0 / std_t
        self.std, self.mean = std_t, mean_t
        self.augment = augment
        # Crops and flips only move pixels: they can run on the uint8 batch (a quarter of the bytes),
        # and conversion and normalisation stay one kernel after them.
        names = [name for name, _ in getattr(augment, "ops", [("?", None)])]
        self.geometric = augment is not None and all(name in GEOMETRIC_OPS for name in names)
        self.channels_last = channels_last
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        if train and self.augment is not None and not self.geometric:
            x = self.augment(x.float().div_(255.0), self.generator)
            x = torch.addcmul(self.shift, x, self.inv_std)
        else:
            if train and self.augment is not None:
                x = self.augment(x, self.generator)
                if self.channels_last:  # crops come out NCHW: reorder the bytes, not the floats
                    x = x.contiguous(memory_format=torch.channels_last)
            x = torch.addcmul(self.shift, x, self.scale)
        if self.channels_last:  # a no-op when the data is stored channels_last (see TensorLoader)
            x = x.contiguous(memory_format=torch.channels_last)
        return x
