"""Read a finished run back: its config, its checkpoint, and the model rebuilt from both.

``predict``, ``evaluate``, ``viz``, ``export`` and ``resume`` all start here, so a run is rebuilt the
same way everywhere. A saved config is data from disk: its ``_target_`` entries name code to import
and call, so only cnnlab's, torch's and torchvision's are accepted unless the user trusts the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.build import build_model
from cnnlab.engine.checkpoint import load_checkpoint, load_safetensors
from cnnlab.errors import CheckpointError, ConfigError

TRUSTED_TARGETS = ("cnnlab.", "torch.", "torchvision.")


@dataclass
class LoadedRun:
    """A run's model with the best (or chosen) weights loaded, and what it needs to see images."""

    run_dir: Path
    checkpoint_path: Path
    cfg: DictConfig
    model: nn.Module
    classes: list[str]
    mean: list[float]
    std: list[float]
    image_size: int
    in_channels: int
    epoch: int


def untrusted_targets(node, path: str = "") -> list[str]:
    """``key=target`` for every ``_target_`` outside :data:`TRUSTED_TARGETS`, anywhere in ``node``."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_" and not str(value).startswith(TRUSTED_TARGETS):
                found.append(f"{where}={value}")
            else:
                found += untrusted_targets(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += untrusted_targets(value, f"{path}[{i}]")
    return found


def check_trusted(cfg: DictConfig, source: Path, *, trust_config: bool) -> None:
    if trust_config:
        return
    bad = untrusted_targets(OmegaConf.to_container(cfg, resolve=False))
    if bad:
        raise ConfigError(
            f"The config saved in {source} names code outside cnnlab, torch and torchvision "
            f"({', '.join(bad)}); pass trust_config=true only if you trust where this run came from."
        )


def run_checkpoint(run_dir: Path, ckpt: str | Path | None = None, name: str = "best.pt") -> Path:
    """The checkpoint to read: ``ckpt`` if given, else ``<run_dir>/checkpoints/<name>``.

    For the default ``best.pt``, ``best.safetensors`` beside it is preferred: it holds tensors only.
    """
    run_dir = Path(run_dir)
    if ckpt is not None:
        return Path(ckpt)
    if not run_dir.is_dir():
        raise CheckpointError(
            f"Run directory {run_dir} does not exist; pass run=<a directory written by cnnlab train>."
        )
    path = run_dir / "checkpoints" / name
    if name == "best.pt" and path.with_suffix(".safetensors").is_file():
        return path.with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no checkpoints/{name}; it is not a finished cnnlab run "
            "(pass the run directory printed by cnnlab train, or ckpt=<file>)."
        )
    return path


def load_state_strict(model: nn.Module, state: dict, source: Path) -> None:
    """``load_state_dict`` that names the mismatched keys and shapes in one sentence."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        for k in shapes[:5]:
            parts.append(f"{k} has shape {tuple(state[k].shape)}, model wants {tuple(own[k].shape)}")
        raise CheckpointError(
            f"The weights in {source} do not fit the model ({'; '.join(parts)}); "
            "use the checkpoint of the same run, or the model config it was trained with."
        )
    model.load_state_dict(state)


def weights_of(state: dict) -> dict:
    """The weights that scored the checkpoint's monitored value: the EMA's when it was better."""
    return state["ema"]["module"] if state.get("weights") == "ema" else state["model"]


def read_weights(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint dict from ``.pt`` or ``.safetensors``: weights (``model``), config and metadata."""
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return load_checkpoint(path, map_location=device)


def load_run(
    run_dir: str | Path,
    *,
    ckpt: str | Path | None = None,
    device: torch.device | str = "cpu",
    trust_config: bool = False,
) -> LoadedRun:
    """Rebuild the model of ``run_dir`` from the config inside its checkpoint and load the weights."""

    path = run_checkpoint(Path(run_dir), ckpt)
    state = read_weights(path, device=device)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a cnnlab checkpoint (no model weights and config in it).")
    cfg = OmegaConf.create(state["config"])
    check_trusted(cfg, path, trust_config=trust_config)
    model = build_model(
        cfg.model,
        in_channels=int(state["in_channels"]),
        num_classes=len(state["classes"]),
        image_size=int(state["image_size"]),
    )
    load_state_strict(model, weights_of(state), path)
    model.to(device).eval()
    return LoadedRun(
        run_dir=Path(run_dir),
        checkpoint_path=path,
        cfg=cfg,
        model=model,
        classes=list(state["classes"]),
        mean=list(state["mean"]),
        std=list(state["std"]),
        image_size=int(state["image_size"]),
        in_channels=int(state["in_channels"]),
        epoch=int(state.get("epoch", 0)),
    )
