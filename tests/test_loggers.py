"""Loggers: ``logger=[csv,tensorboard]`` by default, MLflow and wandb read back with their own clients."""

from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path

import pytest

from cnnlab.errors import ConfigError
from cnnlab.train import train
from tests.conftest import run_cli
from tests.test_train import read_metrics

QUICK = ("trainer.precision=32", "trainer.threads=1", "trainer.report=false")
STEPPED = ("lr", "train_loss", "train_acc", "val_loss", "val_acc")  # per-epoch columns every run has


def close(a: float, b: float) -> bool:
    """metrics.csv writes 6 significant digits; trackers keep the float."""
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


def test_default_loggers_are_csv_and_tensorboard_and_a_list_chooses(make_cfg, tmp_path):
    both = make_cfg("trainer.tensorboard=true", "trainer.precision=32", "trainer.threads=1")
    assert set(both.logger) == {"csv", "tensorboard", "mlflow", "wandb"}
    assert both.logger.mlflow is None and both.logger.wandb is None
    train(both, tmp_path / "both")
    train(make_cfg("trainer.tensorboard=true", "trainer.precision=32", "trainer.threads=1", "logger=[csv]"),
          tmp_path / "csv")  # fmt: skip
    assert list((tmp_path / "both" / "tb").iterdir())
    assert not (tmp_path / "csv" / "tb").exists()  # only TensorBoard went
    rows = [read_metrics(tmp_path / name) for name in ("both", "csv")]
    assert [list(r) for r in rows[0]] == [list(r) for r in rows[1]]  # the same columns, epoch for epoch


def test_trainer_tensorboard_false_still_turns_tensorboard_off(make_cfg, tmp_path):
    train(make_cfg("trainer.tensorboard=false", "trainer.max_epochs=1", *QUICK), tmp_path / "run")
    assert not (tmp_path / "run" / "tb").exists() and (tmp_path / "run" / "metrics.csv").is_file()


