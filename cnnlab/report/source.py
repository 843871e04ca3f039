"""What evaluate and viz read from a run: the model, its data, and probabilities through the one
inference path (:func:`cnnlab.engine.infer.infer_probs`), with forward hooks to see inside."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from cnnlab.data.loader import BatchPipeline
from cnnlab.data.registry import DataBundle, build_data
from cnnlab.engine.device import resolve_device
from cnnlab.engine.infer import infer_probs
from cnnlab.errors import ConfigError, DataError
from cnnlab.rundir import LoadedRun, load_run


def open_run(cfg) -> tuple[LoadedRun, torch.device]:
    """``load_run`` from a command's config (``run``, ``ckpt``, ``device``, ``trust_config``)."""
    if not cfg.get("run"):
        raise ConfigError("No run given; pass run=<a directory written by cnnlab train>.")
    device = resolve_device(str(cfg.get("device") or "auto"))
    run = load_run(cfg.run, ckpt=cfg.get("ckpt"), device=device, trust_config=bool(cfg.get("trust_config")))
    return run, device


def run_data(run: LoadedRun, device: torch.device, *, data_root: str | None = None) -> DataBundle:
    """The run's dataset (``data_root`` replaces its ``dataset.root``), on ``device``."""
    dataset = OmegaConf.create(OmegaConf.to_container(run.cfg.dataset, resolve=True))
    if data_root:
        dataset.root = str(data_root)
    tc = run.cfg.trainer
    return build_data(
        dataset,
        device=device,
        batch_size=tc.batch_size,
        eval_batch_size=tc.eval_batch_size,
        seed=run.cfg.seed,
    )


def labeled_test(data: DataBundle, run_dir: Path, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split's images and labels; a DataError when there is none or it has no labels."""
    if data.test is None or not data.test_labeled:
        raise DataError(
            f"{what} needs a labeled test split, but the dataset of {run_dir} has "
            f"{'no test split' if data.test is None else 'an unlabeled one'}; use cnnlab predict for it."
        )
    return data.test.x, data.test.y


def probs(
    run: LoadedRun,
    x: torch.Tensor,
    *,
    device: torch.device,
    precision: str = "32",
    batch_size: int = 1000,
    views=(),
) -> torch.Tensor:
    """Class probabilities ``(N, K)`` for uint8 images ``x``, through :func:`infer_probs`."""
    pipeline = BatchPipeline(run.mean, run.std, device)
    batches = (x[i : i + batch_size] for i in range(0, len(x), batch_size))
    return infer_probs(run.model, batches, pipeline=pipeline, device=device, precision=precision, views=views)


def model_input(run: LoadedRun, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images -> the normalised float batch the model was trained on (no augmentation), for code
    that needs gradients (Grad-CAM, saliency) and so cannot score through :func:`probs`."""
    return BatchPipeline(run.mean, run.std, device)(x.to(device), train=False)


@contextlib.contextmanager
def capture_inputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the input of every call of ``module`` (e.g. the classifier: the penultimate features)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda _m, inputs, _out: seen.append(inputs[0].detach().float().cpu())
    )
    try:
        yield seen
    finally:
        handle.remove()


def classifier_layer(model: nn.Module) -> nn.Module:
    """The last linear layer: cnnlab models name it ``classifier``; otherwise the last ``nn.Linear``."""
    layer = getattr(model, "classifier", None)
    if isinstance(layer, nn.Module):
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no linear classifier layer to take features from.")
    return linears[-1]
