"""Starting weights from a local file (nothing is downloaded): read them, fit them to a model, load.

Read with ``torch.load(..., weights_only=True)`` or safetensors; of a cnnlab run's ``best.pt``, the
weights that scored best (:func:`scored_weights`, the rule :mod:`cnnlab.run.checkpoints` applies too).
A file fits when every tensor of the model is in it with its shape, except what fine-tuning is
expected to change: the head (another number of classes), the first convolution (another number of
input channels: its RGB weights are adapted, or another kernel: a small-image stem starts fresh),
ViT's position embeddings (another image size: interpolated) and auxiliary classifiers the model does
not have. Anything else that differs is an error naming the keys, so the weights of another model
never half-load silently.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import CheckpointError
from cnnlab.io import open_regular

log = logging.getLogger(__name__)

PREFIXES = ("module.", "model.", "net.")  # DataParallel, wrapper modules, cnnlab's own wrappers
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")  # googlenet / inception_v3 training heads, not built


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a torch.save'd state dict (or a checkpoint holding one) or a .safetensors file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Weights file {path} does not exist.")
    if path.suffix == ".safetensors" and importlib.util.find_spec("safetensors") is None:
        raise CheckpointError(f"Reading {path} needs the safetensors package; pip install safetensors.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            with open_regular(path) as f:
                state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # a user's file: any reader failure becomes one clear message
        raise CheckpointError(f"Could not read weights from {path}: {err}") from err
    if isinstance(state, dict) and not _all_tensors(state):  # a full training checkpoint
        state = scored_weights(state) if "model" in state else state.get("state_dict")
    if not isinstance(state, dict) or not _all_tensors(state):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return {_strip(k): v for k, v in state.items()}


def scored_weights(state: dict) -> dict:
    """The weights of a cnnlab checkpoint that scored its monitored value: the EMA's when they were
    better (``weights: ema``), else the model's (raw, or the SWA average saved as the model)."""
    return state["ema"]["module"] if state.get("weights") == "ema" else state["model"]


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """First-layer RGB weights for ``channels`` inputs (the usual rule, as timm applies it).

    One channel: the sum over RGB, so a grey image gives the response the RGB filter gave to the same
    grey in colour. More or fewer: RGB repeated over the channels, scaled by 3 / channels.
    """
    if channels == 1:
        return weight.sum(1, keepdim=True)
    repeats = -(-channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (weight.shape[1] / channels)


@dataclass
class FitRules:
    """What a model lets a weights file change (see the module docstring); keys as in the model."""

    head: tuple[str, ...] = ()  # the classification layer's weight and bias
    first_conv: str | None = None  # the first convolution's weight
    resize: dict[str, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)


def fit_state(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], rules: FitRules, *, source: str, model: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` made to fit ``own``; returns it and the keys left to their fresh initialisation.

    Raises CheckpointError naming the keys (at most five, and how many) that cannot be fitted.
    """
    state = {k: v for k, v in state.items() if not k.startswith(AUX_PREFIXES) or k in own}
    fresh, missing, bad = [], [], []
    for key, mine in own.items():
        theirs = state.get(key)
        if theirs is None and key in rules.head:
            fresh.append(key)  # a file of the backbone alone
        elif theirs is None:
            if not key.endswith("num_batches_tracked"):  # old torchvision files lack it; BN starts at 0
                missing.append(f"{key} (missing)")
        elif theirs.shape == mine.shape:
            continue
        elif key in rules.head:
            fresh.append(key)
        elif key == rules.first_conv and theirs.shape[2:] == mine.shape[2:] and theirs.ndim == 4:
            state[key] = adapt_input_channels(theirs, mine.shape[1])
        elif key == rules.first_conv:
            fresh.append(key)  # another kernel or stride: a small-image stem
        elif key in rules.resize:
            state[key] = rules.resize[key](theirs)
        else:
            bad.append(f"{key} (shape {list(theirs.shape)}, model has {list(mine.shape)})")
    bad += [f"{k} (unexpected)" for k in state if k not in own] + missing
    _refuse(bad, source, model)
    return {k: v for k, v in state.items() if k not in fresh}, fresh


def load_weights(module: nn.Module, path: str | Path, rules: FitRules, *, model: str) -> tuple[str, ...]:
    """Load the weights of the file ``path`` into ``module``, fitted by ``rules`` (see :func:`fit_state`);
    return the keys left to their fresh initialisation (fine-tuning trains them)."""
    state, fresh = fit_state(module.state_dict(), read_state_dict(path), rules, source=str(path), model=model)
    module.load_state_dict(state, strict=False)
    if fresh:
        log.info("Not loading %s from %s: shapes differ from the model.", ", ".join(fresh), path)
    return tuple(fresh)


def load_own_weights(model: nn.Module, path: str | None, *, name: str) -> tuple[str, ...]:
    """``model.weights`` of cnnlab's own models (mlp, lenet, simplecnn; e.g. an earlier run's best.pt):
    the ``classifier`` may differ (another number of classes) and the first convolution (another number
    of channels); returns the keys left fresh, none without ``path``."""
    if not path:
        return ()
    first = next((key for key, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    rules = FitRules(head=("classifier.weight", "classifier.bias"), first_conv=first and f"{first}.weight")
    return load_weights(model, path, rules, model=name)


def check_names(own, state, *, head: str, source: str, model: str) -> None:
    """Every key of ``own`` in ``state`` and no other, except those of the ``head`` module."""
    mine = head + "."
    missing = [f"{k} (missing)" for k in own if k not in state and not k.startswith(mine)
               and not k.endswith("num_batches_tracked")]  # fmt: skip
    unexpected = [f"{k} (unexpected)" for k in state if k not in own and not k.startswith(mine)]
    _refuse(unexpected + missing, source, model)


def _refuse(bad: list[str], source: str, model: str) -> None:
    if bad:
        raise CheckpointError(
            f"Weights in {source} do not fit {model}: {len(bad)} keys differ, e.g. {', '.join(bad[:5])}."
        )


def _all_tensors(state: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def _strip(key: str) -> str:
    while key.startswith(PREFIXES):
        key = key.split(".", 1)[1]
    return key
