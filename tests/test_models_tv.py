"""model=torchvision: families, sizes, stems, heads, channels and local weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.models.resnet import ResNet18
from cnnlab.models.sizes import check_image_size, min_image_size
from cnnlab.models.tv import FAMILIES, TorchvisionNet, architectures, family, input_size_for
from cnnlab.models.weights import FitRules, fit_state


def build(arch: str, *, channels: int = 3, size: int = 32, classes: int = 10, **options) -> TorchvisionNet:
    return TorchvisionNet(in_channels=channels, num_classes=classes, image_size=size, arch=arch, **options)


def forward_ok(arch: str, size: int) -> bool:
    """Does torchvision's own ``arch`` take ``size``-pixel images? (meta tensors: no memory, no maths)"""
    options = {"aux_logits": False, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
    with torch.device("meta"):
        net = torchvision.models.get_model(arch, weights=None, num_classes=10, **options).eval()
        try:
            with torch.no_grad():
                net(torch.empty(1, 3, size, size))
        except RuntimeError:
            return False
    return True


def test_every_torchvision_classifier_has_a_family():
    assert len(architectures()) > 60
    for arch in architectures():
        family(arch)  # raises for a family cnnlab does not know


@pytest.mark.parametrize(
    "arch", ["alexnet", "vgg11", "googlenet", "inception_v3", "squeezenet1_0", "squeezenet1_1", "densenet121",
             "convnext_tiny", "swin_t", "mobilenet_v3_small"],
)  # fmt: skip
def test_minimum_sizes_are_torchvision_s(arch):
    smallest = family(arch).min_size
    assert forward_ok(arch, smallest)
    assert smallest == 1 or not forward_ok(arch, smallest - 1)


def test_every_family_prefix_names_an_architecture():
    for prefix in FAMILIES:
        assert any(a.startswith(prefix) for a in architectures()), prefix


@pytest.mark.parametrize(
    ("arch", "size", "expected"),
    [("alexnet", 28, 63), ("vgg11_bn", 28, 32), ("vgg11_bn", 32, 32), ("googlenet", 32, 32),
     ("inception_v3", 32, 75), ("resnet18", 28, 28), ("vit_b_16", 28, 32), ("vit_b_32", 32, 32),
     ("maxvit_t", 32, 224)],
)  # fmt: skip
def test_small_images_are_upsampled_to_what_the_network_takes(arch, size, expected):
    assert input_size_for(arch, size, None) == expected


def test_alexnet_upsamples_grey_28_pixel_images():
    model = build("alexnet", channels=1, size=28).eval()
    seen = []
    model.net.features[0].register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape))
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert seen == [(2, 1, 63, 63)]


@pytest.mark.parametrize(("arch", "channels"), [
    ("alexnet", 3), ("vgg11_bn", 1), ("googlenet", 1), ("mobilenet_v3_small", 1), ("squeezenet1_1", 3),
])  # fmt: skip
def test_head_channels_and_small_images(arch, channels):
    model = build(arch, channels=channels, size=28, classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 28, 28))
    assert out.shape == (2, 7)
    first = next(m for m in model.net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == channels
    assert out is not None and model.classifier is model.net.get_submodule(model.head)


def test_inception_and_googlenet_return_plain_logits_in_training():
    for arch in ("googlenet", "inception_v3"):
        model = build(arch, size=32).train()
        assert isinstance(model(torch.randn(2, 3, 32, 32)), torch.Tensor)


def test_vit_is_built_for_the_input_size():
    model = build("vit_b_32", size=32).eval()
    assert model.net.image_size == 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_input_size_resizes_inside_the_model():
    model = build("resnet18", size=28, input_size=64, stem="imagenet").eval()
    seen = []
    model.net.conv1.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 28, 28))
        model(torch.randn(1, 3, 128, 128))  # larger inputs are shrunk to it too
    assert seen == [64, 64]


@pytest.mark.parametrize(("arch", "input_size", "message"), [
    ("alexnet", 32, "at least 63 pixels"), ("vit_b_16", 40, "in multiples of 16"), ("maxvit_t", 256, "224"),
])  # fmt: skip
def test_input_size_below_the_minimum_is_refused(arch, input_size, message):
    with pytest.raises(ConfigError, match=message):
        build(arch, input_size=input_size)
    cfg = OmegaConf.create({"_target_": "cnnlab.models.tv.TorchvisionNet", "name": "torchvision",
                            "arch": arch, "input_size": input_size})  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        min_image_size(cfg)  # before any data is read


def test_unknown_arch_lists_the_choices():
    choices = r"Unknown model.arch 'vgg11bn'; choose one of: alexnet, .*Did you mean 'vgg11_bn'\?"
    with pytest.raises(ConfigError, match=choices):
        build("vgg11bn")


def test_cifar_stem_only_for_resnets():
    assert build("resnet50", size=32).stem == "cifar"
    assert build("resnet18", size=96).stem == "imagenet"
    assert isinstance(build("wide_resnet50_2", size=32, stem="cifar").net.maxpool, nn.Identity)
    with pytest.raises(ConfigError, match="stem=cifar is for resnet"):
        build("vgg11", stem="cifar")
    with pytest.raises(ConfigError, match="choose one of: auto, cifar, imagenet"):
        build("resnet18", stem="tiny")


def test_resnet18_is_a_case_of_the_adapter():
    """Old run folders name cnnlab.models.resnet.ResNet18: same keys, same seeded weights."""
    torch.manual_seed(0)
    old = ResNet18(in_channels=1, num_classes=10, image_size=28)
    torch.manual_seed(0)
    new = build("resnet18", channels=1, size=28)
    assert old.state_dict().keys() == new.state_dict().keys()
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())