def test_logger_without_csv_is_refused(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^logger must include csv: metrics.csv is the run's own record"):
        train(make_cfg("logger=[tensorboard]"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_bad_logger_values_are_one_line(tiny_idx, tmp_path):
    res = run_cli("train", f"dataset.root={tiny_idx}", "logger=[csv,mlfow]", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "cnnlab: error: Unknown logger 'mlfow'; choose one of: csv, mlflow, tensorboard, wandb. "
        "Did you mean 'mlflow'?"
    )
    res = run_cli("train", f"dataset.root={tiny_idx}", "logger=[csv,wandb]", "logger.wandb.mode=onlin",
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "Unknown logger.wandb.mode 'onlin'; choose one of: online, offline, disabled." in res.stderr


def test_a_missing_extra_names_the_pip_command(make_cfg, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name)
    )
    with pytest.raises(ConfigError, match=r"pip install 'cnnlab\[mlflow\]'"):
        train(make_cfg("logger=[csv,mlflow]"), tmp_path / "run")


# ----------------------------------------------------------------------------------------------- MLflow
def mlflow_client(folder: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def only_run(client):
    (experiment,) = [e for e in client.search_experiments() if e.name == "cnnlab"]
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_mlflow_run_read_back_matches_metrics_csv(make_cfg, tmp_path):
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "runs" / "one"
    summary = train(
        make_cfg("logger=[csv,mlflow]", "trainer.max_epochs=3", "optimizer.lr=0.003", *QUICK), run_dir
    )
    client = mlflow_client(tmp_path / "runs")  # the store sits in the folder holding the run
    run = only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_name == "one"
    assert run.data.tags["cnnlab.run_dir"] == str(run_dir.resolve())
    assert run.data.params["optimizer.lr"] == "0.003" and run.data.params["model.name"] == "lenet"
    rows = read_metrics(run_dir)
    assert {k for k in run.data.metrics if "/" not in k} == set(rows[0]) - {"epoch"}  # metrics.csv's columns
    for key in STEPPED:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [int(r["epoch"]) for r in rows]
        assert all(close(m.value, float(r[key])) for m, r in zip(history, rows, strict=True)), key
    assert close(run.data.metrics["summary/test_acc"], summary["test_acc"])
    assert close(run.data.metrics["summary/best_val_acc"], summary["best_val_acc"])
    assert run.data.tags["cnnlab.stop_reason"] == "max_epochs"
    (artifact,) = client.list_artifacts(run.info.run_id, "checkpoints")
    assert artifact.path == "checkpoints/best.safetensors"
    local = Path(client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path)))
    assert local.read_bytes() == (run_dir / "checkpoints" / "best.safetensors").read_bytes()
    assert (tmp_path / "runs" / "mlartifacts").is_dir() and not (Path.cwd() / "mlartifacts").exists()


def test_mlflow_records_a_diverged_run_as_failed(make_cfg, tmp_path):
    pytest.importorskip("mlflow")
    from cnnlab.engine.loop import DivergedError

    with pytest.raises(DivergedError):
        train(
            make_cfg("logger=[csv,mlflow]", "optimizer=sgd", "optimizer.lr=1e12", *QUICK),
            tmp_path / "runs" / "x",
        )
    run = only_run(mlflow_client(tmp_path / "runs"))
    assert run.info.status == "FAILED" and run.data.tags["cnnlab.status"] == "diverged"


def test_mlflow_resumed_run_continues_the_same_mlflow_run(make_cfg, tmp_path):
    pytest.importorskip("mlflow")
    from tests.test_resume import KillAfterEpoch, Killed

    run_dir = tmp_path / "runs" / "r"
    args = ("logger=[csv,mlflow]", "trainer.max_epochs=3", *QUICK)
    with pytest.raises(Killed):
        train(make_cfg(*args), run_dir, callbacks=(KillAfterEpoch(1),))
    train(make_cfg(*args, f"resume={run_dir}"), run_dir)
    client = mlflow_client(tmp_path / "runs")
    run = only_run(client)  # one MLflow run, not two
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
    assert steps == [1, 2, 3]


def test_tracking_uri_chooses_the_store(make_cfg, tmp_path):
    pytest.importorskip("mlflow")
    store = tmp_path / "elsewhere.db"
    cfg = make_cfg(
        "logger=[csv,mlflow]",
        f"logger.mlflow.tracking_uri=sqlite:///{store}",
        *QUICK,
        "logger.mlflow.experiment=mine",
        "logger.mlflow.checkpoint=false",
        "trainer.max_epochs=1",
    )
    train(cfg, tmp_path / "runs" / "r")
    assert store.is_file() and not (tmp_path / "runs" / "mlflow.db").exists()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    (run,) = client.search_runs([client.get_experiment_by_name("mine").experiment_id])
    assert client.list_artifacts(run.info.run_id) == []  # checkpoint=false: no artifact


# ------------------------------------------------------------------------------------------------ wandb
def wandb_records(run_dir: Path) -> list:
    """The records of the one offline run in ``run_dir/wandb``: a LevelDB-style log of protobufs (blocks
    of 32 KiB, a 7-byte header per chunk) after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunks, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_run_files_match_metrics_csv(make_cfg, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "w"
    summary = train(
        make_cfg("logger=[csv,wandb]", "trainer.max_epochs=2", "optimizer.lr=0.004", *QUICK), run_dir
    )
    records = wandb_records(run_dir)
    deadline = time.monotonic() + 60  # wandb's service may still be writing the file when finish() returns
    while {"run", "exit"} - {r.WhichOneof("record_type") for r in records} and time.monotonic() < deadline:
        time.sleep(0.5)
        records = wandb_records(run_dir)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "w" and run.project == "cnnlab"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["optimizer"]["lr"] == 0.004
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    rows = read_metrics(run_dir)
    assert [h["_step"] for h in history] == [int(r["epoch"]) for r in rows]
    for logged, row in zip(history, rows, strict=True):
        assert all(close(logged[key], float(row[key])) for key in STEPPED)
        assert {k for k in logged if not k.startswith("_")} == set(row) - {"epoch"}  # metrics.csv's columns
    summaries = [r.summary for r in records if r.WhichOneof("record_type") == "summary"]
    final = {i.key: json.loads(i.value_json) for s in summaries for i in s.update if i.key}
    assert close(final["test_acc"], summary["test_acc"]) and final["stop_reason"] == "max_epochs"
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "model" and [m.path for m in artifact.manifest.contents] == ["best.safetensors"]
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]


def test_an_unreachable_mlflow_server_is_a_one_line_error(make_cfg, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, not after minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = make_cfg("logger=[csv,mlflow]", "logger.mlflow.tracking_uri=http://127.0.0.1:9", *QUICK)
    with pytest.raises(
        ConfigError, match=r"^logger\.mlflow cannot open the tracking store http://127\.0\.0\.1:9 "
    ) as err:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)
