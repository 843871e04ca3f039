"""Fine-tuning through ``train()``: cnnlab's own models start from a weights file, the frozen first epoch
leaves the backbone (BatchNorm statistics included) as the file has it, everything trains after it, a
run resumes exactly across the boundary, and the backbone's learning rate keeps its ratio under every
schedule."""

from __future__ import annotations

import pytest
import torch

from cnnlab.errors import CheckpointError
from cnnlab.models.lenet import LeNet
from cnnlab.models.simplecnn import SimpleCNN
from cnnlab.models.whiten import fit_to_data
from cnnlab.run.checkpoints import read_state
from cnnlab.train import Callback, train
from tests.test_resume import KillAfterEpoch, Killed, assert_same_run

EXACT = ("trainer.precision=32", "trainer.threads=1", "trainer.report=false")


@pytest.fixture
def pretrained(tmp_path) -> str:
    """A SimpleCNN (BatchNorm in every stage) 'pretrained' elsewhere: random weights and BN statistics
    far from a fresh network's, saved as a plain state dict."""
    torch.manual_seed(1)
    model = SimpleCNN(in_channels=1, num_classes=10, image_size=28)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    path = tmp_path / "pretrained.pt"
    torch.save(model.state_dict(), path)
    return str(path)


class Snapshots(Callback):
    """The model's state after each epoch."""

    def __init__(self):
        self.states: dict[int, dict] = {}

    def on_epoch_end(self, run, row, value):
        self.states[row["epoch"]] = {k: v.clone() for k, v in run.model.state_dict().items()}


def test_own_models_start_from_a_file(pretrained, tmp_path):
    file = torch.load(pretrained, weights_only=True)
    model = SimpleCNN(in_channels=1, num_classes=10, image_size=28, weights=pretrained)
    assert all(torch.equal(v, file[k]) for k, v in model.state_dict().items())
    assert model.fresh_parameters == ()
    five = SimpleCNN(in_channels=3, num_classes=5, image_size=28, weights=pretrained)  # RGB, 5 classes
    assert five.fresh_parameters == ("classifier.weight", "classifier.bias")
    assert torch.allclose(five.features[0].weight, file["features.0.weight"].expand(-1, 3, -1, -1) / 3)
    with pytest.raises(
        CheckpointError, match=r"do not fit lenet: \d+ keys differ, e\.g\. features\.2\.weight \(unexpected\)"
    ):
        LeNet(in_channels=1, num_classes=10, image_size=28, weights=pretrained)


def test_a_loaded_whitening_layer_is_not_fitted_again(tmp_path):
    source = SimpleCNN(in_channels=1, num_classes=10, image_size=28, whiten=2)
    fit_to_data(source, torch.randint(0, 255, (50, 1, 28, 28), dtype=torch.uint8), lambda x: x / 255)
    torch.save(source.state_dict(), tmp_path / "whitened.pt")
    model = SimpleCNN(
        in_channels=1, num_classes=10, image_size=28, whiten=2, weights=str(tmp_path / "whitened.pt")
    )
    fit_to_data(model, torch.zeros(50, 1, 28, 28, dtype=torch.uint8), lambda x: x / 255)  # other data
    assert torch.equal(model.features[0].weight, source.features[0].weight)


def test_an_earlier_runs_checkpoint_starts_a_lenet(trained_run, make_cfg, tmp_path):
    best = trained_run / "checkpoints" / "best.pt"
    snap = Snapshots()
    train(make_cfg("model=lenet", f"model.weights={best}", "trainer.max_epochs=1", "optimizer.lr=1e-12",
                   *EXACT), tmp_path / "again", callbacks=(snap,))  # fmt: skip
    start = read_state(best)["model"]
    assert all(torch.allclose(v, start[k]) for k, v in snap.states[1].items())


def test_frozen_first_epoch_then_everything_trains(make_cfg, pretrained, tmp_path):
    snap = Snapshots()
    cfg = make_cfg("model=simplecnn", f"model.weights={pretrained}", "trainer.freeze_epochs=1",
                   "trainer.max_epochs=2", "trainer.patience=null", *EXACT)  # fmt: skip
    train(cfg, tmp_path / "run", callbacks=(snap,))
    file = torch.load(pretrained, weights_only=True)
    head = {"classifier.weight", "classifier.bias"}
    after1, after2 = snap.states[1], snap.states[2]
    for key, value in file.items():
        if key in head:
            assert not torch.equal(after1[key], value), f"{key}: the head trains in the frozen epoch"
        else:  # convolutions, BatchNorm weights and running statistics, num_batches_tracked
            assert torch.equal(after1[key], value), f"{key} changed while frozen"
    changed = {k for k, v in file.items() if not torch.equal(after2[k], after1[k])}
    assert {
        "features.0.weight",
        "features.2.weight",
        "features.2.running_mean",
        "features.2.running_var",
    } <= changed
    assert head <= changed


def test_resume_across_the_freeze_boundary_is_exact(make_cfg, pretrained, tmp_path):
    recipe = ("model=simplecnn", f"model.weights={pretrained}", "trainer.freeze_epochs=1",
              "trainer.max_epochs=3", "trainer.patience=null", "optimizer.backbone_lr_mult=0.5",
              "scheduler=cosine", *EXACT)  # fmt: skip
    train(make_cfg(*recipe), tmp_path / "whole")
    with pytest.raises(Killed):
        train(make_cfg(*recipe), tmp_path / "killed", callbacks=(KillAfterEpoch(1),))
    train(make_cfg(*recipe, f"resume={tmp_path / 'killed'}"), tmp_path / "killed")
    assert_same_run(tmp_path / "whole", tmp_path / "killed")


class GroupRates(Callback):
    """The learning rate of every optimizer parameter group after each step and each epoch."""

    def __init__(self):
        self.steps: list[list[float]] = []

    def on_step(self, run):
        self.steps.append([g["lr"] for g in run.optimizer.param_groups])

    def on_epoch_end(self, run, row, value):  # after the epoch's schedule step (plateau's)
        self.on_step(run)


@pytest.mark.parametrize("schedule", [
    ("scheduler=onecycle",),
    ("scheduler=cosine", "scheduler.warmup_steps=5"),
    ("scheduler=step", "scheduler.options.step_size=1"),
    ("scheduler=plateau", "scheduler.options.patience=0", "scheduler.options.threshold=10"),
])  # fmt: skip
def test_backbone_lr_mult_keeps_its_ratio_under_every_schedule(make_cfg, pretrained, tmp_path, schedule):
    rates = GroupRates()
    cfg = make_cfg("model=simplecnn", f"model.weights={pretrained}", "optimizer.backbone_lr_mult=0.1",
                   "optimizer.weight_decay=1e-4", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                   *schedule, *EXACT)  # fmt: skip
    run = train(cfg, tmp_path / "run", callbacks=(rates,))
    assert run["epochs_run"] == 2
    assert len(rates.steps) == 10 and all(len(lrs) == 4 for lrs in rates.steps)  # head / backbone x decay
    for head_decay, head_plain, backbone_decay, backbone_plain in rates.steps:
        assert head_decay == head_plain and backbone_decay == backbone_plain
        assert backbone_decay == pytest.approx(0.1 * head_decay, rel=1e-9)
    assert len({round(lrs[0], 12) for lrs in rates.steps}) > 1, "the schedule moves the rate"
