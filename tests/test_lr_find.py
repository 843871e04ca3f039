"""``cnnlab lr_find``: the exponential ramp, the suggestion rules, the range test on a run's own parts,
its options (each changes what it says), their one-line errors, and that only the plot is written."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from cnnlab.commands.lr_find import main, prepare
from cnnlab.config import register_configs
from cnnlab.data.loader import BatchPipeline, TensorLoader
from cnnlab.engine.loop import StepContext
from cnnlab.engine.lr_finder import ExponentialRamp, RangeTest, check_range, range_test, suggest
from cnnlab.errors import ConfigError
from tests.conftest import run_cli

OPTIONS = {
    "start_lr": 1e-7,
    "end_lr": 10.0,
    "steps": 200,
    "diverge": 4.0,
    "smoothing": 0.98,
    "rule": "steepest",
}
TINY = ("trainer.device=cpu", "trainer.precision=32", "trainer.threads=1", "trainer.batch_size=32")


@pytest.fixture
def compose_lr_find(tiny_idx):
    register_configs()
    GlobalHydra.instance().clear()
    initialize_config_module("cnnlab.conf", version_base="1.3")
    yield lambda *overrides: compose("lr_find", overrides=[f"dataset.root={tiny_idx}", *TINY, *overrides])
    GlobalHydra.instance().clear()


def test_the_ramp_is_exponential_from_start_to_end_on_every_group():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=1.0)
    ramp = ExponentialRamp(optimizer, 1e-4, 1.0, 5)
    seen = []
    for _ in range(5):
        seen.append([g["lr"] for g in optimizer.param_groups])
        ramp.step_batch()
    assert [head for head, _ in seen] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert [backbone for _, backbone in seen] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])


def curve(lrs: np.ndarray) -> RangeTest:
    """A clean range test: flat at 2.3, falls fastest at lr 1e-3, lowest near 3e-2, then climbs."""
    x = np.log10(lrs)
    loss = 2.3 - 2.0 / (1 + np.exp(-3 * (x + 3))) + 0.5 * np.maximum(x + 1.5, 0) ** 2
    return RangeTest(lrs=list(lrs), losses=list(loss), smoothed=list(loss))


def test_each_rule_reads_its_point_off_the_curve():
    test = curve(np.logspace(-7, 1, 161))
    lowest = test.lrs[int(np.argmin(test.smoothed))]
    assert suggest(test, "steepest") == pytest.approx(1e-3, rel=0.13)
    assert suggest(test, "minimum") == pytest.approx(lowest / 10)
    valley = suggest(test, "valley")  # halfway along the longest descent (which starts at the flat part)
    assert (
        test.lrs[0] < valley < 1e-3
        and suggest(test, "valley") == test.lrs[int(np.argmin(test.smoothed)) // 2]
    )


def test_a_diverged_point_does_not_count_and_too_few_points_are_refused():
    test = curve(np.logspace(-7, 1, 161))
    test.smoothed[-1], test.diverged = -5.0, True  # e.g. a NaN-turned loss that stopped the test
    assert suggest(test, "minimum") == pytest.approx(test.lrs[int(np.argmin(test.smoothed[:-1]))] / 10)
    short = RangeTest(lrs=[1e-3] * 5, losses=[1.0] * 5, smoothed=[1.0] * 5, diverged=True)
    with pytest.raises(ValueError, match="only 4 steps before the loss diverged"):
        suggest(short, "steepest")


def loader_and_context(n: int = 256, batch: int = 32, accumulate: int = 1):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=g)
    x = (y[:, None, None, None] * 100 + torch.randint(0, 150, (n, 1, 4, 4), generator=g)).to(torch.uint8)
    y = torch.where(torch.rand(n, generator=g) < 0.1, 1 - y, y)  # a tenth mislabelled: not separable
    loader = TensorLoader(x, y, batch, shuffle=True)
    ctx = StepContext(device=torch.device("cpu"), precision="32", pipeline=BatchPipeline([0.5], [0.5], "cpu"),
                      criterion=nn.CrossEntropyLoss(), accumulate=accumulate)  # fmt: skip
    return loader, ctx


def test_the_range_test_learns_then_stops_when_the_loss_diverges():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    nn.init.zeros_(model[1].weight), nn.init.zeros_(model[1].bias)  # starts at chance: loss ln 2
    loader, ctx = loader_and_context()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    test = range_test(model, loader, optimizer, ctx, start_lr=1e-4, end_lr=1e6, steps=100)
    assert test.diverged and 10 < len(test.lrs) < 100  # 8 batches per epoch: it went on over epochs
    assert test.lrs == pytest.approx(list(np.logspace(-4, 6, 100)[: len(test.lrs)]))
    assert test.smoothed[0] == pytest.approx(math.log(2), abs=0.01)
    assert min(test.smoothed) < 0.85 * test.smoothed[0]  # it learnt before it diverged
    assert test.smoothed[-1] > 4 * min(test.smoothed[:-1]) or not math.isfinite(test.smoothed[-1])


def test_accumulation_takes_that_many_batches_per_step():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    loader, ctx = loader_and_context(accumulate=2)
    drawn = []
    real = loader.batches

    def counting(start=0):
        for batch in real(start):
            drawn.append(len(batch[1]))
            yield batch

    loader.batches = counting
    test = range_test(model, loader, torch.optim.SGD(model.parameters()), ctx, start_lr=1e-5, end_lr=1e-4,
                      steps=10)  # fmt: skip
    assert len(test.lrs) == 10 and len(drawn) == 20


@pytest.mark.parametrize(("options", "message"), [
    ({"start_lr": 0.0}, "lr_find.start_lr must be greater than 0, got 0.0."),
    ({"start_lr": 1.0, "end_lr": 1.0}, "lr_find.end_lr (1.0) must be greater than lr_find.start_lr (1.0)."),
    ({"steps": 9}, "lr_find.steps must be at least 10, got 9."),
    ({"diverge": 1.0}, "lr_find.diverge must be greater than 1 (times the lowest loss), got 1.0."),
    ({"smoothing": 1.0}, "lr_find.smoothing must be in [0, 1), got 1.0."),
    ({"rule": "valey"}, "Unknown lr_find.rule 'valey'; choose one of: steepest, valley, minimum."),
])  # fmt: skip
def test_bad_values_are_one_line(options, message):
    with pytest.raises(ConfigError) as err:
        check_range(**{**OPTIONS, **options})
    assert str(err.value) == message


def test_options_change_what_they_say_and_nothing_else(compose_lr_find, tmp_path, capsys):
    first = main(compose_lr_find("lr_find.steps=30", f"lr_find.out={tmp_path / 'a.png'}"))
    again = main(
        compose_lr_find("lr_find.steps=30", "lr_find.rule=minimum", f"lr_find.out={tmp_path / 'b.png'}")
    )
    assert first["suggestions"] == again["suggestions"]  # the same curve: the rule only reads it
    assert (first["suggested"], again["suggested"]) == (first["suggestions"]["steepest"],
                                                        first["suggestions"]["minimum"])  # fmt: skip
    assert first["steps"] == 30 and (tmp_path / "a.png").stat().st_size > 10_000
    lower = main(
        compose_lr_find("lr_find.steps=12", "lr_find.end_lr=1e-3", f"lr_find.out={tmp_path / 'c.png'}")
    )
    assert lower["steps"] == 12 and max(lower["suggestions"].values()) <= 1e-3
    out = capsys.readouterr().out
    assert "suggested lr: " in out and "(steepest; valley " in out and "cnnlab train optimizer.lr=" in out


def test_onecycle_suggests_its_peak(compose_lr_find, tmp_path, capsys):
    main(compose_lr_find("scheduler=onecycle", "lr_find.steps=12", f"lr_find.out={tmp_path / 'a.png'}"))
    assert "cnnlab train scheduler.options.max_lr=" in capsys.readouterr().out


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_the_cli_writes_only_the_plot(tiny_idx, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli("lr_find", f"dataset.root={tiny_idx}", *TINY, "lr_find.steps=20", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in work.iterdir()] == ["lr_find.png"]
    assert proc.stdout.splitlines()[0].startswith("lr_find: 20 steps, ")
    assert proc.stdout.splitlines()[1].startswith("suggested lr: ")


@pytest.mark.parametrize(("args", "message"), [
    (["lr_find.steps=5"], "lr_find.steps must be at least 10, got 5."),
    (["lr_find.start_lr=1", "lr_find.end_lr=0.1"], "lr_find.end_lr (0.1) must be greater than lr_find.start"),
    (["lr_find.rule=fast"], "Unknown lr_find.rule 'fast'; choose one of: steepest, valley, minimum."),
    (["lr_find.out="], "lr_find.out is empty; give the PNG's path"),
    (["lr_find.out=."], "lr_find.out '.' is a folder; give the PNG's path, e.g. ./lr_find.png."),
    (["optimizer.lr=-1"], "optimizer.lr must be greater than 0, got -1"),
    (["loss=focal", "loss.gamma=-1"], "loss.gamma must be 0 or more, got -1"),
    (["resume=outputs/x"], "cnnlab lr_find starts no run and continues none; drop resume=."),
])  # fmt: skip
def test_every_option_is_checked_before_any_data_is_read(compose_lr_find, tmp_path, args, message):
    """``dataset.root`` does not exist: the options fail first, and nothing is written."""
    cfg = compose_lr_find(
        f"dataset.root={tmp_path / 'missing'}", f"lr_find.out={tmp_path / 'o' / 'x.png'}", *args
    )
    with pytest.raises(ConfigError) as err:
        main(cfg)
    assert str(err.value).startswith(message)
    assert not (tmp_path / "o").exists()


def test_a_sweep_is_refused():
    with pytest.raises(ConfigError, match="cnnlab lr_find runs one range test; drop -m"):
        prepare(["-m", "optimizer.lr=0.1,0.2"])
    assert prepare(["optimizer.lr=0.1"])[0] == ["optimizer.lr=0.1"]


@pytest.mark.parametrize(("args", "message"), [
    (["lr_find.steps=5"], "lr_find.steps must be at least 10, got 5."),
    (["lr_find.stepz=50"], "Unknown config key 'lr_find.stepz'. Did you mean 'steps'?"),
])  # fmt: skip
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_cli_errors_are_one_line(tmp_path, args, message):
    proc = run_cli("lr_find", f"dataset.root={tmp_path / 'missing'}", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"cnnlab: error: {message}"]
    assert list(tmp_path.iterdir()) == []
