"""The options airbench's recipe needed (issue 18), each general and tested on its own: per-group learning
rates (optimizer.bias_lr_mult), a run length in optimizer steps (trainer.max_steps), a whitening bias that
trains for the first epochs only (model.whiten_bias_epochs), BatchNorm momentum and a logit scale, flip +
translate test-time augmentation, and lookahead on the weights; then all of them together resume exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.build import build_optimizer
from cnnlab.engine.infer import view_log_probs
from cnnlab.engine.interrupt import Interrupted
from cnnlab.engine.lookahead import Lookahead
from cnnlab.engine.schedulers import build_scheduler
from cnnlab.engine.tta import parse_tta, tta_views
from cnnlab.errors import ConfigError
from cnnlab.models.simplecnn import SimpleCNN
from cnnlab.run.checkpoints import read_state
from cnnlab.train import Callback, train
from tests.test_resume import SignalAtStep, assert_same_run
from tests.test_train import read_metrics

SMALL = ("model=simplecnn", "model.channels=[8,16]", "trainer.precision=32", "trainer.report=false")


def cnn(**kwargs) -> SimpleCNN:
    torch.manual_seed(0)
    return SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[8, 16], **kwargs)


# --------------------------------------------------------------------------------- optimizer.bias_lr_mult
def test_bias_lr_mult_speeds_up_biases_and_norms_with_the_same_decay_step(make_cfg):
    model = cnn()
    cfg = make_cfg("optimizer=sgd", "optimizer.lr=0.1", "optimizer.weight_decay=0.01",
                   "optimizer.decay_bias_norm=true", "optimizer.bias_lr_mult=64")  # fmt: skip
    weights, vectors = build_optimizer(model, cfg.optimizer).param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in vectors["params"])
    assert weights["lr"] == 0.1 and vectors["lr"] == pytest.approx(6.4)
    assert weights["lr"] * weights["weight_decay"] == pytest.approx(vectors["lr"] * vectors["weight_decay"])
    same = build_optimizer(model, make_cfg("optimizer=sgd", "optimizer.lr=0.1").optimizer).param_groups
    assert len(same) == 1 and same[0]["lr"] == 0.1  # the default changes nothing


def test_onecycle_keeps_each_groups_multiple_of_the_learning_rate(make_cfg):
    optimizer = build_optimizer(cnn(), make_cfg("optimizer=sgd", "optimizer.bias_lr_mult=8").optimizer)
    schedule = build_scheduler(optimizer, name="onecycle", steps_per_epoch=10, max_epochs=2)
    for _ in range(7):
        optimizer.step()
        schedule.step_batch()
        low, high = (g["lr"] for g in optimizer.param_groups)
        assert high == pytest.approx(8 * low)


@pytest.mark.parametrize("value", ["0", "-2"])
def test_bias_lr_mult_must_be_positive(make_cfg, tmp_path, value):
    with pytest.raises(ConfigError, match=f"optimizer.bias_lr_mult must be greater than 0, got {value}"):
        train(make_cfg(f"optimizer.bias_lr_mult={value}"), tmp_path / "run")


# ------------------------------------------------------------------------------------ trainer.max_steps
class Steps(Callback):
    def __init__(self):
        self.lrs, self.epochs = [], []

    def on_step(self, run):
        self.lrs.append(run.optimizer.param_groups[0]["lr"])

    def on_epoch_end(self, run, row, value):
        self.epochs.append(run.metrics.global_step)


def test_max_steps_ends_the_run_inside_an_epoch_with_the_schedule_done(make_cfg, tmp_path):
    steps = Steps()  # 12 batches per epoch: 30 steps are 2.5 epochs
    summary = train(make_cfg("scheduler=onecycle", "trainer.max_epochs=5", "trainer.max_steps=30",
                             "trainer.report=false"), tmp_path / "run", callbacks=(steps,))  # fmt: skip
    assert steps.epochs == [12, 24, 30] and len(steps.lrs) == 30
    assert summary["stop_reason"] == "max_steps" and summary["epochs_run"] == 3
    assert steps.lrs[-1] < 1e-6 and max(steps.lrs) == pytest.approx(1e-3)  # onecycle spanned the 30 steps
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    longer = Steps()
    cfg = make_cfg("trainer.max_epochs=2", "trainer.max_steps=100", "trainer.report=false")
    train(cfg, tmp_path / "long", callbacks=(longer,))
    assert longer.epochs == [12, 24]  # max_epochs ends it first


def test_max_steps_must_be_positive(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.max_steps must be a positive number or null, got 0"):
        train(make_cfg("trainer.max_steps=0"), tmp_path / "run")


# ------------------------------------------------------------- model.whiten_bias_epochs, bn_momentum, logits
class WhiteningBias(Callback):
    def __init__(self):
        self.biases = []

    def on_epoch_end(self, run, row, value):
        self.biases.append(run.model.features[0].bias.detach().clone())


def test_whitening_bias_trains_only_its_epochs(make_cfg, tmp_path):
    seen = WhiteningBias()
    train(make_cfg(*SMALL, "model.whiten=2", "model.whiten_bias_epochs=1", "trainer.max_epochs=3"),
          tmp_path / "run", callbacks=(seen,))  # fmt: skip
    first, second, third = seen.biases
    assert first.abs().sum() > 0  # trained from zero in epoch 1
    assert torch.equal(second, first) and torch.equal(third, first)
    free = WhiteningBias()
    train(make_cfg(*SMALL, "model.whiten=2", "trainer.max_epochs=2"), tmp_path / "free", callbacks=(free,))
    assert not torch.equal(free.biases[1], free.biases[0])  # the default: it trains throughout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.whiten=2", "model.whiten_bias_epochs=-1"), "model.whiten_bias_epochs is a number of epochs"),
        (("model.whiten_bias_epochs=3",), "with model.whiten=0"),
        (("model.bn_momentum=0",), r"model.bn_momentum must be in \(0, 1\]"),
        (("model.bn_momentum=1.5",), r"model.bn_momentum must be in \(0, 1\]"),
        (("model.logit_scale=0",), "model.logit_scale must be greater than 0"),
    ],
)
def test_bad_model_recipe_values_are_one_clear_error(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(make_cfg("model=simplecnn", *overrides), tmp_path / "run")


def test_bn_momentum_and_logit_scale_change_what_they_say():
    base, tuned = cnn(), cnn(bn_momentum=0.4, logit_scale=1 / 9)
    norms = [m for m in tuned.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.4 for m in norms)
    assert all(m.momentum == 0.1 for m in base.modules() if isinstance(m, nn.BatchNorm2d))
    tuned.load_state_dict(base.state_dict())  # same weights: only the scale differs
    x = torch.randn(4, 1, 28, 28)
    base.eval(), tuned.eval()
    torch.testing.assert_close(tuned(x), base(x) / 9)


# ------------------------------------------------------------------------------- trainer.tta=flip_translate
def test_flip_translate_averages_six_weighted_views():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    views = tta_views("flip_translate", 4)
    assert len(views) == 6 and [v.weight for v in views] == [2, 2, 1, 1, 1, 1]
    down_right = F.pad(x, (1, 1, 1, 1))[..., 0:4, 0:4]
    torch.testing.assert_close(views[2](x), down_right)
    torch.testing.assert_close(views[3](x), down_right.flip(-1))
    torch.testing.assert_close(views[4](x), F.pad(x, (1, 1, 1, 1))[..., 2:6, 2:6])

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    identity = type("Identity", (), {"__call__": lambda self, b, train: b})()
    got = view_log_probs(model, x, pipeline=identity, device=torch.device("cpu"), precision="32", views=views)
    probs = [model(v(x)).softmax(1) for v in views]
    expected = (2 * probs[0] + 2 * probs[1] + sum(probs[2:])) / 8
    torch.testing.assert_close(got.exp(), expected)
    assert parse_tta("flip_translate") == "flip_translate"
    with pytest.raises(ConfigError, match="choose one of: null, flip, flip_translate, or a number of crops"):
        parse_tta("translate")


# ------------------------------------------------------------------------------------- trainer.lookahead
def test_lookahead_pulls_the_weights_to_a_slow_copy_every_k_steps():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    la = Lookahead(model, every=2, alpha=0.5, power=0.0, start_step=0, total_steps=10)
    values = []
    for step in range(1, 7):
        with torch.no_grad():
            model.weight += 1.0  # what an optimizer step would do
        la.step(step)
        values.append(model.weight[0, 0].item())
    # step 2 starts the slow copy at 2; step 4: slow = 2 + 0.5 * (4 - 2) = 3; step 6: 3 + 0.5 * (5 - 3) = 4
    assert values == [1.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    ramp = Lookahead(model, every=1, alpha=0.2, power=3.0, start_step=0, total_steps=10)
    assert ramp.current_alpha(0) == 1.0 and ramp.current_alpha(10) == pytest.approx(0.2)
    assert ramp.current_alpha(5) == pytest.approx(1 - 0.8 * 0.125)


@pytest.mark.parametrize(
    ("override", "message"),
    [("trainer.lookahead.every=-1", "trainer.lookahead.every is a number of optimizer steps"),
     ("trainer.lookahead.alpha=0", r"trainer.lookahead.alpha must be in \(0, 1\]"),
     ("trainer.lookahead.power=-1", "trainer.lookahead.power and start_epoch must be 0 or more")],
)  # fmt: skip
def test_bad_lookahead_values_are_one_clear_error(make_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train(make_cfg("trainer.lookahead.every=5", override), tmp_path / "run")


# -------------------------------------------------------------------------------------- all of them at once
RECIPE = (*SMALL, "model.whiten=2", "model.whiten_bias_epochs=1", "model.bn_momentum=0.4",
          "model.logit_scale=0.5", "optimizer=sgd", "optimizer.nesterov=true", "optimizer.lr=0.05",
          "optimizer.weight_decay=0.01", "optimizer.decay_bias_norm=true", "optimizer.bias_lr_mult=4",
          "scheduler=onecycle", "trainer.max_epochs=4", "trainer.max_steps=30", "trainer.lookahead.every=2",
          "trainer.lookahead.alpha=0.5", "trainer.lookahead.power=3", "trainer.lookahead.start_epoch=1",
          "trainer.tta=flip_translate")  # fmt: skip


def test_the_airbench_options_together_learn_and_resume_exactly(make_cfg, tmp_path):
    whole = train(make_cfg(*RECIPE), tmp_path / "whole")
    assert whole["stop_reason"] == "max_steps" and whole["test_acc"] > 0.5
    assert read_state(tmp_path / "whole" / "checkpoints" / "last.pt")["lookahead"]["slow"] is not None
    with pytest.raises(Interrupted):  # epoch 3 (cut to 6 steps), after its 3rd step; lookahead running
        train(make_cfg(*RECIPE), tmp_path / "int", callbacks=(SignalAtStep(27),))
    assert read_state(tmp_path / "int" / "checkpoints" / "last.pt")["partial"]["step"] == 3
    train(make_cfg(*RECIPE, f"resume={tmp_path / 'int'}"), tmp_path / "int")
    assert_same_run(tmp_path / "whole", tmp_path / "int")
    assert not math.isnan(whole["test_loss"])
