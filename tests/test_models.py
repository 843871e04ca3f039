"""mlp and lenet: shapes from the dataset, variants, and bad options."""

from __future__ import annotations

import pytest
import torch

from cnnlab.errors import ConfigError
from cnnlab.models.lenet import LeNet
from cnnlab.models.mlp import MLP


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 128)])
@pytest.mark.parametrize("cls", [MLP, LeNet])
def test_any_input_shape(cls, channels, size):
    model = cls(in_channels=channels, num_classes=11, image_size=size)
    assert model(torch.zeros(2, channels, size, size)).shape == (2, 11)


def test_mlp_sizes():
    model = MLP(in_channels=1, num_classes=10, image_size=28)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 64), (64, 10)]
    with pytest.raises(ConfigError):
        MLP(in_channels=1, num_classes=10, image_size=28, dropout=1.5)


def test_lenet_classic_variant():
    model = LeNet(in_channels=1, num_classes=10, image_size=28, activation="sigmoid", pool="avg")
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Sigmoid", "AvgPool2d"} <= kinds and "ReLU" not in kinds
    with pytest.raises(ConfigError, match="choose one of: max, avg"):
        LeNet(in_channels=1, num_classes=10, image_size=28, pool="min")
