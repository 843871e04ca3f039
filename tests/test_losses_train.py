"""The loss group through ``train()``: each option changes the trained weights as it says and nothing else."""

from __future__ import annotations

import pytest
import torch

from cnnlab.run.checkpoints import read_state
from cnnlab.train import train
from tests.conftest import run_cli
from tests.test_train import read_metrics, without_timing

EXACT = ("trainer.precision=32", "trainer.threads=1", "trainer.max_epochs=2", "trainer.report=false")


def weights(run):
    return read_state(run / "checkpoints" / "last.pt")["model"]


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def test_focal_with_gamma_0_trains_exactly_as_cross_entropy(make_cfg, tmp_path):
    train(make_cfg(*EXACT), tmp_path / "ce")
    train(make_cfg(*EXACT, "loss=focal", "loss.gamma=0"), tmp_path / "focal0")
    train(make_cfg(*EXACT, "loss=focal"), tmp_path / "focal2")
    assert same_weights(tmp_path / "ce", tmp_path / "focal0")
    assert without_timing(read_metrics(tmp_path / "ce")) == without_timing(read_metrics(tmp_path / "focal0"))
    assert not same_weights(tmp_path / "ce", tmp_path / "focal2")  # gamma 2 is another loss


def test_class_weights_change_the_trained_weights(make_cfg, tmp_path):
    train(make_cfg(*EXACT), tmp_path / "plain")
    train(make_cfg(*EXACT, "loss.class_weights=[1,1,1,5,1,1,1,1,1,1]"), tmp_path / "listed")
    train(make_cfg(*EXACT, "loss.class_weights=auto"), tmp_path / "auto")
    assert not same_weights(tmp_path / "plain", tmp_path / "listed")
    # the tiny split is balanced (36 training images per class): auto weights are all 1
    assert same_weights(tmp_path / "plain", tmp_path / "auto")
    log = (tmp_path / "auto" / "train.log").read_text()
    assert "class weights (inverse frequency): 1, 1, 1, 1, 1, 1, 1, 1, 1, 1" in log


def test_deprecated_trainer_label_smoothing_trains_as_the_loss_option(make_cfg, tmp_path):
    train(make_cfg(*EXACT, "loss.label_smoothing=0.1"), tmp_path / "new")
    train(make_cfg(*EXACT, "trainer.label_smoothing=0.1"), tmp_path / "old")
    train(make_cfg(*EXACT), tmp_path / "none")
    assert same_weights(tmp_path / "new", tmp_path / "old")
    assert not same_weights(tmp_path / "new", tmp_path / "none")
    log = (tmp_path / "old" / "train.log").read_text()
    assert log.count("trainer.label_smoothing is deprecated; use loss.label_smoothing=0.1 instead.") == 1


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_deprecated_key_from_the_cli_warns_once_and_a_conflict_is_one_line(tiny_idx, tmp_path):
    base = (f"dataset.root={tiny_idx}", "trainer.device=cpu", "trainer.tensorboard=false",
            "trainer.max_epochs=1", "trainer.report=false", "trainer.progress=plain")  # fmt: skip
    proc = run_cli("train", *base, "trainer.label_smoothing=0.1", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("trainer.label_smoothing is deprecated") == 1
    proc = run_cli("train", *base, "trainer.label_smoothing=0.1", "loss.label_smoothing=0.2",
                   "hydra.run.dir=clash", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cnnlab: error: trainer.label_smoothing=0.1 and loss.label_smoothing=0.2 disagree; set only "
        "loss.label_smoothing (trainer.label_smoothing is deprecated)."
    ]
    assert not (tmp_path / "clash").exists()
