"""Every dataset config x every model config builds with the dataset's shape and takes one step."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from cnnlab.build import build_model
from cnnlab.config import register_configs

DATASETS = ["mnist", "fashion_mnist", "cifar10", "food11", "imagefolder"]
MODELS = ["mlp", "lenet", "simplecnn", "resnet18", "torchvision"]


@pytest.fixture(scope="module")
def compose_cfg():
    register_configs()
    GlobalHydra.instance().clear()
    initialize_config_module("cnnlab.conf", version_base="1.3")
    yield lambda *o: compose("train", overrides=list(o))
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model_name", MODELS)
def test_pair_builds_and_steps(compose_cfg, dataset, model_name):
    cfg = compose_cfg(f"dataset={dataset}", f"model={model_name}")
    d = cfg.dataset
    classes = d.num_classes or 2  # imagefolder counts its class folders
    model = build_model(cfg.model, in_channels=d.channels, num_classes=classes, image_size=d.image_size)
    x = torch.randn(2, d.channels, d.image_size, d.image_size)
    y = torch.tensor([0, classes - 1])
    logits = model(x)
    assert logits.shape == (2, classes)
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
