"""LeNet-5: two convolutions and three linear layers (LeCun et al. 1998; d2l chapter 7.6)."""

from __future__ import annotations

from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.layers import activation_factory, check_choices, choose, init_weights
from cnnlab.models.weights import load_own_weights

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
MIN_IMAGE_SIZE = 12  # two 2x2 pools and a valid 5x5 convolution leave at least one pixel


class LeNet(nn.Module):
    """conv5x5(pad 2) -> act -> pool2 -> conv5x5 -> act -> pool2 -> fc -> act -> fc -> act -> fc.

    The first convolution pads by 2 so 28-pixel inputs behave like the original 32-pixel ones; the
    flatten size is computed from ``image_size``, so RGB and 128-pixel inputs work too.
    """

    @staticmethod
    def min_image_size(pool: str = "max", **options) -> int:
        """Also checks the options that need no data."""
        choose(POOLS, pool, "pool")
        check_choices(**options)
        return MIN_IMAGE_SIZE

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        activation: str = "relu",
        pool: str = "max",
        channels: list[int] = (6, 16),
        fc: list[int] = (120, 84),
        init: str = "default",
        init_std: float = 0.01,
        weights: str | None = None,
    ):
        super().__init__()
        act = activation_factory(activation)
        pool_cls = choose(POOLS, pool, "pool")
        if len(channels) != 2 or min(channels) <= 0:
            raise ConfigError(f"model.channels must be two positive sizes, got {list(channels)}.")
        c1, c2 = channels
        size = (image_size // 2 - 4) // 2  # after conv1 (same), pool, conv2 (valid), pool
        if size < 1:
            raise ConfigError(f"LeNet needs images of at least {MIN_IMAGE_SIZE} pixels, got {image_size}.")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), act(), pool_cls(2),
            nn.Conv2d(c1, c2, 5), act(), pool_cls(2),
            nn.Flatten(),
        )  # fmt: skip
        layers: list[nn.Module] = []
        width = c2 * size * size
        for h in fc:
            layers += [nn.Linear(width, h), act()]
            width = h
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        init_weights(self, init, activation=activation, init_std=init_std)
        self.fresh_parameters = load_own_weights(self, weights, name="lenet")

    def forward(self, x):
        return self.classifier(self.head(self.features(x)))
