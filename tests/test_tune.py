"""``cnnlab tune``: Optuna studies whose trials are cnnlab run folders, pruned, continued, in parallel."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cnnlab.commands.tune import fold_search_args, prepare
from cnnlab.commands.tune.space import override_value, parse_space
from cnnlab.commands.tune.study import STUDY_NAME, make_pruner, make_sampler
from cnnlab.errors import ConfigError
from tests.conftest import run_cli

FAST = ("trainer.max_epochs=2", "trainer.batch_size=32", "trainer.threads=1", "trainer.precision=32",
        "trainer.tensorboard=false", "trainer.report=false", "trainer.progress=plain")  # fmt: skip
GOOD, BAD = 0.005, 1e-6  # on the tiny data: val acc 1.0 after one epoch, and 0.1 (chance) for ever


def load_study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{folder / 'study.db'}")


def summary_rows(folder: Path) -> dict[str, dict]:
    with (folder / "summary.csv").open() as f:
        return {row["run"]: row for row in csv.DictReader(f)}


# ----------------------------------------------------------------------------------------- search space
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("choice(sgd, adamw)", CategoricalDistribution(["sgd", "adamw"])),
        ("sgd,adamw", CategoricalDistribution(["sgd", "adamw"])),
        ("interval(0.0, 0.5)", FloatDistribution(0.0, 0.5)),
        ("tag(log, interval(1e-4, 0.1))", FloatDistribution(1e-4, 0.1, log=True)),
        ("int(interval(8, 64))", IntDistribution(8, 64)),
        ("tag(log, int(interval(8, 64)))", IntDistribution(8, 64, log=True)),
        ("range(32, 257, 32)", IntDistribution(32, 256, step=32)),
        ("range(0.0, 1.0, 0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
    ],
)
def test_sweep_syntax_reads_as_optuna_distributions(text, expected):
    (dist,) = parse_space({"x": text}).values()
    assert dist == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.1", "tune.params.x: '0.1' is one value, not a search space; use choice(a, b, ...)"),
        ("tag(log, interval(0, 1))", "tune.params.x: a log scale needs a low end above 0, got 0.0."),
        ("interval(0.5, 0.1)", "tune.params.x: the low end 0.5 must be below the high end 0.1."),
        ("tag(lg, interval(1, 2))", "tune.params.x: unknown tag lg;"),
        ("range(1, 2)", "tune.params.x: 'x=range(1, 2)' gives 1 value(s); a range to search needs two"),
        ("choice([1, 2], [3])", "tune.params.x: choice() takes plain values (no lists, no log tag)."),
        ("interval(1,", "tune.params.x: cannot read 'interval(1,'"),
    ],
)
def test_bad_search_params_are_one_line(text, message):
    with pytest.raises(ConfigError) as info:
        parse_space({"x": text})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", [0.00123, 64, True, None, "sgd", "a b,c", "it's", "x=y", "rün", "a\\b"])
def test_a_sampled_value_reads_back_as_itself(value):
    parsed = OverridesParser.create().parse_override(f"k={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)


def test_command_line_sweeps_join_the_preset_params(tiny_idx):
    given = ["tune=mnist", "trainer.max_epochs=2", "optimizer.lr=tag(log, interval(1e-3, 0.1))"]
    args = fold_search_args([*given, "trainer.batch_size=choice(16,32)"])
    assert args[:2] == ["tune=mnist", "trainer.max_epochs=2"] and args[2].startswith("++tune.params={")
    from cnnlab.commands.tune import compose_tune

    params = compose_tune([f"dataset.root={tiny_idx}", *args]).tune.params
    assert params["optimizer.lr"] == "tag(log, interval(1e-3, 0.1))"  # replaced the preset's range
    assert params["trainer.batch_size"] == "choice(16,32)" and params["optimizer"] == "choice(sgd, adam)"


# --------------------------------------------------------------------------------------- options, checks
LR = "optimizer.lr=choice(0.1, 0.2)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([LR, "tune.pruner=medain"], "Unknown tune.pruner 'medain'; choose one of: median, hyperband, none."),
        ([LR, "tune.sampler=cma"], "Unknown tune.sampler 'cma'; choose one of: tpe, random, gp, qmc."),
        ([LR, "tune.n_trials=0"], "tune.n_trials must be 1 or more, got 0."),
        ([LR, "tune.n_jobs=0"], "tune.n_jobs must be 1 or more, got 0."),
        ([LR, "tune.timeout=0"], "tune.timeout must be a number of seconds above 0 or null, got 0.0."),
        ([LR, "tune.direction=minimize"], "tune.direction=minimize contradicts trainer.mode=max"),
        (["optimizer.lrr=interval(0.1, 0.2)"],
         "tune.params: a trial with optimizer.lrr=0.1 fails: optimizer.lrr is not a config option."),
        (["optimizer=choice(sgd, adamm)"], "tune.params: the search param optimizer chooses among ['sgd', "
         "'adamm'], not options of conf/optimizer/ (adagrad, adam, adamw, rmsprop, sgd)"),
        (["trainer.batch_size=choice(32, 0)"],
         "tune.params: a trial with trainer.batch_size=0 fails: trainer.batch_size must be greater than 0"),
        (["tune=mnist", "trainer.precision=choice(32, 8)"],
         "tune.params: a trial with optimizer=sgd optimizer.lr=0.0001 optimizer.weight_decay=1e-06 "
         "trainer.batch_size=64 trainer.precision=8 fails: Unknown trainer.precision '8'; choose one of:"),
        ([], "Nothing to tune: give a preset (tune=fashion_mnist) or search params on the command line"),
    ],
)  # fmt: skip
def test_every_option_and_corner_is_checked_before_anything_runs(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        prepare(args)
    assert str(info.value).startswith(message), str(info.value)
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("preset", ["mnist", "fashion_mnist", "cifar10", "food11"])
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_every_preset_composes_at_every_corner(preset, tmp_path, monkeypatch):
    from cnnlab.commands.tune import compose_tune
    from cnnlab.commands.tune.study import direction

    monkeypatch.chdir(tmp_path)
    args, _ = prepare([f"tune={preset}", "trainer.monitor=val_loss", "trainer.mode=min"])
    assert args[0] == f"tune={preset}" and args[-1].startswith("tune.dir='multirun/")
    assert not (tmp_path / "multirun").exists()  # checked, not created
    cfg = compose_tune(args)
    assert cfg.dataset.name == preset and len(cfg.tune.params) >= 4
    assert direction(cfg.tune, cfg.trainer) == "minimize"


def test_direction_follows_the_monitor_and_samplers_and_pruners_are_what_they_say():
    from omegaconf import OmegaConf

    from cnnlab.commands.tune.study import direction

    tune = OmegaConf.create({"direction": "auto", "sampler": "tpe", "startup_trials": 3, "warmup_epochs": 1,
                             "pruner": "median"})  # fmt: skip
    assert direction(tune, OmegaConf.create({"mode": "min", "monitor": "val_loss"})) == "minimize"
    assert direction(tune, OmegaConf.create({"mode": "max", "monitor": "val_acc"})) == "maximize"
    kinds = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
             "gp": optuna.samplers.GPSampler, "qmc": optuna.samplers.QMCSampler}  # fmt: skip
    for name, kind in kinds.items():
        assert type(make_sampler(OmegaConf.merge(tune, {"sampler": name}), seed=1)) is kind
    median = make_pruner(tune, max_epochs=5)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (3, 1)
    hyperband = make_pruner(OmegaConf.merge(tune, {"pruner": "hyperband"}), max_epochs=5)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 5
    assert isinstance(make_pruner(OmegaConf.merge(tune, {"pruner": "none"}), 5), optuna.pruners.NopPruner)


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_train_refuses_a_search_preset(tmp_path):
    res = run_cli("train", "tune=mnist", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().endswith(
        "tune=mnist is a search setting: run the search with cnnlab tune tune=mnist."
    )
    res = run_cli("train", "hparams_search=mnist", cwd=tmp_path)  # the hydra-optuna-sweeper's presets
    assert res.returncode == 2 and res.stderr.strip().endswith("run the search with cnnlab tune tune=mnist.")
    res = run_cli("tune", "tune.pruner=medain", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "Unknown tune.pruner 'medain'; choose one of: median, hyperband, none." in res.stderr


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_a_study_prunes_marks_and_continues(tiny_idx, tmp_path):
    folder = tmp_path / "study"
    common = (f"dataset.root={tiny_idx}", *FAST, f"tune.dir={folder}")
    search = (f"optimizer.lr=choice({GOOD}, {BAD})", "tune.sampler=random", "tune.seed=6", "tune.n_trials=6",
              "tune.startup_trials=1", "tune.report=true")  # fmt: skip
    res = run_cli("tune", *common, *search, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = load_study(folder)
    states = {t.number: t.state.name for t in study.trials}
    assert sorted(states) == list(range(6)) and set(states.values()) == {"COMPLETE", "PRUNED"}, states
    rows = summary_rows(folder)
    for trial in study.trials:
        run = folder / str(trial.number)
        saved = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert (
            saved[-1] == f"optimizer.lr={trial.params['optimizer.lr']}"
            and f"dataset.root={tiny_idx}" in saved
        )
        if trial.state.name == "PRUNED":
            status = json.loads((run / "status.json").read_text())
            assert (
                status["status"] == "pruned"
                and status["epochs_run"] == 1
                and not (run / "summary.json").exists()
            )
            assert status["error"] == "pruned by the median pruner after epoch 1 (val_acc 0.1000)"
            assert trial.params["optimizer.lr"] == BAD and rows[str(trial.number)]["status"] == "pruned"
        else:
            summary = json.loads((run / "summary.json").read_text())
            assert trial.value == summary["best_value"] and summary["epochs_run"] == 2
            assert rows[str(trial.number)]["status"] == "ok"
    best = json.loads((folder / "best_trial.json").read_text())
    assert best["value"] == study.best_value == 1.0 and best["params"] == {"optimizer.lr": GOOD}
    assert "pruned: pruned by the median pruner after epoch 1" in res.stdout  # the table marks them
    for name in ("optimization_history.png", "intermediate_values.png"):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"

    # Continue, repeating one of the study's own overrides (harmless): only tune.n_trials changes.
    res = run_cli("tune", f"tune.dir={folder}", "tune.n_trials=1", f"dataset.root={tiny_idx}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"study {folder}: 6 trials so far; 1 more" in res.stdout
    assert len(load_study(folder).trials) == 7 and (folder / "6" / ".hydra" / "overrides.yaml").is_file()
    res = run_cli("tune", f"tune.dir={folder}", "trainer.max_epochs=5", cwd=tmp_path)
    assert res.returncode == 2 and f"The study in {folder} was started with" in res.stderr
    res = run_cli("runs", str(folder), cwd=tmp_path)  # trials with their state, the pruned ones marked
    pruned = [t for t in load_study(folder).trials if t.state.name == "PRUNED"]
    assert res.returncode == 0 and res.stdout.count("pruned: pruned by the median pruner") == len(pruned)


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_diverged_trials_are_failed_trials_and_the_study_goes_on(tiny_idx, tmp_path):
    folder = tmp_path / "study"
    res = run_cli("tune", f"dataset.root={tiny_idx}", *FAST, f"tune.dir={folder}", "optimizer=sgd",
                  "optimizer.lr=choice(1e12, 1e13)", "tune.n_trials=2", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]  # diverging is a result of the hyperparameters
    assert [t.state.name for t in load_study(folder).trials] == ["FAIL", "FAIL"]
    for n in ("0", "1"):
        assert json.loads((folder / n / "status.json").read_text())["status"] == "diverged"
    assert "best trial" not in res.stdout
    assert not list(folder.glob("*.png"))  # tune.report=false: no figures


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_no_trial_starts_after_the_timeout(tiny_idx, tmp_path):
    folder = tmp_path / "study"
    res = run_cli("tune", f"dataset.root={tiny_idx}", *FAST, f"tune.dir={folder}", "tune.n_trials=5",
                  "optimizer.lr=choice(0.004, 0.005)", "tune.timeout=0.001", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_study(folder).trials == [] and not (folder / "0").exists()


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_trials_run_in_parallel_each_with_a_share_of_the_cores(tiny_idx, tmp_path):
    folder = tmp_path / "study"
    res = run_cli("tune", f"dataset.root={tiny_idx}", *[a for a in FAST if "threads" not in a],
                  "trainer.max_epochs=1", f"tune.dir={folder}", "optimizer.lr=choice(0.004, 0.005)",
                  "tune.n_trials=2", "tune.n_jobs=2", "tune.pruner=none", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    study = load_study(folder)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        ckpt = torch.load(folder / str(trial.number) / "checkpoints" / "best.pt", weights_only=True)
        assert yaml.safe_load(ckpt["config"])["trainer"]["threads"] == max((os.cpu_count() or 1) // 2, 1)


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_an_interrupted_trial_is_resumed_when_the_study_continues(tiny_idx, tmp_path, monkeypatch):
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    import cnnlab.commands.tune as tune_module
    import cnnlab.commands.tune.trial as trial_module
    from cnnlab.commands.tune import compose_tune
    from cnnlab.commands.tune.study import create
    from cnnlab.commands.tune.trial import Plan, ask, run_trial
    from cnnlab.engine.interrupt import Interrupted
    from cnnlab.run.layout import StudyDir
    from tests.test_resume import SignalAtStep

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "study"
    args, _ = prepare([f"dataset.root={tiny_idx}", *FAST, "trainer.max_epochs=3", f"tune.dir={folder}",
                       "optimizer.lr=choice(0.004, 0.005)"])  # fmt: skip
    cfg = compose_tune(args)
    design = tune_module._designs[-1]  # what prepare made of this command
    study = create(StudyDir(folder), cfg.tune, cfg.trainer, design)  # as cnnlab tune starts a study
    plan = Plan(folder=str(folder), design=design, tune=OmegaConf.to_container(cfg.tune, resolve=True),
                max_epochs=3, device="cpu", threads=1, first_trial=0, deadline=None)  # fmt: skip
    real_train = trial_module.train

    def train_until_sigint(cfg, path, *, overrides, callbacks):  # SIGINT in epoch 2, step 3
        return real_train(cfg, path, overrides=overrides, callbacks=(*callbacks, SignalAtStep(15)))

    monkeypatch.setattr(trial_module, "train", train_until_sigint)
    with initialize_config_module("cnnlab.conf", version_base="1.3"):
        from cnnlab.commands.tune.space import as_overrides

        trial, values = ask(study, design.distributions())
        sampled = as_overrides(values)
        with pytest.raises(Interrupted) as info:
            run_trial(study, trial, plan, values=values, resources=("cpu", 1))
    assert info.value.exit_code == 130
    expected = "of trial 0; its state is saved: continue the study (it resumes the trial) with `cnnlab tune"
    assert f"{expected} tune.dir={folder}`" in str(info.value)
    run = folder / "0"
    assert (
        json.loads((run / "status.json").read_text())["status"] == "interrupted"
        and (run / "checkpoints" / "last.pt").is_file()
    )
    assert load_study(folder).trials[0].state.name == "RUNNING"

    res = run_cli("tune", f"tune.dir={folder}", "tune.n_trials=1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"trial 0 (resumed): {sampled[0]}" in res.stderr
    trials = load_study(folder).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    summary = json.loads((run / "summary.json").read_text())
    assert trials[0].value == summary["best_value"] and summary["epochs_run"] == 3
    with (run / "metrics.csv").open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3"]
    assert not (run / "status.json").exists()
