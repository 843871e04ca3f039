"""The runs and train commands on hand-made run folders: finding runs, sorting, the CSV, job resources."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from cnnlab.commands.runs import collect, find_runs, report, varying_keys
from cnnlab.commands.train import error_line, job_resources
from cnnlab.errors import ConfigError


def make_run(
    root: Path, name: str, overrides: list[str], summary: dict | None = None, status=None, mode="max"
):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / ".hydra" / "config.yaml").write_text(f"trainer:\n  mode: {mode}\n")
    (run / "checkpoints").mkdir()
    if summary is not None:
        base = {"best_epoch": 1, "monitor": "val_acc", "best_value": summary.get("best_val_acc"),
                "test_acc": 0.5, "test_loss": 1.0, "epochs_run": 2, "stop_reason": "max_epochs",
                "seconds": 3.0}  # fmt: skip
        (run / "summary.json").write_text(json.dumps({**base, **summary}))
    if status is not None:
        (run / "status.json").write_text(json.dumps(status))
    return run


def test_find_runs_recurses_in_natural_order_and_not_into_runs(tmp_path):
    for name in ("10", "9", "2/nested"):
        make_run(tmp_path, name, ["seed=1"], {"best_val_acc": 0.5})
    (tmp_path / "9" / "report").mkdir()
    assert [p.relative_to(tmp_path).as_posix() for p in find_runs(tmp_path)] == ["2/nested", "9", "10"]


def test_rows_sorted_by_metric_with_failed_and_unfinished_last(tmp_path):
    make_run(tmp_path, "0", ["optimizer.lr=0.1"], {"best_val_acc": 0.7})
    make_run(
        tmp_path, "1", ["optimizer.lr=0.2"], status={"status": "failed", "error": "boom", "seconds": 1.0}
    )
    make_run(tmp_path, "2", ["optimizer.lr=0.3"], {"best_val_acc": 0.9})
    make_run(tmp_path, "3", ["optimizer.lr=0.4"])  # still running, or killed
    rows = collect(tmp_path)
    assert [(r["run"], r["status"]) for r in rows] == [
        ("2", "ok"),
        ("0", "ok"),
        ("1", "failed"),
        ("3", "incomplete"),
    ]
    assert rows[2]["error"] == "boom" and rows[2]["seconds"] == 1.0


def test_a_minimised_monitor_sorts_ascending(tmp_path):
    for name, loss in (("0", 0.9), ("1", 0.2)):
        summary = {"best_val_acc": 0.5, "monitor": "val_loss", "best_value": loss}
        make_run(tmp_path, name, [f"seed={name}"], summary, mode="min")
    assert [r["run"] for r in collect(tmp_path)] == ["1", "0"]


def test_runs_of_different_datasets_are_ranked_within_their_dataset(tmp_path, capsys):
    for name, dataset, acc in (("a", "mnist", 0.98), ("b", "cifar10", 0.6), ("c", "mnist", 0.99),
                               ("d", "cifar10", 0.7), ("e", None, 0.5)):  # fmt: skip
        run = make_run(tmp_path, name, [f"seed={name}"], {"best_val_acc": acc})
        if dataset:
            (run / ".hydra" / "config.yaml").write_text(f"dataset:\n  name: {dataset}\ntrainer:\n  mode: max")
    rows = report(tmp_path)
    assert [(r["dataset"], r["run"]) for r in rows] == [
        ("cifar10", "d"), ("cifar10", "b"), ("mnist", "c"), ("mnist", "a"), (None, "e"),
    ]  # fmt: skip
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.count("│") > 5]
    assert [cells[1:4:2] for cells in table] == [
        ["1", "cifar10"], ["2", "cifar10"], ["1", "mnist"], ["2", "mnist"], ["1", "-"],
    ]  # fmt: skip
    assert [r["dataset"] for r in csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text()))] == [
        "cifar10", "cifar10", "mnist", "mnist", "",
    ]  # fmt: skip


def test_report_writes_csv_with_a_column_per_override(tmp_path, capsys):
    make_run(tmp_path, "0", ["optimizer=sgd", "optimizer.lr=0.028977052667178302", "trainer.max_epochs=2"],
             {"best_val_acc": 0.8})  # fmt: skip
    make_run(
        tmp_path, "1", ["optimizer=adam", "optimizer.lr=0.001", "trainer.max_epochs=2"], {"best_val_acc": 0.6}
    )
    rows = report(tmp_path)
    assert varying_keys(rows) == ["optimizer", "optimizer.lr"]
    table = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert [r["optimizer"] for r in table] == ["sgd", "adam"]
    assert table[0]["optimizer.lr"] == "0.028977052667178302" and table[0]["trainer.max_epochs"] == "2"
    out = capsys.readouterr().out
    assert "optimizer.lr=0.02898" in out  # shortened for the table, exact in the CSV
    assert "common: trainer.max_epochs=2" in out


def test_runs_command_errors_are_one_sentence(tmp_path):
    from omegaconf import OmegaConf

    from cnnlab.commands.runs import main

    with pytest.raises(ConfigError, match="No folder"):
        main(OmegaConf.create({"dir": str(tmp_path / "nope"), "csv": True}))
    with pytest.raises(ConfigError, match="No runs under"):
        main(OmegaConf.create({"dir": str(tmp_path), "csv": True}))
    with pytest.raises(ConfigError, match="Name the folder"):
        main(OmegaConf.create({"dir": "???", "csv": True}))


@pytest.mark.parametrize(
    ("n_jobs", "device", "threads", "gpus", "expected"),
    [
        (None, "auto", None, 0, ("auto", None)),  # the basic launcher: nothing changes
        (1, "auto", None, 4, ("auto", None)),
        (2, "cpu", None, 0, ("cpu", 8)),  # a fair share of 16 cores
        (-1, "cpu", None, 0, ("cpu", 1)),  # joblib's -1: a job per core
        (4, "cpu", 3, 0, ("cpu", 3)),  # trainer.threads set by the user wins
        (2, "auto", None, 2, ("cuda:1", 8)),  # job 3 of a sweep on 2 GPUs
        (2, "cuda:0", None, 2, ("cuda:0", 8)),  # an explicit GPU stays
    ],
)
def test_job_resources(n_jobs, device, threads, gpus, expected):
    got = job_resources(
        n_jobs=n_jobs, job_num=3, device=device, threads=threads, cpu_count=16, gpu_count=gpus
    )
    assert got == expected


def test_error_line():
    assert error_line(ConfigError("Bad value.\nmore")) == "Bad value."
    assert error_line(RuntimeError("CUDA out of memory")) == "RuntimeError: CUDA out of memory"
    assert error_line(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_tensorboard_hparams_log_every_overridden_key(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from cnnlab.train import train

    overrides = ["optimizer=sgd", "optimizer.momentum=0.5", "model.channels=[4,8]", "trainer.max_epochs=1"]
    cfg = make_cfg(*overrides, "trainer.tensorboard=true", "trainer.limit_train_batches=2")
    train(cfg, tmp_path / "run", overrides=overrides)
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["optimizer.momentum"].number_value == 0.5
    assert hparams["optimizer"].string_value == "sgd" and hparams["model.channels"].string_value == "[4,8]"
    assert hparams["lr"].number_value == pytest.approx(0.01) and hparams["model"].string_value == "lenet"
