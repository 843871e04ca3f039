"""A plain stack of 3x3 convolution stages with a small fully connected head.

With ``convs=2`` and ``whiten=2`` it is the shape of airbench's CIFAR-10 network: a patch-whitening
first layer, then stages of conv -> pool -> BN -> ReLU -> conv -> BN -> ReLU; airbench also trains the
whitening bias only for the first epochs (``whiten_bias_epochs``), keeps BatchNorm statistics with a
high momentum (``bn_momentum``) and scales the logits down (``logit_scale``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.layers import activation_factory, check_choices, init_weights
from cnnlab.models.weights import load_own_weights
from cnnlab.models.whiten import PatchWhitening


def _check(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    channels,
    fc,
    dropout: float,
    convs: int,
    whiten: int,
    whiten_bias_epochs: int | None,
    bn_momentum: float,
    logit_scale: float,
) -> None:
    for key, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("image_size", image_size),
        ("convs", convs),
    ):
        if value <= 0:
            raise ConfigError(f"SimpleCNN needs a positive {key}, got {value}.")
    if len(channels) == 0 or min(channels) <= 0:
        raise ConfigError(f"model.channels must be one or more positive sizes, got {list(channels)}.")
    if any(h <= 0 for h in fc):
        raise ConfigError(f"model.fc sizes must be positive, got {list(fc)}.")
    if not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {dropout}.")
    if not 0 <= whiten < image_size:
        raise ConfigError(
            f"model.whiten is the whitening patch size: 0 (off) or 1 to {image_size - 1}, got {whiten}."
        )
    if whiten_bias_epochs is not None and (whiten_bias_epochs < 0 or not whiten):
        raise ConfigError(
            f"model.whiten_bias_epochs is a number of epochs >= 0 for a model with model.whiten > 0, or "
            f"null; got {whiten_bias_epochs} with model.whiten={whiten}."
        )
    if not 0 < bn_momentum <= 1:
        raise ConfigError(
            f"model.bn_momentum must be in (0, 1] (torch's momentum, e.g. 0.1), got {bn_momentum}."
        )
    if logit_scale <= 0:
        raise ConfigError(f"model.logit_scale must be greater than 0, got {logit_scale}.")


def _stage(
    c_in: int,
    c_out: int,
    *,
    pool: bool,
    batch_norm: bool,
    pool_first: bool,
    convs: int,
    act: Callable,
    bn_momentum: float,
) -> list[nn.Module]:
    """conv3x3 -> [pool] -> [BN] -> act, or conv3x3 -> [BN] -> act -> [pool] when not ``pool_first``;
    then ``convs - 1`` more conv3x3 -> [BN] -> act at the stage's output size.

    Pooling first runs BN and ReLU on a quarter of the pixels. Max-pool commutes with ReLU (and with
    BN's affine step while its scale is positive), so the network barely changes; small CNNs trained
    ~30% faster this way with no accuracy loss (measured on 2 CPU cores). (It commutes with every monotone
    activation; silu and gelu dip below zero, so with them pooling first is a slightly different net.)
    """

    def conv(width: int) -> nn.Conv2d:
        return nn.Conv2d(width, c_out, 3, padding=1, bias=not batch_norm)

    def norm_act() -> list[nn.Module]:
        return [*([nn.BatchNorm2d(c_out, momentum=bn_momentum)] if batch_norm else []), act()]

    pooling = [nn.MaxPool2d(2)] if pool else []
    first = [conv(c_in), *pooling, *norm_act()] if pool_first else [conv(c_in), *norm_act(), *pooling]
    return first + [layer for _ in range(convs - 1) for layer in (conv(c_out), *norm_act())]


class SimpleCNN(nn.Module):
    """``len(channels)`` conv stages, each halving the image until it is one pixel, then the head.

    ``features`` holds the convolution stages (its output is the last feature map, for
    visualisation); ``head`` flattens and applies the hidden ``fc`` layers, with dropout before
    every linear layer; ``classifier`` is the last linear layer, so its input is the penultimate
    feature vector.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        channels: list[int] = (16, 32, 64),
        batch_norm: bool = True,
        dropout: float = 0.0,
        fc: list[int] = (),
        pool_first: bool = True,
        convs: int = 1,
        whiten: int = 0,
        activation: str = "relu",
        init: str = "default",
        init_std: float = 0.01,
        whiten_bias_epochs: int | None = None,
        bn_momentum: float = 0.1,
        logit_scale: float = 1.0,
        weights: str | None = None,
    ):
        super().__init__()
        act = activation_factory(activation, inplace=True)
        _check(
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            channels=channels,
            fc=fc,
            dropout=dropout,
            convs=convs,
            whiten=whiten,
            whiten_bias_epochs=whiten_bias_epochs,
            bn_momentum=bn_momentum,
            logit_scale=logit_scale,
        )
        stages: list[nn.Module] = []
        size, width = image_size, in_channels
        if whiten:
            stages += [PatchWhitening(in_channels, whiten, bias_epochs=whiten_bias_epochs), act()]
            size, width = image_size - whiten + 1, stages[0].out_channels
        for c in channels:
            pool = size >= 2  # a 2x2 pool would leave nothing of a 1-pixel map
            stages += _stage(width, c, pool=pool, batch_norm=batch_norm, pool_first=pool_first, convs=convs,
                             act=act, bn_momentum=bn_momentum)  # fmt: skip
            size, width = (size // 2 if pool else size), c
        self.features = nn.Sequential(*stages)
        flat = width * size * size
        self.head = nn.Sequential(nn.Flatten(), *self._hidden(flat, fc, dropout, act))
        self.classifier = nn.Linear(fc[-1] if len(fc) else flat, num_classes)
        self.logit_scale = logit_scale
        init_weights(self, init, activation=activation, init_std=init_std)
        self.fresh_parameters = load_own_weights(self, weights, name="simplecnn")

    @staticmethod
    def min_image_size(whiten: int = 0, **options) -> int:
        """A whitening patch must fit in the image (and leave at least one pixel after it).

        Also checks the options that need no data."""
        check_choices(**options)
        return whiten + 1

    @staticmethod
    def _hidden(width: int, fc, dropout: float, act: Callable) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for h in fc:
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
            layers += [nn.Linear(width, h), act()]
            width = h
        return layers + ([nn.Dropout(dropout)] if dropout > 0 else [])

    def forward(self, x):
        logits = self.classifier(self.head(self.features(x)))
        return logits if self.logit_scale == 1.0 else logits * self.logit_scale
