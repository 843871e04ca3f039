"""model=timm (the optional extra): heads, channels, sizes and local weights. Skipped without timm."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models.sizes import min_image_size
from cnnlab.models.timm_net import TimmNet

timm = pytest.importorskip("timm")

SMALL_CNN = "resnet10t"  # 5M parameters: a second to build
SMALL_VIT = "vit_tiny_patch16_224"


def build(
    arch: str = SMALL_CNN, *, channels: int = 3, size: int = 32, classes: int = 10, **options
) -> TimmNet:
    return TimmNet(in_channels=channels, num_classes=classes, image_size=size, arch=arch, **options)


def test_head_and_channels():
    model = build(channels=1, size=28, classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert model.classifier is model.net.get_classifier() and model.classifier.out_features == 7


def test_fixed_size_models_are_built_for_the_input_size():
    model = build(SMALL_VIT, size=32).eval()
    assert model.net.patch_embed.img_size == (32, 32)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert build(SMALL_VIT, size=28, input_size=48).input_size == 48  # 28-px inputs are resized to 48


def test_a_size_the_network_cannot_take_is_one_line():
    with pytest.raises(ConfigError, match=f"timm's {SMALL_VIT} cannot take 8-pixel images .* e.g. 224"):
        build(SMALL_VIT, size=8)  # smaller than one 16-pixel patch


def test_unknown_arch_suggests_names():
    with pytest.raises(ConfigError, match=r"Unknown timm model.arch 'resnt10t'; .* Did you mean 'resnet10t'"):
        build("resnt10t")
    cfg = OmegaConf.create({"_target_": "cnnlab.models.timm_net.TimmNet", "name": "timm", "arch": "resnt10t"})
    with pytest.raises(ConfigError, match=r"Unknown timm model\.arch"):
        min_image_size(cfg)  # before any data is read


def test_weights_load_with_a_new_head_and_grey_first_layer(tmp_path):
    source = timm.create_model(SMALL_CNN, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "in1k.pth")
    model = build(channels=1, weights=str(tmp_path / "in1k.pth"))
    assert torch.equal(model.net.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    first = source.conv1[0].weight.sum(1, keepdim=True)
    assert torch.allclose(model.net.conv1[0].weight, first)
    assert model.fresh_parameters == ("net.fc.weight", "net.fc.bias")


def test_vit_weights_from_another_size(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model(SMALL_VIT, num_classes=1000)
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    model = build(SMALL_VIT, size=32, weights=str(tmp_path / "vit.safetensors"))
    assert model.net.pos_embed.shape[1] == 2 * 2 + 1  # resampled to 2x2 patches and the class token
    assert torch.equal(model.net.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)


def test_weights_of_another_model_are_refused(tmp_path):
    torch.save(timm.create_model("resnet14t", num_classes=10).state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=rf"do not fit timm's {SMALL_CNN}: .*size mismatch for layer1"):
        build(weights=str(tmp_path / "other.pth"))


def test_without_timm_the_error_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'cnnlab\[timm\]'"):
        build()
