"""Features that compose: every pair of training features trains together, stops mid-epoch on a signal,
resumes to exactly the run that was never stopped, and reports its best value and test accuracy as
metrics.csv and ``cnnlab evaluate`` do.

The cases are a covering array (every pair of two features' settings in at least one case, far fewer
cases than the full product), made by :func:`pairwise` below. Each case trains three tiny runs (whole,
stopped, resumed), so all are marked slow; the DDP cases (two gloo processes under torchrun) most of all.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cnnlab.engine.interrupt import Interrupted
from tests.test_resume import SignalAtStep, assert_same_run
from tests.test_train import read_metrics

BATCHES = 4  # training batches per epoch (trainer.limit_train_batches)
FACTORS: dict[str, list[tuple[str, ...]]] = {
    "ema": [(), ("trainer.ema=0.9",)],
    "swa": [(), ("trainer.swa_start=2",)],
    "pseudo_label": [(), ("trainer.pseudo_label.data=test", "trainer.pseudo_label.threshold=0.2",
                          "trainer.pseudo_label.start_epoch=1", "trainer.pseudo_label.rounds=2")],
    "adversarial": [(), ("augmentation.adversarial.method=pgd", "augmentation.adversarial.steps=2")],
    "lookahead": [(), ("trainer.lookahead.every=2",)],
    "freeze": [(), ("model=simplecnn", "model.weights={pretrained}", "trainer.freeze_epochs=1")],
    "accumulate": [(), ("trainer.accumulate=2",)],
    "mix": [(), ("augmentation.mixup_alpha=0.4",), ("augmentation.cutmix_alpha=1.0",)],
    "monitor": [(), ("trainer.monitor=val_loss", "trainer.mode=min"), ("trainer.monitor=val_macro_f1",)],
    "sampler": [(), ("dataset.sampler=balanced",)],
    "folds": [(), ("dataset.folds=3", "dataset.fold=1")],
    "max_steps": [(), ("trainer.max_steps={max_steps}",)],
    "ddp": [(), ("ddp",)],
}  # fmt: skip
BASE = ("model=lenet", "trainer.precision=32", "trainer.threads=1", "trainer.max_epochs=3",
        f"trainer.limit_train_batches={BATCHES}", "trainer.report=false",
        "trainer.tensorboard=false")  # fmt: skip


def pair(f: int, a: int, g: int, b: int) -> tuple[int, int, int, int]:
    """Setting ``a`` of factor ``f`` with setting ``b`` of factor ``g``, the lower factor first."""
    return (f, a, g, b) if f < g else (g, b, f, a)


def pairwise(levels: list[int]) -> list[tuple[int, ...]]:
    """A covering array of strength 2 for factors with ``levels[i]`` settings: rows of setting indices
    in which every pair of settings of every two factors appears at least once. Greedy and deterministic
    (in the manner of AETG): a candidate row starts from one uncovered pair and gives every other factor
    the setting that covers the most uncovered pairs with those chosen so far; of the candidates from
    every uncovered pair, the row covering the most is kept."""
    factors = range(len(levels))
    uncovered = {(f, a, g, b) for f, g in itertools.combinations(factors, 2)
                 for a in range(levels[f]) for b in range(levels[g])}  # fmt: skip

    def covers(row: tuple[int, ...]) -> set:
        return {(f, row[f], g, row[g]) for f, g in itertools.combinations(factors, 2)} & uncovered

    def grow(f: int, a: int, g: int, b: int) -> tuple[int, ...]:
        row = {f: a, g: b}
        for h in factors:
            if h not in row:
                gain = [sum(pair(h, v, k, row[k]) in uncovered for k in row) for v in range(levels[h])]
                row[h] = max(range(levels[h]), key=lambda v: (gain[v], -v))
        return tuple(row[h] for h in factors)

    rows = []
    while uncovered:
        best = max((grow(*p) for p in sorted(uncovered)), key=lambda row: len(covers(row)))
        uncovered -= covers(best)
        rows.append(best)
    return rows


def cases() -> list[dict[str, int]]:
    names = list(FACTORS)
    return [dict(zip(names, row, strict=True)) for row in pairwise([len(v) for v in FACTORS.values()])]


def test_the_cases_cover_every_pair_in_few_rows():
    rows = cases()
    names = list(FACTORS)
    for f, g in itertools.combinations(names, 2):
        seen = {(r[f], r[g]) for r in rows}
        assert seen == set(itertools.product(range(len(FACTORS[f])), range(len(FACTORS[g])))), (f, g)
    assert len(rows) <= 13  # the full product is 3 * 3 * 3 * 2**10 = 27,648 runs


def case_id(case: dict[str, int]) -> str:
    on = [f"{name}{'' if len(FACTORS[name]) == 2 else case[name]}" for name in FACTORS if case[name]]
    return "+".join(on) or "plain"


def overrides(case: dict[str, int], pretrained: str) -> tuple[list[str], bool]:
    """The case's config overrides, and whether it runs under torchrun."""
    spe = -(-BATCHES // (2 if case["accumulate"] else 1))  # optimizer steps per epoch
    out = []
    for name, level in case.items():
        out += [o.format(pretrained=pretrained, max_steps=2 * spe + 1) for o in FACTORS[name][level]]
    ddp = "ddp" in out
    return [o for o in out if o != "ddp"], ddp


def stop_step(case: dict[str, int]) -> int:
    """The optimizer step after which the run is stopped: the first of epoch 2, mid-epoch."""
    return -(-BATCHES // (2 if case["accumulate"] else 1)) + 1


@pytest.fixture
def pretrained(tmp_path) -> str:
    from cnnlab.models.simplecnn import SimpleCNN

    torch.manual_seed(1)
    path = tmp_path / "pretrained.pt"
    torch.save(SimpleCNN(in_channels=1, num_classes=10, image_size=28).state_dict(), path)
    return str(path)


def check_summary(run, compose) -> None:
    """The summary's best value is the monitored column of its best epoch (the EMA's column when the
    EMA weights were the better, the average's value when SWA replaced it), and ``cnnlab evaluate``
    scores the test split as the end of training did."""
    from cnnlab.commands import evaluate

    summary = json.loads((run / "summary.json").read_text())
    rows = read_metrics(run)
    if summary["best_weights"] == "swa":
        assert summary["best_value"] == summary["swa_value"]
    else:
        row = rows[summary["best_epoch"] - 1]
        column = ("ema_" if row.get("weights") == "ema" else "") + summary["monitor"]
        assert summary["best_value"] == pytest.approx(float(row[column]), rel=1e-5)  # the CSV has 6 digits
    metrics = evaluate.main(compose("evaluate", overrides=[f"run={run}", "device=cpu", "tensorboard=false"]))
    assert metrics["accuracy"] == pytest.approx(summary["test_acc"], abs=1e-9)


def train_in_process(make_cfg, options, tmp_path, step):
    from cnnlab.train import train

    train(make_cfg(*BASE, *options), tmp_path / "whole")
    with pytest.raises(Interrupted):
        train(make_cfg(*BASE, *options), tmp_path / "stopped", callbacks=(SignalAtStep(step),))
    assert not (tmp_path / "stopped" / "summary.json").exists()
    train(make_cfg(*BASE, *options, f"resume={tmp_path / 'stopped'}"), tmp_path / "stopped")


STOPPER = """
import os, signal, sys
from cnnlab.run.metrics import MetricsWriter
step, real = int(os.environ.pop("STOP_AT_STEP", "0")), MetricsWriter.step
def stop(self, lr):
    real(self, lr)
    if self.global_step == step and os.environ.get("RANK") == "0":
        os.kill(os.getpid(), signal.SIGINT)  # one rank: every rank stops at the same step
MetricsWriter.step = stop
from cnnlab.cli import main
sys.argv = ["cnnlab", *sys.argv[1:]]
main()
"""


def train_under_torchrun(tiny_idx, options, tmp_path, step):
    script = tmp_path / "stopper.py"
    script.write_text(textwrap.dedent(STOPPER))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)

    def torchrun(run, *extra, stop=0):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(script), "train", f"dataset.root={tiny_idx}", "trainer.device=cpu", *BASE, *options,
               f"hydra.run.dir={run}", *extra]  # fmt: skip
        return subprocess.run(cmd, cwd=tmp_path, env={**env, "STOP_AT_STEP": str(stop)}, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    whole = torchrun(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = torchrun(tmp_path / "stopped", stop=step)
    assert stopped.returncode != 0 and "Stopped by SIGINT in epoch 2" in stopped.stderr, stopped.stderr[
        -3000:
    ]
    resumed = torchrun(tmp_path / "stopped", f"resume={tmp_path / 'stopped'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]


@pytest.mark.slow  # three tiny runs each, three processes pairs under torchrun for the DDP cases
@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_features_compose_and_resume_exactly(case, make_cfg, tiny_idx, pretrained, tmp_path):
    from hydra import compose

    options, ddp = overrides(case, pretrained)
    if ddp:
        train_under_torchrun(tiny_idx, options, tmp_path, stop_step(case))
    else:
        train_in_process(make_cfg, options, tmp_path, stop_step(case))
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")
    make_cfg()  # Hydra initialised again (torchrun cases did not need it) for evaluate's config
    check_summary(tmp_path / "stopped", compose)
