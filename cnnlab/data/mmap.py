"""Data larger than the training device: images stay on the host and are gathered one batch ahead.

The uint8 images stay where they are on the host: memory-mapped from the decode cache (pages are read
from disk when a batch first touches them) or in host memory. A worker thread gathers each batch
(into pinned memory when the device is CUDA) and starts its copy to the device on a side stream while
the previous batch trains; the main thread makes the compute stream wait for that copy. Order,
sharding and resume are :class:`TensorLoader`'s, so the batches, and the weights, are the same as
with the images in device memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from cnnlab.data.loader import TensorLoader
from cnnlab.errors import DataError

BUDGET_FRACTION = 0.5  # of the free memory: the rest is left to the model, activations and optimizer


class HostLoader(TensorLoader):
    """A :class:`TensorLoader` whose ``x`` stays on the host; ``y`` and the batches are on ``device``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, device: torch.device, **kwargs):
        super().__init__(x, y.to(device), batch_size, **kwargs)
        self.y_host = y.cpu()
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def head(self, n: int) -> torch.Tensor:
        return self.x[:n].to(self.device)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order()
        rows = [r if order is None else order[r] for r in self.batch_rows(start)]
        with ThreadPoolExecutor(1, thread_name_prefix="cnnlab-prefetch") as pool:
            pending: Future | None = pool.submit(self._load, rows[0]) if rows else None
            for i in range(len(rows)):
                ready = pending.result()
                pending = pool.submit(self._load, rows[i + 1]) if i + 1 < len(rows) else None
                yield self._arrived(*ready)

    def _load(self, rows: slice | torch.Tensor):
        """Gather one batch on the host and start its copy to the device (in the worker thread)."""
        n = len(range(len(self.x))[rows]) if isinstance(rows, slice) else len(rows)
        x = torch.empty((n, *self.x.shape[1:]), dtype=torch.uint8, pin_memory=self.cuda)
        y = torch.empty(n, dtype=self.y_host.dtype, pin_memory=self.cuda)
        if isinstance(rows, slice):  # stored order: one sequential read
            x.copy_(self.x[rows])
            y.copy_(self.y_host[rows])
        else:
            torch.index_select(self.x, 0, rows, out=x)
            torch.index_select(self.y_host, 0, rows, out=y)
        if not self.cuda:
            return x.to(self.device), y.to(self.device), None
        with torch.cuda.stream(self.stream):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self.stream)
        return x, y, copied

    def _arrived(self, x: torch.Tensor, y: torch.Tensor, copied) -> tuple[torch.Tensor, torch.Tensor]:
        if copied is not None:  # the compute stream waits for the copy; the allocator learns who uses x
            current = torch.cuda.current_stream(self.device)
            current.wait_event(copied)
            x.record_stream(current)
            y.record_stream(current)
        return x, y


def memory_budget(device: torch.device) -> int:
    """Bytes of images allowed on ``device``: BUDGET_FRACTION of its free memory (CUDA: the free device
    memory; CPU and others: the host's available memory)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = host_available()
    return int(BUDGET_FRACTION * free)


def check_fits(nbytes: int, *, what: str) -> None:
    """DataError before allocating ``nbytes`` of host memory for ``what`` when the host has not that much
    available: one line instead of the allocator's traceback (or the kernel's OOM killer)."""
    available = host_available()
    if nbytes > available:
        raise DataError(
            f"{what} would need {_size(nbytes)} of memory but {_size(available)} is available; "
            "lower dataset.image_size, or use a machine with more memory."
        )


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:,.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:,.1f} MB"


def host_available() -> int:
    """Available host memory: Linux's MemAvailable (free plus reclaimable caches), else free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): assume it fits
        return 1 << 62
