"""Activations and weight initialisation for cnnlab's own models (mlp, lenet, simplecnn).

``init`` follows the course notes: He (kaiming) initialisation for ReLU-like activations, Xavier for
sigmoid and tanh (as the from-scratch SimpleConvNet and the d2l LeNet do), orthogonal (Saxe et al.),
or a plain normal with a fixed standard deviation (SimpleConvNet's 0.01). Each convolution and linear
layer gets the gain of the activation that follows it; the last layer (``classifier``), which feeds
the softmax, gets the linear gain 1. Biases start at zero. ``default`` keeps PyTorch's own
initialisation (kaiming-uniform with a=sqrt(5)), so old runs rebuild exactly as they were trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,  # Swish with beta = 1
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
INPLACE = {"relu", "leaky_relu", "elu", "silu"}  # the activations that take inplace=True
LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default negative slope


def choose(table, value: str, key: str):
    """``table[value]``, or a ConfigError naming ``model.<key>`` and the choices."""
    if value not in table:
        raise ConfigError(f"Unknown model.{key} '{value}'; choose one of: {', '.join(table)}.")
    return table[value]


def activation_factory(name: str, *, inplace: bool = False) -> Callable[[], nn.Module]:
    """A constructor of the activation ``name`` (checked), in place where the module allows it."""
    cls = choose(ACTIVATIONS, name, "activation")
    if inplace and name in INPLACE:
        return lambda: cls(inplace=True)
    return cls


def gain(activation: str) -> float:
    """The gain that keeps the variance of signals through ``activation`` (torch's calculate_gain).

    torch has no gain for ELU, SiLU and GELU; like ReLU they pass about half of a zero-mean signal,
    so they get ReLU's sqrt(2).
    """
    if activation == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", LEAKY_SLOPE)
    if activation in ("sigmoid", "tanh", "relu"):
        return nn.init.calculate_gain(activation)
    return math.sqrt(2.0)


def _kaiming(weight, g: float, _std: float) -> None:
    fan_in = weight[0].numel()  # in_features, or in_channels x kernel height x kernel width
    nn.init.normal_(weight, 0.0, g / math.sqrt(fan_in))  # He et al.: std = gain / sqrt(fan_in)


def _xavier(weight, g: float, _std: float) -> None:
    nn.init.xavier_uniform_(weight, gain=g)


def _orthogonal(weight, g: float, _std: float) -> None:
    nn.init.orthogonal_(weight, gain=g)


def _normal(weight, _g: float, std: float) -> None:
    nn.init.normal_(weight, 0.0, std)


INITS: dict[str, Callable | None] = {
    "default": None,
    "kaiming": _kaiming,
    "xavier": _xavier,
    "orthogonal": _orthogonal,
    "normal": _normal,
}


def check_init(init: str, init_std: float) -> Callable | None:
    """The initialiser for ``init``; ConfigError for an unknown scheme or a non-positive ``init_std``."""
    if not init_std > 0:
        raise ConfigError(f"model.init_std must be greater than 0, got {init_std}.")
    return choose(INITS, init, "init")


def check_choices(
    *, activation: str = "relu", init: str = "default", init_std: float = 0.01, **_options
) -> None:
    """The activation and init options of a model config, before any data is read."""
    activation_factory(activation)
    check_init(init, init_std)


def init_weights(model: nn.Module, init: str, *, activation: str, init_std: float = 0.01) -> None:
    """Initialise every Conv2d and Linear weight of ``model`` by ``init``; zero their biases.

    The module named ``classifier`` gets gain 1 (nothing follows it but the softmax).
    """
    initialise = check_init(init, init_std)
    if initialise is None:
        return
    head = getattr(model, "classifier", None)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            initialise(module.weight, 1.0 if module is head else gain(activation), init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def resize_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` resized to ``size`` x ``size`` (bilinear; antialiased when shrinking), unchanged if it is."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
