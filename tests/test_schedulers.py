import io
import math

import pytest
import torch

from cnnlab.engine.schedulers import OPTIONS, build_scheduler, check_schedule
from cnnlab.errors import ConfigError


def make_optimizer(lr=0.1, momentum=0.9):
    model = torch.nn.Linear(2, 1)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def lrs(schedule, steps):
    """The lr used by each of ``steps`` optimizer steps (read before stepping)."""
    out = []
    for _ in range(steps):
        out.append(schedule.lr)
        schedule.optimizer.step()
        schedule.step_batch()
    return out


def epoch_lrs(schedule, epochs, steps_per_epoch, metrics=None):
    """The lr at the start of each epoch."""
    out = []
    for epoch in range(epochs):
        out.append(schedule.lr)
        lrs(schedule, steps_per_epoch)
        schedule.step_epoch(None if metrics is None else metrics[epoch])
    return out


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_schedule_builds_and_steps(name):
    schedule = build_scheduler(make_optimizer(), name=name, steps_per_epoch=3, max_epochs=4)
    seen = epoch_lrs(schedule, 4, 3, metrics=[0.5] * 4)
    assert all(math.isfinite(lr) and lr > 0 for lr in seen)
    assert seen[0] == pytest.approx(0.1 / 25 if name == "onecycle" else 0.1)


def test_warmup_then_cosine_matches_hand_computed_curve():
    # 2 steps/epoch, 6 epochs: 4 warmup steps from 0.01 to 0.1, then cosine to 0 over the other 8 steps.
    schedule = build_scheduler(
        make_optimizer(), name="cosine", steps_per_epoch=2, max_epochs=6, warmup_epochs=2, min_lr=0.0
    )
    warmup = [0.01, 0.0325, 0.055, 0.0775]
    cosine = [0.05 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert cosine[:3] == pytest.approx([0.1, 0.0961940, 0.0853553], abs=1e-7)
    assert lrs(schedule, 12) == pytest.approx(warmup + cosine, abs=1e-9)


def test_cosine_min_lr_and_warmup_steps():
    schedule = build_scheduler(
        make_optimizer(), name="cosine", steps_per_epoch=5, max_epochs=2, warmup_steps=2, min_lr=0.01
    )
    seen = lrs(schedule, 10)
    assert seen[:3] == pytest.approx([0.01, 0.055, 0.1])
    assert seen[-1] == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi * 7 / 8)) / 2)


def test_step_multistep_exponential_exact_values():
    step = build_scheduler(
        make_optimizer(), name="step", steps_per_epoch=2, max_epochs=6, step_size=2, gamma=0.5
    )
    assert epoch_lrs(step, 6, 2) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    multi = build_scheduler(
        make_optimizer(), name="multistep", steps_per_epoch=2, max_epochs=6, milestones=[1, 4], gamma=0.1
    )
    assert epoch_lrs(multi, 6, 2) == pytest.approx([0.1, 0.01, 0.01, 0.01, 0.001, 0.001])
    expo = build_scheduler(make_optimizer(), name="exponential", steps_per_epoch=4, max_epochs=4, gamma=0.5)
    assert epoch_lrs(expo, 4, 4) == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_multistep_defaults_to_half_and_three_quarters():
    multi = build_scheduler(make_optimizer(), name="multistep", steps_per_epoch=1, max_epochs=8)
    assert epoch_lrs(multi, 8, 1) == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)


def test_onecycle_peaks_at_max_lr_and_ends_low():
    schedule = build_scheduler(
        make_optimizer(lr=0.01), name="onecycle", steps_per_epoch=10, max_epochs=2, max_lr=0.5, pct_start=0.25
    )
    seen = lrs(schedule, 20)
    assert max(seen) == pytest.approx(0.5)
    assert seen.index(max(seen)) == 4  # the peak is at step pct_start * total - 1
    assert seen[0] == pytest.approx(0.5 / 25)
    assert seen[-1] < seen[0]


def test_onecycle_max_lr_defaults_to_optimizer_lr_and_rejects_warmup():
    schedule = build_scheduler(make_optimizer(lr=0.2), name="onecycle", steps_per_epoch=5, max_epochs=2)
    assert max(lrs(schedule, 10)) == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="pct_start"):
        build_scheduler(make_optimizer(), name="onecycle", steps_per_epoch=5, max_epochs=2, warmup_epochs=1)


