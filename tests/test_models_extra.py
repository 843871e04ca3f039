"""SimpleCNN, the torchvision ResNet-18 wrapper and the model summary, on tiny random inputs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models.layer_table import format_layer_table, layer_table
from cnnlab.models.resnet import ResNet18
from cnnlab.models.simplecnn import SimpleCNN


def logits(model: nn.Module, in_channels: int, image_size: int, n: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(n, in_channels, image_size, image_size))


@pytest.mark.parametrize("in_channels,image_size", [(1, 28), (3, 32), (3, 128)])
@pytest.mark.parametrize("channels", [[8], [8, 16], [4, 8, 8, 16, 16]])
@pytest.mark.parametrize("pool_first", [True, False])
def test_simplecnn_gives_logits(in_channels, image_size, channels, pool_first):
    model = SimpleCNN(
        in_channels=in_channels,
        num_classes=7,
        image_size=image_size,
        channels=channels,
        pool_first=pool_first,
    )
    assert logits(model, in_channels, image_size).shape == (2, 7)


def test_simplecnn_stage_order():
    first = SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[4], pool_first=True)
    classic = SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[4], pool_first=False)
    assert [type(m) for m in first.features] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in classic.features] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert first.features[0].bias is None
    plain = SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[4], batch_norm=False)
    assert [type(m) for m in plain.features] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU]
    assert plain.features[0].bias is not None


def test_simplecnn_five_stages_on_28px_stop_pooling_at_one_pixel():
    model = SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[4, 4, 4, 4, 6])
    pools = sum(isinstance(m, nn.MaxPool2d) for m in model.features)
    assert pools == 4  # 28 -> 14 -> 7 -> 3 -> 1, then no pool
    assert model.classifier.in_features == 6
    assert logits(model, 1, 28).shape == (2, 10)


def test_simplecnn_fc_and_dropout():
    model = SimpleCNN(in_channels=3, num_classes=5, image_size=32, channels=[4, 8], fc=[32, 16], dropout=0.5)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8 * 8 * 8, 32), (32, 16)]
    assert sum(isinstance(m, nn.Dropout) for m in model.head) == 3
    assert model.classifier.in_features == 16
    model.train()
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 5)


@pytest.mark.parametrize(
    "overrides",
    [{"channels": []}, {"channels": [8, 0]}, {"fc": [-1]}, {"dropout": 1.0}, {"image_size": 0}],
)
def test_simplecnn_bad_config(overrides):
    kwargs = {"in_channels": 1, "num_classes": 10, "image_size": 28} | overrides
    with pytest.raises(ConfigError):
        SimpleCNN(**kwargs)


def conv1_output_shape(model: ResNet18, in_channels: int, image_size: int) -> tuple[int, ...]:
    shapes = []
    handle = model.net.conv1.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    logits(model, in_channels, image_size, n=1)
    handle.remove()
    return shapes[0]


def test_resnet_cifar_stem_keeps_resolution():
    model = ResNet18(in_channels=3, num_classes=10, image_size=32, stem="cifar")
    assert conv1_output_shape(model, 3, 32) == (1, 64, 32, 32)
    assert isinstance(model.net.maxpool, nn.Identity)
    assert logits(model, 3, 32).shape == (2, 10)


@pytest.mark.parametrize("image_size,stem", [(32, "cifar"), (128, "imagenet")])
def test_resnet_auto_stem(image_size, stem):
    model = ResNet18(in_channels=3, num_classes=11, image_size=image_size)
    assert model.stem == stem
    assert conv1_output_shape(model, 3, image_size)[-1] == (
        image_size if stem == "cifar" else image_size // 2
    )


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_resnet_single_channel(stem):
    model = ResNet18(in_channels=1, num_classes=10, image_size=28, stem=stem)
    assert logits(model, 1, 28).shape == (2, 10)
    assert model.classifier is model.net.fc


def test_resnet_bad_stem():
    with pytest.raises(ConfigError, match="auto, cifar, imagenet"):
        ResNet18(in_channels=3, num_classes=10, image_size=32, stem="tiny")


def assert_same(a: dict, b: dict, skip: tuple[str, ...] = ()):
    for key, value in a.items():
        if not key.startswith(skip):
            assert torch.equal(value, b[key]), key


def test_resnet_weights_round_trip(tmp_path):
    source = ResNet18(in_channels=3, num_classes=10, image_size=32)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = ResNet18(in_channels=3, num_classes=10, image_size=32, weights=str(tmp_path / "w.pt"))
    assert_same(source.state_dict(), target.state_dict())


def test_resnet_weights_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = ResNet18(in_channels=3, num_classes=10, image_size=32)
    safetensors_torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    target = ResNet18(in_channels=3, num_classes=10, image_size=32, weights=str(tmp_path / "w.safetensors"))
    assert_same(source.state_dict(), target.state_dict())


@pytest.mark.parametrize("prefix", ["", "module.", "model."])
@pytest.mark.parametrize("image_size", [32, 128])
def test_resnet_torchvision_weights_skip_fc(tmp_path, prefix, image_size):
    source = torchvision.models.resnet18(weights=None, num_classes=1000)
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, tmp_path / "tv.pth")
    target = ResNet18(in_channels=3, num_classes=10, image_size=image_size, weights=str(tmp_path / "tv.pth"))
    assert target.net.fc.out_features == 10
    stem_changed = image_size <= 64  # the cifar stem's conv1 cannot take the 7x7 kernel
    skip = ("fc.", "conv1.") if stem_changed else ("fc.",)
    assert_same(source.state_dict(), target.net.state_dict(), skip=skip)
    if not stem_changed:
        assert torch.equal(source.conv1.weight, target.net.conv1.weight)


def test_resnet_weights_of_another_model(tmp_path):
    other = SimpleCNN(in_channels=3, num_classes=10, image_size=32)
    torch.save(other.state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(CheckpointError, match=r"features\.0\.weight"):
        ResNet18(in_channels=3, num_classes=10, image_size=32, weights=str(tmp_path / "cnn.pt"))


def test_resnet_weights_missing_or_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ResNet18(in_channels=3, num_classes=10, image_size=32, weights=str(tmp_path / "nope.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Could not read"):
        ResNet18(in_channels=3, num_classes=10, image_size=32, weights=str(tmp_path / "bad.pt"))


def test_summary_counts_shapes_and_keeps_mode():
    model = SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[4, 8], fc=[16])
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = layer_table(model, (1, 28, 28))
    assert model.training and all(m.training for m in model.modules())
    assert_same(before, model.state_dict())
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.trainable_params == summary.total_params
    assert sum(row.params for row in summary.rows) == summary.total_params
    shapes = {row.name: row.output_shape for row in summary.rows}
    assert shapes["features.0"] == (4, 28, 28)
    assert shapes["features.1"] == (4, 14, 14)
    assert shapes["features.7"] == (8, 7, 7)
    assert shapes["head.0"] == (8 * 7 * 7,)
    assert shapes["classifier"] == (10,)
    assert format_layer_table(summary).row_count == len(summary.rows) + 2


def test_summary_keeps_eval_mode_and_counts_frozen():
    model = ResNet18(in_channels=3, num_classes=10, image_size=32).eval()
    model.net.fc.requires_grad_(False)
    summary = layer_table(model, (3, 32, 32))
    assert not model.training
    assert summary.trainable_params == summary.total_params - model.net.fc.weight.numel() - 10
