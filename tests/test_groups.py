"""Every scheduler and augmentation option composes and trains one epoch through the real config."""

from __future__ import annotations

import csv

import pytest

from cnnlab.train import train


@pytest.mark.parametrize(
    "name", ["none", "step", "multistep", "exponential", "cosine", "onecycle", "plateau"]
)
def test_scheduler_options_train(make_cfg, tmp_path, name):
    summary = train(make_cfg(f"scheduler={name}", "trainer.max_epochs=2"), tmp_path / "r")
    assert summary["epochs_run"] == 2


def test_warmup_then_cosine_lr_in_metrics(make_cfg, tmp_path):
    train(make_cfg("scheduler=cosine", "scheduler.warmup_epochs=1", "trainer.max_epochs=3",
                   "optimizer.lr=0.01"), tmp_path / "r")  # fmt: skip
    with (tmp_path / "r" / "metrics.csv").open() as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs[0] == pytest.approx(0.001)  # warmup starts at warmup_start_factor * lr
    assert lrs[1] == pytest.approx(0.01)  # cosine starts at the peak after one warmup epoch
    assert lrs[2] < lrs[1]


@pytest.mark.parametrize("name", ["none", "basic", "standard", "strong"])
def test_augmentation_options_train(make_cfg, tmp_path, name):
    summary = train(make_cfg(f"augmentation={name}", "trainer.max_epochs=1"), tmp_path / "r")
    assert summary["epochs_run"] == 1


def test_mixup_trains(make_cfg, tmp_path):
    cfg = make_cfg("augmentation=basic", "augmentation.mixup_alpha=0.2", "trainer.max_epochs=1")
    assert train(cfg, tmp_path / "r")["epochs_run"] == 1


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adagrad", "rmsprop"])
def test_optimizer_options_build_and_learn(make_cfg, tmp_path, name):
    lr = {"sgd": 0.05, "adagrad": 0.05}.get(name, 0.003)
    summary = train(
        make_cfg(f"optimizer={name}", f"optimizer.lr={lr}", "trainer.max_epochs=3"), tmp_path / "r"
    )
    assert summary["best_val_acc"] > 0.3  # chance is 0.1


def test_weight_decay_skips_biases_and_norms():
    import torch

    from cnnlab.engine.optim import param_groups

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    decay, no_decay = param_groups(model, 0.1, decay_bias_norm=False)
    assert [p.ndim for p in decay["params"]] == [4] and len(no_decay["params"]) == 3
    assert no_decay["weight_decay"] == 0.0


def test_summary_option_prints_layers(make_cfg, tmp_path, capsys):
    train(make_cfg("trainer.summary=true", "trainer.max_epochs=1"), tmp_path / "r")
    err = capsys.readouterr().err
    assert "Conv2d" in err and "16x10x10" in err  # conv2's output shape on 28 px input
