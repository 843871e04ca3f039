"""Fine-tuning: the head of every model family, freezing (weights and BatchNorm statistics), and the
backbone's learning rate."""

from __future__ import annotations

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from cnnlab.build import build_optimizer
from cnnlab.engine.finetune import Freezer, check_finetune, head_module, lr_groups, new_parameter_names
from cnnlab.engine.schedulers import build_scheduler
from cnnlab.errors import ConfigError
from cnnlab.models.lenet import LeNet
from cnnlab.models.tv import TorchvisionNet


@pytest.fixture
def pretrained(tmp_path) -> TorchvisionNet:
    """mobilenet_v3_small (BatchNorm throughout) from an 'ImageNet' file: a new 10-class head."""
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_small(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "in1k.pth")
    return TorchvisionNet(in_channels=3, num_classes=10, image_size=32, arch="mobilenet_v3_small",
                          weights=str(tmp_path / "in1k.pth"))  # fmt: skip


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def train_steps(model: nn.Module, optimizer, steps: int = 3) -> None:
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def optimizer_for(model, **options):
    cfg = OmegaConf.create({"_target_": "torch.optim.SGD", "name": "sgd", "lr": 0.1, "momentum": 0.9,
                            "weight_decay": 1e-4, "decay_bias_norm": False, **options})  # fmt: skip
    return build_optimizer(model, cfg)


@pytest.mark.parametrize(("make", "head"), [
    (lambda: LeNet(in_channels=1, num_classes=10, image_size=28), "classifier"),
    (lambda: torchvision.models.resnet18(num_classes=10), "fc"),
    (lambda: torchvision.models.vit_b_32(num_classes=10, image_size=32), "heads"),
    (lambda: torchvision.models.swin_t(num_classes=10), "head"),
])  # fmt: skip
def test_the_head_of_each_family(make, head):
    model = make()
    assert head_module(model) is getattr(model, head)


def test_the_wrapper_names_the_last_layer_and_fresh_layers(pretrained):
    assert head_module(pretrained) is pretrained.net.classifier[3]
    assert new_parameter_names(pretrained) == {"net.classifier.3.weight", "net.classifier.3.bias"}


def test_a_model_without_a_known_head_is_one_line():
    with pytest.raises(ConfigError, match="Cannot tell which layer of Sequential is the head"):
        head_module(nn.Sequential(nn.Linear(2, 2)))


def test_frozen_backbone_does_not_change_and_the_head_does(pretrained):
    optimizer = optimizer_for(pretrained)  # built before freezing: it holds every parameter
    freezer = Freezer(pretrained, epochs=1)
    assert freezer.at_epoch(1) and not freezer.at_epoch(1)
    before = snapshot(pretrained)
    train_steps(pretrained, optimizer)
    after = pretrained.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed == {"net.classifier.3.weight", "net.classifier.3.bias"}  # BN statistics included
    assert pretrained.training and not pretrained.net.features[1].block[0][1].training  # frozen BN: eval


def test_unfreezing_trains_everything(pretrained):
    optimizer = optimizer_for(pretrained)
    freezer = Freezer(pretrained, epochs=1)
    freezer.at_epoch(1)
    assert freezer.at_epoch(2) and not freezer.frozen
    before = snapshot(pretrained)
    train_steps(pretrained, optimizer)
    after = pretrained.state_dict()
    assert not torch.equal(before["net.features.0.0.weight"], after["net.features.0.0.weight"])
    assert not torch.equal(before["net.features.0.1.running_mean"], after["net.features.0.1.running_mean"])
    assert all(p.requires_grad for p in pretrained.parameters())


def test_a_resumed_run_freezes_by_its_epoch(pretrained):
    assert not Freezer(pretrained, epochs=2).at_epoch(3)  # resumed after the frozen phase: nothing to do
    freezer = Freezer(pretrained, epochs=2)
    assert freezer.at_epoch(2) and freezer.frozen
    assert Freezer(pretrained, epochs=0).at_epoch(1) is False


def test_freezing_leaves_parameters_that_were_already_frozen(pretrained):
    pretrained.net.features[0][0].weight.requires_grad_(False)
    freezer = Freezer(pretrained, epochs=1)
    freezer.at_epoch(1)
    freezer.at_epoch(2)
    assert not pretrained.net.features[0][0].weight.requires_grad


def test_backbone_learning_rate(pretrained):
    optimizer = optimizer_for(pretrained, backbone_lr_mult=0.1)
    head = {id(p) for p in pretrained.net.classifier[3].parameters()}
    for group in optimizer.param_groups:
        is_head = {id(p) in head for p in group["params"]}
        assert len(is_head) == 1  # no group mixes head and backbone
        assert group["lr"] == pytest.approx(0.1 if is_head == {True} else 0.01)
    assert optimizer.param_groups[0]["lr"] == 0.1  # the logged lr is the head's
    n = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n == len(list(pretrained.parameters()))


def test_backbone_lr_mult_1_changes_nothing(pretrained):
    plain, same = optimizer_for(pretrained), optimizer_for(pretrained, backbone_lr_mult=1.0)
    assert [len(g["params"]) for g in plain.param_groups] == [len(g["params"]) for g in same.param_groups]
    assert lr_groups(pretrained, plain.param_groups, 0.1, 1.0) is plain.param_groups


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_keep_the_ratio(pretrained, schedule):
    optimizer = optimizer_for(pretrained, backbone_lr_mult=0.1)
    plan = build_scheduler(optimizer, name=schedule, steps_per_epoch=10, max_epochs=2)
    for _ in range(7):
        optimizer.step()  # no gradients: changes nothing, but the schedule expects it first
        plan.step_batch()
    head_lr, backbone_lr = optimizer.param_groups[0]["lr"], optimizer.param_groups[-1]["lr"]
    assert backbone_lr == pytest.approx(0.1 * head_lr)


def train_cfg(**options):
    return OmegaConf.create({
        "trainer": {"freeze_epochs": options.get("freeze", 0)},
        "optimizer": {"backbone_lr_mult": options.get("mult", 1.0)},
        "model": {"name": "torchvision", "weights": options.get("weights")},
    })  # fmt: skip


def test_check_finetune():
    check_finetune(train_cfg())
    check_finetune(train_cfg(freeze=2, mult=0.1, weights="in1k.pth"))
    with pytest.raises(
        ConfigError, match=r"trainer\.freeze_epochs=2 fine-tunes pretrained weights: set model.weights"
    ):
        check_finetune(train_cfg(freeze=2))
    with pytest.raises(ConfigError, match=r"optimizer\.backbone_lr_mult=0\.1 fine-tunes pretrained weights"):
        check_finetune(train_cfg(mult=0.1))
    with pytest.raises(ConfigError, match=r"trainer\.freeze_epochs must be 0 or more, got -1"):
        check_finetune(train_cfg(freeze=-1, weights="w.pth"))
    with pytest.raises(ConfigError, match=r"optimizer\.backbone_lr_mult must be greater than 0, got 0"):
        check_finetune(train_cfg(mult=0, weights="w.pth"))


def test_the_options_compose(make_cfg):
    cfg = make_cfg("model=torchvision", "model.weights=w.pth", "trainer.freeze_epochs=1",
                   "optimizer.backbone_lr_mult=0.1")  # fmt: skip
    check_finetune(cfg)
    assert (cfg.trainer.freeze_epochs, cfg.optimizer.backbone_lr_mult) == (1, 0.1)
