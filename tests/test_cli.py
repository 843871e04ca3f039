"""The installed CLI end to end, in a subprocess, as a user runs it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_train_end_to_end(tiny_idx, tmp_path):
    res = run_cli("train", f"dataset.root={tiny_idx}", "trainer.max_epochs=2", "trainer.batch_size=64",
                  "optimizer.lr=0.01", "seed=1", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1
    run = runs[0]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "checkpoints" / "best.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert "test accuracy" in (run / "train.log").read_text()
    assert "test acc" in res.stdout + res.stderr


def test_cfg_job_prints_composed_config(tmp_path):
    res = run_cli("train", "model=mlp", "dataset=mnist", "--cfg", "job", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "_target_: cnnlab.models.mlp.MLP" in res.stdout and "name: mnist" in res.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_help_lists_groups(tmp_path):
    res = run_cli("train", "--help", cwd=tmp_path)
    assert res.returncode == 0
    for group in ("dataset", "model", "optimizer", "trainer"):
        assert f"{group}:" in res.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["model=lenett"],
            "Unknown model 'lenett'; choose one of: lenet, mlp, resnet18, simplecnn, timm, torchvision."
            " Did you mean 'lenet'?",
        ),
        (["model.dropuot=0.1", "model=mlp"], "Unknown config key 'model.dropuot'. Did you mean 'dropout'?"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs=abc"),
        (["optimizer.lr=0"], "optimizer.lr must be greater than 0, got 0.0."),
    ],
)
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_user_errors_are_one_line(tmp_path, tiny_idx, args, expected):
    res = run_cli("train", f"dataset.root={tiny_idx}", *args, cwd=tmp_path)
    assert res.returncode == 2
    assert expected in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_data_message(tmp_path):
    res = run_cli("train", f"dataset.root={tmp_path / 'empty'}", cwd=tmp_path)
    assert res.returncode == 2
    expected = f"cnnlab: error: dataset.root={tmp_path / 'empty'} does not hold the dataset fashion_mnist"
    assert f"{expected}: it does not exist" in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_command(tmp_path):
    res = run_cli("trian", cwd=tmp_path)
    assert res.returncode == 2 and "unknown command 'trian'" in res.stderr


def test_positional_words_become_named_overrides():
    from cnnlab.cli import positional_overrides

    assert positional_overrides(["augment", "run=x", "-m", "extra"], ["what"]) == [
        "what=augment", "run=x", "-m", "extra",
    ]  # fmt: skip
    assert positional_overrides(["a", "b"], ["what", "path"]) == ["what=a", "path=b"]
