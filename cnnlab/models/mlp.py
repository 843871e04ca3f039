"""Multilayer perceptron: the first model of the classic material."""

from __future__ import annotations

from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.layers import activation_factory, check_choices, init_weights
from cnnlab.models.weights import load_own_weights


class MLP(nn.Module):
    """Flatten -> hidden layers (activation, dropout) -> classes. Input size comes from the dataset."""

    @staticmethod
    def min_image_size(**options) -> int:
        """Any size; checks the options that need no data."""
        check_choices(**options)
        return 1

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        hidden: list[int] = (256, 64),
        dropout: float = 0.2,
        activation: str = "relu",
        init: str = "default",
        init_std: float = 0.01,
        weights: str | None = None,
    ):
        super().__init__()
        act = activation_factory(activation, inplace=True)
        if any(h <= 0 for h in hidden):
            raise ConfigError(f"model.hidden sizes must be positive, got {list(hidden)}.")
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {dropout}.")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, h), act(), nn.Dropout(dropout)]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        init_weights(self, init, activation=activation, init_std=init_std)
        self.fresh_parameters = load_own_weights(self, weights, name="mlp")

    def forward(self, x):
        return self.classifier(self.features(x))
