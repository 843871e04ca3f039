"""The compression table: accuracy, saved tensor elements (and non-zero ones), file size (and gzipped),
and CPU latency per image, the median of repeated single-image timings taken in alternation."""

from __future__ import annotations

import gzip
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from cnnlab.build import has_conv
from cnnlab.engine.device import compile_error
from cnnlab.run.load import LoadedRun, Predictor

WARMUP = 5


def accuracy(predictor: Predictor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predictor.probs(x).argmax(1) == y.cpu()).float().mean())


def elements(model: nn.Module) -> tuple[int, int]:
    """(elements, non-zero elements) of the tensors the model saves, step counters left out."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point() or t.numel() > 1]
    return sum(t.numel() for t in tensors), sum(int((t != 0).sum()) for t in tensors)


def latencies(models: list[nn.Module], image: torch.Tensor, *, repeats: int, compile: bool) -> list[float]:
    """Median milliseconds of one forward pass of one image per model, the models timed in turn."""
    runners = [torch.compile(m) if compile else m for m in models]
    # the memory format the Predictor feeds each model (channels_last for convolutions)
    inputs = [image.contiguous(memory_format=torch.channels_last) if has_conv(m) else image for m in models]
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        if compile:
            compile_now(runners, inputs)
        for i in range(WARMUP + repeats):
            for runner, x, out in zip(runners, inputs, times, strict=True):
                start = time.perf_counter()
                runner(x)
                if i >= WARMUP:
                    out.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def compile_now(runners: list, inputs: list[torch.Tensor]) -> None:
    """Run each compiled model once, so that a failing compile (no C++ compiler, a truncated file in
    Inductor's cache) is one line instead of a traceback."""
    try:
        for runner, x in zip(runners, inputs, strict=True):
            runner(x)
    except RuntimeError as e:  # Dynamo's and Inductor's errors are RuntimeErrors
        raise compile_error(e, "time without compile=true") from e


def describe(run: LoadedRun, data, label: str) -> dict:
    """One row of the table without the latency: the run's accuracy, sizes and elements."""
    predictor = Predictor.of(run, torch.device("cpu"), precision="32")
    n, nonzero = elements(run.model)
    file = run.checkpoint_path
    test = data.test is not None and data.test_labeled
    x, y = (data.test.x, data.test.y) if test else (data.val.x, data.val.y)
    return {
        "run": label, "split": "test" if test else "val", "accuracy": accuracy(predictor, x, y),
        "elements": n, "nonzero": nonzero, "file_kb": file.stat().st_size / 1024,
        "gzip_kb": len(gzip.compress(Path(file).read_bytes())) / 1024,
    }  # fmt: skip