def test_plateau_reduces_after_patience_in_max_mode():
    schedule = build_scheduler(
        make_optimizer(), name="plateau", steps_per_epoch=1, max_epochs=6, mode="max", patience=1, factor=0.5
    )
    # The first 0.5 sets the best; the second is one bad epoch (= patience); the third halves the lr.
    seen = epoch_lrs(schedule, 5, 1, metrics=[0.5, 0.5, 0.5, 0.9, 0.9])
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05])
    assert schedule.lr == pytest.approx(0.05)


def test_plateau_relative_threshold_and_min_mode():
    schedule = build_scheduler(
        make_optimizer(),
        name="plateau",
        steps_per_epoch=1,
        max_epochs=4,
        mode="min",
        patience=0,
        threshold=0.1,
    )
    # 0.95 is not below 1.0 * (1 - 0.1), so it counts as no improvement.
    epoch_lrs(schedule, 2, 1, metrics=[1.0, 0.95])
    assert schedule.lr == pytest.approx(0.01)


def test_plateau_waits_for_warmup():
    schedule = build_scheduler(
        make_optimizer(), name="plateau", steps_per_epoch=2, max_epochs=6, warmup_epochs=2, patience=0
    )
    seen = epoch_lrs(schedule, 4, 2, metrics=[0.1, 0.1, 0.1, 0.1])
    assert seen == pytest.approx([0.01, 0.055, 0.1, 0.01])


@pytest.mark.parametrize("name", ["cosine", "onecycle", "step", "plateau"])
def test_state_dict_round_trip_resumes_the_same_curve(name):
    extra = {"patience": 0} if name == "plateau" else {}
    warmup = 0 if name == "onecycle" else 1

    def build(opt):
        return build_scheduler(opt, name=name, steps_per_epoch=3, max_epochs=5, warmup_epochs=warmup, **extra)

    metrics = [0.5, 0.4, 0.6, 0.3, 0.2]
    full = build(make_optimizer())
    expected = [*epoch_lrs(full, 5, 3, metrics), full.lr]

    first_opt = make_optimizer()
    first = build(first_opt)
    seen = epoch_lrs(first, 2, 3, metrics[:2])
    buffer = io.BytesIO()
    torch.save({"optimizer": first_opt.state_dict(), "scheduler": first.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed_opt = make_optimizer()
    resumed = build(resumed_opt)
    resumed_opt.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["scheduler"])
    seen += [*epoch_lrs(resumed, 3, 3, metrics[2:]), resumed.lr]
    assert seen == pytest.approx(expected, abs=1e-12)


def test_holds_the_last_lr_past_the_planned_run():
    schedule = build_scheduler(make_optimizer(), name="onecycle", steps_per_epoch=2, max_epochs=2)
    seen = lrs(schedule, 6)
    assert seen[3] == seen[4] == seen[5]


def test_unknown_name_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="choose one of: none, step, multistep"):
        build_scheduler(make_optimizer(), name="cosin", steps_per_epoch=1, max_epochs=1)
    with pytest.raises(ConfigError, match=r"eta_min.*valid: min_lr"):
        build_scheduler(make_optimizer(), name="cosine", steps_per_epoch=1, max_epochs=1, eta_min=0.0)
    with pytest.raises(ConfigError, match="not both"):
        build_scheduler(
            make_optimizer(), name="cosine", steps_per_epoch=2, max_epochs=4, warmup_epochs=1, warmup_steps=2
        )
    with pytest.raises(ConfigError, match="shorter than the run"):
        build_scheduler(make_optimizer(), name="cosine", steps_per_epoch=2, max_epochs=2, warmup_epochs=2)
    with pytest.raises(ConfigError, match="step_size must be a finite number greater than 0, got 0"):
        build_scheduler(make_optimizer(), name="step", steps_per_epoch=2, max_epochs=2, step_size=0)
    with pytest.raises(ConfigError, match="milestones must be increasing"):
        build_scheduler(
            make_optimizer(), name="multistep", steps_per_epoch=2, max_epochs=2, milestones=[3, 1]
        )
    with pytest.raises(ConfigError, match=r"pct_start must be a finite number in \(0, 1\), got 1.5"):
        build_scheduler(make_optimizer(), name="onecycle", steps_per_epoch=2, max_epochs=2, pct_start=1.5)
    with pytest.raises(ConfigError, match=r"gamma must be a finite number greater than 0, got nan; e.g. "):
        check_schedule("step", {"gamma": float("nan")})
