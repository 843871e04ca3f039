"""conf/experiment presets: each composes to its recipe, builds for its dataset's shape and steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnlab.build import build_model, build_optimizer
from tests.conftest import run_cli
from tests.test_matrix import compose_cfg  # noqa: F401  (fixture)

PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))

RECIPES = {
    "mnist_mlp": {"optimizer.name": "sgd", "optimizer.lr": 0.01, "trainer.batch_size": 20,
                  "trainer.max_epochs": 30, "dataset.name": "mnist"},
    "fashion_mnist_lenet_d2l": {"model.activation": "sigmoid", "model.init": "xavier", "optimizer.lr": 0.9,
                                "trainer.batch_size": 256,
                                "trainer.max_epochs": 10, "dataset.name": "fashion_mnist"},
    "cifar10_simplecnn": {"model.channels": [16, 32, 64], "optimizer.momentum": 0.9, "optimizer.lr": 0.01,
                          "dataset.val_split": 0.2, "dataset.name": "cifar10"},
    "food11_simplecnn": {"model.channels": [64, 128, 256, 512, 512], "optimizer.name": "adam",
                         "optimizer.lr": 0.0003, "optimizer.weight_decay": 1e-5, "trainer.patience": 5,
                         "dataset.image_size": 128, "model.batch_norm": True},
    "food11_resnet18": {"model.name": "resnet18", "dataset.name": "food11"},
    "cifar10_resnet18": {"model.name": "resnet18", "model.stem": "cifar", "dataset.name": "cifar10"},
    "cifar10_cpu91": {"model.name": "simplecnn", "model.channels": [64, 256, 256], "model.whiten": 2,
                      "trainer.precision": "bf16", "trainer.max_epochs": 5, "trainer.max_steps": 240,
                      "dataset.name": "cifar10"},
}  # fmt: skip


def test_every_listed_recipe_has_a_preset():
    assert sorted(RECIPES) == [p for p in PRESETS if not p.startswith("fast_")]


def lookup(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return list(node) if hasattr(node, "__len__") and not isinstance(node, str) else node


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_to_its_recipe_and_steps(compose_cfg, preset):  # noqa: F811
    cfg = compose_cfg(f"+experiment={preset}", "dataset.image_size=32")
    for key, value in RECIPES.get(preset, {}).items():
        if key != "dataset.image_size":
            assert lookup(cfg, key) == value, key
    d = cfg.dataset
    model = build_model(cfg.model, in_channels=d.channels, num_classes=d.num_classes, image_size=32)
    optimizer = build_optimizer(model, cfg.optimizer)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, d.channels, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()


@pytest.mark.slow
def test_preset_runs_from_the_cli_and_user_overrides_win(tiny_idx, tmp_path):
    proc = run_cli(
        "train", "+experiment=mnist_mlp", f"dataset.root={tiny_idx}", "trainer.max_epochs=1",
        "trainer.limit_train_batches=3", "trainer.tensorboard=false", "trainer.progress=plain",
        "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "batch_size: 20" in config and "max_epochs: 1" in config and "- 512" in config


def test_unknown_preset_lists_the_presets(tmp_path):
    proc = run_cli("train", "+experiment=cifar_simple", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Unknown experiment 'cifar_simple'" in proc.stderr and "cifar10_simplecnn" in proc.stderr
