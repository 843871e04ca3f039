"""model.activation and model.init for mlp, lenet and simplecnn: each changes what it says, nothing else."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnlab.build import build_model
from cnnlab.config import SCHEMAS
from cnnlab.errors import ConfigError
from cnnlab.models.layers import ACTIVATIONS, INITS, gain
from cnnlab.models.lenet import LeNet
from cnnlab.models.mlp import MLP
from cnnlab.models.simplecnn import SimpleCNN

MODELS = {
    "mlp": lambda **o: MLP(in_channels=1, num_classes=10, image_size=28, **o),
    "lenet": lambda **o: LeNet(in_channels=1, num_classes=10, image_size=28, **o),
    "simplecnn": lambda **o: SimpleCNN(in_channels=3, num_classes=10, image_size=32, fc=[32], whiten=2, **o),
}
ACTIVATION_TYPES = {nn.ReLU, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh}


def seeded(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name](**options)


def shapes(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def layer_types(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if not any(m.children())]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_swaps_only_the_activations(name, activation):
    relu, other = seeded(name), seeded(name, activation=activation)
    expected = ACTIVATIONS[activation]
    assert [expected if t is nn.ReLU else t for t in layer_types(relu)] == layer_types(other)
    assert shapes(relu) == shapes(other)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in relu.state_dict().items())  # same init
    assert other(torch.zeros(2, *((1, 28, 28) if name != "simplecnn" else (3, 32, 32)))).shape == (2, 10)


@pytest.mark.parametrize("name", MODELS)
def test_default_init_is_pytorchs(name):
    """init=default draws nothing more: old runs and seeded new runs get the weights they always had."""
    assert all(
        torch.equal(v, seeded(name).state_dict()[k])
        for k, v in seeded(name, init="default").state_dict().items()
    )


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("init", [i for i in INITS if i != "default"])
def test_init_changes_conv_and_linear_weights_only(name, init):
    default, other = seeded(name), seeded(name, init=init)
    assert shapes(default) == shapes(other)
    changed = {k for k, v in default.state_dict().items() if not torch.equal(v, other.state_dict()[k])}
    layers = {n for n, m in other.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert changed and {k.rsplit(".", 1)[0] for k in changed} <= layers  # BN, whitening buffers untouched
    for layer in weight_layers(other):
        if layer.bias is not None:
            assert not layer.bias.any()


def test_kaiming_std_follows_the_activation_and_the_head_gets_gain_one():
    for activation in ("relu", "tanh", "sigmoid", "leaky_relu", "silu"):
        model = MLP(
            in_channels=1, num_classes=10, image_size=64, hidden=[2048], activation=activation, init="kaiming"
        )
        hidden, head = model.features[1].weight, model.classifier.weight
        assert hidden.std().item() == pytest.approx(gain(activation) / math.sqrt(64 * 64), rel=0.02)
        assert head.std().item() == pytest.approx(1 / math.sqrt(2048), rel=0.1)
    assert gain("relu") == pytest.approx(math.sqrt(2)) and gain("tanh") == pytest.approx(5 / 3)


def test_xavier_orthogonal_and_normal():
    model = MLP(
        in_channels=1, num_classes=10, image_size=32, hidden=[512], activation="sigmoid", init="xavier"
    )
    w = model.features[1].weight
    assert w.abs().max().item() <= math.sqrt(6 / (1024 + 512)) + 1e-6  # Glorot's uniform bound, gain 1
    assert w.abs().max().item() > 0.9 * math.sqrt(6 / (1024 + 512))
    model = MLP(
        in_channels=1, num_classes=10, image_size=16, hidden=[64], activation="tanh", init="orthogonal"
    )
    w = model.features[1].weight  # 64 x 256: orthonormal rows times the gain
    assert torch.allclose(w @ w.T, (5 / 3) ** 2 * torch.eye(64), atol=1e-4)
    model = LeNet(in_channels=1, num_classes=10, image_size=28, init="normal", init_std=0.05)
    assert model.features[0].weight.std().item() == pytest.approx(0.05, rel=0.2)
    assert model.classifier.weight.std().item() == pytest.approx(0.05, rel=0.2)


@pytest.mark.parametrize(("options", "message"), [
    ({"activation": "swish"},
     "Unknown model.activation 'swish'; choose one of: relu, leaky_relu, elu, silu, gelu, sigmoid, tanh."),
    ({"init": "he"}, "Unknown model.init 'he'; choose one of: default, kaiming, xavier, orthogonal, normal."),
    ({"init": "normal", "init_std": 0.0}, "model.init_std must be greater than 0, got 0.0."),
])  # fmt: skip
@pytest.mark.parametrize("name", MODELS)
def test_bad_values_list_the_choices(name, options, message):
    with pytest.raises(ConfigError) as err:
        MODELS[name](**options)
    assert str(err.value) == message
    from cnnlab.models.sizes import min_image_size

    cfg = OmegaConf.merge(OmegaConf.structured(SCHEMAS["model"][name]), options)
    with pytest.raises(ConfigError) as err:
        min_image_size(cfg)  # the same check before any data is read
    assert str(err.value) == message


@pytest.mark.parametrize("name", MODELS)
def test_configs_saved_before_these_options_build_the_same_model(name, make_cfg):
    """A run folder's config without activation/init/init_std rebuilds with relu and PyTorch's init."""
    cfg = make_cfg(f"model={name}").model
    old = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg).items()
                            if k not in ("activation", "init", "init_std")})  # fmt: skip
    torch.manual_seed(0)
    a = build_model(old, in_channels=1, num_classes=10, image_size=28)
    torch.manual_seed(0)
    b = build_model(cfg, in_channels=1, num_classes=10, image_size=28)
    assert layer_types(a) == layer_types(b)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_the_options_compose_from_the_command_line(make_cfg):
    cfg = make_cfg("model=simplecnn", "model.activation=gelu", "model.init=orthogonal")
    model = build_model(cfg.model, in_channels=1, num_classes=10, image_size=28)
    assert nn.GELU in layer_types(model) and nn.ReLU not in layer_types(model)
    assert {t for t in layer_types(model) if t in ACTIVATION_TYPES} == {nn.GELU}
