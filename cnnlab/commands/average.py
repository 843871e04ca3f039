"""``cnnlab export run=<dir> average=[ckpt, ...]``: the mean of several checkpoints' weights (checkpoint
averaging), with BatchNorm statistics recomputed on the run's training images, as one safetensors file
that predict and evaluate take as ``ckpt=``."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch.optim.swa_utils import update_bn

from cnnlab.build import build_model
from cnnlab.commands.common import writing_into
from cnnlab.data.loader import BatchPipeline
from cnnlab.engine.swa import average_states, has_batchnorm
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.io import make_dirs
from cnnlab.run.checkpoints import read_checkpoint, write_weights
from cnnlab.run.layout import RunDir
from cnnlab.run.load import load_state_strict, run_data
from cnnlab.run.trust import check_config

log = logging.getLogger("cnnlab")
AVERAGE = "average.safetensors"  # in the run's export/ folder


def member_path(folder: RunDir, name: str) -> Path:
    """A checkpoint as given, else under the run's ``checkpoints/`` (``average=[epoch_009.safetensors]``)."""
    path = Path(name)
    if path.is_file():
        return path
    if folder.checkpoint(name).is_file():
        return folder.checkpoint(name)
    raise CheckpointError(
        f"No checkpoint {name} (nor {folder.checkpoint(name)}); name files the run wrote, e.g. "
        "checkpoints/epoch_<n>.safetensors of a run trained with trainer.epoch_checkpoints=true."
    )


def average(run_dir: Path, names: list[str], *, out: Path | None = None, bn: bool = True,
            data_root: str | None = None, trust_config: bool = False) -> Path:  # fmt: skip
    """Average the weights of ``names`` (two or more checkpoints of one model) into ``out``."""
    if len(names) < 2:
        raise ConfigError(f"average needs two or more checkpoints, got {len(names)}: average=[a.pt,b.pt].")
    folder = RunDir(run_dir)
    paths = [member_path(folder, n) for n in names]
    members = [read_checkpoint(p) for p in paths]
    record = members[0][1]
    check_config(record.cfg, paths[0], trust_config=trust_config)
    for path, (weights, other) in zip(paths[1:], members[1:], strict=True):
        if (
            other.cfg.model != record.cfg.model
            or other.classes != record.classes
            or (
                {k: tuple(v.shape) for k, v in weights.items()}
                != {k: tuple(v.shape) for k, v in members[0][0].items()}
            )
        ):
            raise CheckpointError(f"{path} holds another model than {paths[0]}; average checkpoints of one "
                                  "model and classes (e.g. epochs of one run).")  # fmt: skip
    model = build_model(record.cfg.model, in_channels=record.in_channels, num_classes=len(record.classes),
                        image_size=record.image_size)  # fmt: skip
    load_state_strict(model, average_states([w for w, _ in members]), paths[0])
    if bn and has_batchnorm(model):
        recompute_bn(model, record, data_root)
    merged = dataclasses.replace(record, epoch=max(r.epoch for _, r in members), weights="raw")
    out = Path(out) if out else folder.export / AVERAGE
    with writing_into(folder.path):
        make_dirs(out.parent)
        write_weights(model.state_dict(), merged.to_metadata(), out)
    log.info("averaged %d checkpoints into %s", len(paths), out)
    return out


def recompute_bn(model: torch.nn.Module, record, data_root: str | None) -> None:
    """BatchNorm statistics of the averaged weights, from one pass over the training images."""
    device = torch.device("cpu")
    data = run_data(record.cfg, device, data_root=data_root)
    pipeline = BatchPipeline(record.mean, record.std, device)
    update_bn((pipeline(xb, train=False) for xb, _ in data.train), model)
    model.eval()