def save_imagenet_state(tmp_path, arch: str, **options):
    source = torchvision.models.get_model(arch, weights=None, num_classes=1000, **options)
    path = tmp_path / f"{arch}.pth"
    torch.save(source.state_dict(), path)
    return source, path


def test_torchvision_weights_load_except_the_head(tmp_path):
    source, path = save_imagenet_state(tmp_path, "mobilenet_v3_small")
    model = build("mobilenet_v3_small", weights=str(path))
    state = model.net.state_dict()
    assert model.head == "classifier.3" and state["classifier.3.weight"].shape == (10, 1024)
    for key, value in source.state_dict().items():
        if not key.startswith("classifier.3."):
            assert torch.equal(value, state[key]), key
    assert model.fresh_parameters == ("net.classifier.3.weight", "net.classifier.3.bias")


def test_rgb_weights_summed_for_grey_images(tmp_path):
    source, path = save_imagenet_state(tmp_path, "squeezenet1_1")
    model = build("squeezenet1_1", channels=1, weights=str(path))
    expected = source.features[0].weight.sum(1, keepdim=True)
    assert torch.allclose(model.net.features[0].weight, expected)
    assert model.fresh_parameters == ("net.classifier.1.weight", "net.classifier.1.bias")  # a 1x1 conv head


def test_cifar_stem_starts_fresh_from_imagenet_weights(tmp_path):
    source, path = save_imagenet_state(tmp_path, "resnet18")
    model = build("resnet18", size=32, weights=str(path))
    assert model.stem == "cifar"
    assert set(model.fresh_parameters) == {"net.conv1.weight", "net.fc.weight", "net.fc.bias"}
    assert torch.equal(model.net.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_googlenet_file_with_aux_heads_loads(tmp_path):
    source, path = save_imagenet_state(tmp_path, "googlenet", aux_logits=True, init_weights=False)
    model = build("googlenet", weights=str(path))
    assert torch.equal(model.net.inception5b.branch1.conv.weight, source.inception5b.branch1.conv.weight)


def test_vit_position_embeddings_are_interpolated():
    """The rule load_weights applies (a torchvision ViT file is 350 MB: too big for a test)."""
    model = build("vit_b_32", size=64)  # 2x2 patches + the class token
    rules = FitRules(resize={"encoder.pos_embedding": model._interpolate_positions})
    own = {"encoder.pos_embedding": model.net.encoder.pos_embedding.detach()}
    at_224 = {"encoder.pos_embedding": torch.randn(1, 50, 768)}  # 7x7 patches + class, as torchvision's
    state, fresh = fit_state(own, at_224, rules, source="vit.pth", model="vit_b_32")
    assert state["encoder.pos_embedding"].shape == (1, 5, 768) and fresh == []
    assert torch.equal(state["encoder.pos_embedding"][:, 0], at_224["encoder.pos_embedding"][:, 0])


def test_weights_of_another_network_are_named(tmp_path):
    _source, path = save_imagenet_state(tmp_path, "shufflenet_v2_x0_5")
    with pytest.raises(CheckpointError, match=r"do not fit shufflenet_v2_x1_0: \d+ keys differ, e.g. stage2"):
        build("shufflenet_v2_x1_0", weights=str(path))


def test_weights_from_safetensors_and_a_cnnlab_checkpoint(tmp_path):
    from safetensors.torch import save_file

    trained = build("shufflenet_v2_x0_5", channels=1, size=28)
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))  # keys net.*, as cnnlab writes them
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "best.pt")
    for name in ("w.safetensors", "best.pt"):
        model = build("shufflenet_v2_x0_5", channels=1, size=28, weights=str(tmp_path / name))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.state_dict().items())
        assert model.fresh_parameters == ()


def model_node(name: str, **options):
    from cnnlab.config import SCHEMAS

    return OmegaConf.merge(OmegaConf.structured(SCHEMAS["model"][name]), options)


@pytest.mark.parametrize(("name", "options", "smallest"), [
    ("lenet", {}, 12), ("mlp", {}, 1), ("simplecnn", {"whiten": 2}, 3), ("resnet18", {}, 1),
    ("torchvision", {"arch": "alexnet"}, 1),
])  # fmt: skip
def test_min_image_size(name, options, smallest):
    cfg = model_node(name, **options)
    assert min_image_size(cfg) == smallest
    check_image_size(cfg, smallest)
    if smallest > 1:
        with pytest.raises(ConfigError, match=f"model {name} takes images of at least {smallest} pixels"):
            check_image_size(cfg, smallest - 1)


def test_train_load_and_start_again_from_the_run(make_cfg, tmp_path):
    """A torchvision run trains, rebuilds for predict/evaluate, and its best weights start another run."""
    from cnnlab.run.load import load_run
    from cnnlab.train import train

    options = ("model=torchvision", "model.arch=squeezenet1_1", "trainer.max_epochs=1",
               "trainer.precision=32", "trainer.report=false", "trainer.evaluate=false")  # fmt: skip
    first = tmp_path / "first"
    train(make_cfg(*options), first)
    run = load_run(first)
    assert isinstance(run.model, TorchvisionNet) and run.model.arch == "squeezenet1_1"
    weights = first / "checkpoints" / "best.safetensors"
    second = make_cfg(*options, f"model.weights={weights}")
    model = build_model_from(second)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in run.model.state_dict().items())
    assert model.fresh_parameters == ()


def build_model_from(cfg):
    from cnnlab.build import build_model

    return build_model(cfg.model, in_channels=1, num_classes=10, image_size=28)
