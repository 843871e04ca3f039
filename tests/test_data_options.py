"""The dataset options' own checks: each bad value is one line naming the option and what to choose."""

from __future__ import annotations

import pytest

from cnnlab.data.options import check_dataset
from cnnlab.errors import ConfigError


@pytest.mark.parametrize("value", [0, -3])
def test_num_classes_must_be_positive_or_null(make_cfg, value):
    cfg = make_cfg(f"dataset.num_classes={value}")
    with pytest.raises(
        ConfigError, match=f"dataset.num_classes must be greater than 0, or null .* got {value}"
    ):
        check_dataset(cfg.dataset)
    check_dataset(make_cfg("dataset.num_classes=null").dataset)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "dataset.mean=average",
            r"dataset.mean must be auto or a list of numbers, one per channel; got average",
        ),
        ("dataset.std=[0.5,0.5]", r"one value per channel \(1\) or auto; dataset.std has 2"),
        ("dataset.std=[0]", r"dataset.std values must be greater than 0"),
        ("dataset.mean=[a]", r"dataset.mean must be auto or a list of numbers"),
        ("dataset.sampler=balance", r"Unknown dataset.sampler 'balance'; choose one of: random, balanced"),
        ("dataset.in_memory=maybe", r"Unknown dataset.in_memory 'maybe'; choose one of: auto, true, false"),
    ],
)
def test_bad_dataset_values_are_one_line(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        check_dataset(make_cfg(override).dataset)


@pytest.mark.parametrize(
    "override",
    ["dataset.mean=auto", "dataset.std=auto", "dataset.sampler=balanced", "dataset.in_memory=false",
     "dataset.in_memory=true", "dataset.in_memory=auto"],
)  # fmt: skip
def test_good_dataset_values_pass(make_cfg, override):
    """Accepted, and the data builds with the setting in effect."""
    import torch

    from cnnlab.data.mmap import HostLoader
    from cnnlab.data.registry import build_data

    cfg = make_cfg(override)
    check_dataset(cfg.dataset)
    data = build_data(cfg.dataset, device=torch.device("cpu"), batch_size=32, eval_batch_size=64, seed=0)
    key, value = override.split("=")
    if key == "dataset.sampler":
        assert data.train.sampler == value
    elif value in ("true", "false"):  # in device memory, or on the host a batch ahead
        assert isinstance(data.train, HostLoader) == (value == "false")
    elif key in ("dataset.mean", "dataset.std"):  # auto: measured on the training images
        measured = data.train.x.float().div(255)
        stat = measured.mean() if key == "dataset.mean" else measured.std()
        assert getattr(data, key.split(".")[1])[0] == pytest.approx(float(stat), abs=2e-3)
    assert len(data.train) > 0 and len(data.classes) == 10


def test_cli_refuses_a_bad_value_before_reading_data(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("train", "dataset.root=/nonexistent", "dataset.sampler=balance", "trainer.device=cpu",
                   f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "Unknown dataset.sampler 'balance'" in proc.stderr
    assert "Traceback" not in proc.stderr and "not found" not in proc.stderr


def test_a_stored_config_without_the_new_keys_means_the_old_behaviour(make_cfg):
    """Run folders keep their config; one written before sampler and in_memory existed still builds."""
    import torch
    from omegaconf import OmegaConf

    from cnnlab.data.loader import TensorLoader
    from cnnlab.data.registry import build_data

    stored = OmegaConf.to_container(make_cfg().dataset, resolve=True)
    del stored["sampler"], stored["in_memory"]
    data = build_data(
        OmegaConf.create(stored), device=torch.device("cpu"), batch_size=8, eval_batch_size=8, seed=0
    )
    assert type(data.train) is TensorLoader and data.train.sampler == "random"
