"""ResNet-18 from torchvision, with a stem for small images and optional local starting weights."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from cnnlab.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

STEMS = ("auto", "cifar", "imagenet")
PREFIXES = ("module.", "model.", "net.")  # DataParallel, wrapper modules, this class's own state dict
SKIPPABLE = {"fc.weight", "fc.bias", "conv1.weight"}  # may differ when fine-tuning or the stem differs


class ResNet18(nn.Module):
    """torchvision's ResNet-18 held as ``self.net``.

    Wrapping rather than subclassing torchvision's ``ResNet`` keeps its public ``resnet18`` builder
    the only place that knows the block layout; the price is a ``net.`` prefix on state-dict keys,
    which :func:`load_weights` strips. ``stem="cifar"`` swaps the 7x7/2 conv and the max-pool for
    one 3x3/1 conv, so 32-pixel images keep their resolution into ``layer1``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        stem: str = "auto",
        weights: str | None = None,
    ):
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"Unknown model.stem '{stem}'; choose one of: {', '.join(STEMS)}.")
        if stem == "auto":
            stem = "cifar" if image_size <= 64 else "imagenet"
        self.stem = stem
        self.net = resnet18(weights=None, num_classes=num_classes)
        if stem == "cifar":
            self.net.conv1 = _conv(in_channels, kernel_size=3, stride=1, padding=1)
            self.net.maxpool = nn.Identity()
        elif in_channels != 3:
            self.net.conv1 = _conv(in_channels, kernel_size=7, stride=2, padding=3)
        if weights:
            load_weights(self.net, weights)

    @property
    def classifier(self) -> nn.Linear:
        """The last linear layer (its input is the penultimate feature), as other cnnlab models name it."""
        return self.net.fc

    def forward(self, x):
        return self.net(x)


def _conv(in_channels: int, **kwargs) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, 64, bias=False, **kwargs)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    return conv


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
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a user's file: any reader failure becomes one clear message
        raise CheckpointError(f"Could not read weights from {path}: {err}") from err
    if isinstance(state, dict) and not _all_tensors(state):
        state = state.get("model", state.get("state_dict"))  # a full training checkpoint
    if not isinstance(state, dict) or not _all_tensors(state):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return {_strip(k): v for k, v in state.items()}


def load_weights(net: nn.Module, path: str | Path) -> None:
    """Copy weights from ``path`` into a torchvision ResNet, strictly except for the skippable keys.

    ``fc`` is skipped when its shape differs (fine-tuning to another number of classes) and ``conv1``
    when the stem or channel count differs; anything else that does not match is an error, so a
    checkpoint of the wrong model never half-loads silently.
    """
    state, own = read_state_dict(path), net.state_dict()
    skipped = [k for k in SKIPPABLE if k in state and k in own and state[k].shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    bad = [f"{k} (unexpected)" for k in state if k not in own]
    bad += [
        f"{k} (shape {list(v.shape)}, model has {list(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    # Old torchvision files lack num_batches_tracked; BatchNorm starts it at 0 then.
    bad += [
        f"{k} (missing)"
        for k in own
        if k not in state and k not in skipped and not k.endswith("num_batches_tracked")
    ]
    if bad:
        raise CheckpointError(
            f"Weights in {path} do not fit ResNet18: {len(bad)} keys differ, e.g. {', '.join(bad[:5])}."
        )
    if skipped:
        log.info("Not loading %s from %s: shapes differ from the model.", ", ".join(sorted(skipped)), path)
    net.load_state_dict(state, strict=False)


def _all_tensors(state: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def _strip(key: str) -> str:
    while key.startswith(PREFIXES):
        key = key.split(".", 1)[1]
    return key
