"""The training run, in process, on tiny IDX data: outputs, early stopping, best checkpoint, seeds."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from cnnlab.errors import ConfigError, DataError
from cnnlab.run.checkpoints import read_state
from cnnlab.train import train


def read_metrics(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_train_writes_run_directory(make_cfg, tmp_path):
    run = tmp_path / "run"
    summary = train(make_cfg("trainer.tensorboard=true", "trainer.max_epochs=3"), run)
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert (run / "train.log").read_text().count("epoch ") >= 3
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) >= {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    saved = json.loads((run / "summary.json").read_text())
    assert saved["epochs_run"] == 3 and saved["stop_reason"] == "max_epochs"
    assert 0 <= saved["test_acc"] <= 1 and saved["test_acc"] == summary["test_acc"]
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["seed"] == 42 and len(prov["data_fingerprint"]) == 64 and prov["versions"]["torch"]
    assert list((run / "tb").iterdir()), "TensorBoard events written"


def test_model_learns_the_tiny_task(make_cfg, tmp_path):
    summary = train(make_cfg("trainer.max_epochs=6", "optimizer.lr=0.005"), tmp_path / "run")
    assert summary["test_acc"] > 0.8


def test_best_checkpoint_is_the_best_epoch(make_cfg, tmp_path):
    run = tmp_path / "run"
    summary = train(make_cfg("trainer.max_epochs=4", "trainer.patience=null", "optimizer.lr=0.05"), run)
    rows = read_metrics(run)
    accs = [float(r["val_acc"]) for r in rows]
    best_epoch = 1 + max(range(len(accs)), key=lambda i: (accs[i], -i))  # first epoch reaching the max
    assert summary["best_epoch"] == best_epoch
    ckpt = read_state(run / "checkpoints" / "best.pt")
    assert ckpt["epoch"] == best_epoch
    assert read_state(run / "checkpoints" / "last.pt")["epoch"] == len(rows)
    assert isinstance(ckpt["config"], str) and ckpt["classes"][0] == "T-shirt/top"


def test_early_stopping_fires_when_validation_stalls(make_cfg, tmp_path):
    # lr=0 means nothing changes, so validation never improves after epoch 1.
    summary = train(
        make_cfg("trainer.max_epochs=10", "trainer.patience=2", "optimizer.lr=1e-12"), tmp_path / "r"
    )
    assert summary["stop_reason"] == "early_stop"
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 1


def test_min_delta_must_be_exceeded(make_cfg, tmp_path):
    summary = train(
        make_cfg("trainer.max_epochs=5", "trainer.patience=1", "trainer.min_delta=0.99"), tmp_path / "r"
    )
    assert summary["epochs_run"] == 2 and summary["stop_reason"] == "early_stop"


TIMING = ("seconds", "data_s", "compute_s", "eval_s", "img_per_s")


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_same_seed_same_metrics(make_cfg, tmp_path):
    a = train(make_cfg("seed=0"), tmp_path / "a")
    b = train(make_cfg("seed=0"), tmp_path / "b")
    train(make_cfg("seed=1"), tmp_path / "c")
    assert without_timing(read_metrics(tmp_path / "a")) == without_timing(read_metrics(tmp_path / "b"))
    assert a["test_acc"] == b["test_acc"]
    assert without_timing(read_metrics(tmp_path / "a")) != without_timing(read_metrics(tmp_path / "c"))


def test_validation_split_does_not_move_with_seed(make_cfg):
    from cnnlab.data.registry import build_data

    cfg = make_cfg()
    a = build_data(cfg.dataset, device=torch.device("cpu"), batch_size=32, eval_batch_size=64, seed=1)
    b = build_data(cfg.dataset, device=torch.device("cpu"), batch_size=32, eval_batch_size=64, seed=2)
    assert torch.equal(a.val.x, b.val.x) and len(a.val.x) == 40
    assert torch.bincount(a.val.y).tolist() == [4] * 10  # stratified


def test_mlp_and_sigmoid_lenet_variants_train(make_cfg, tmp_path):
    assert train(make_cfg("model=mlp", "trainer.max_epochs=1"), tmp_path / "m")["epochs_run"] == 1
    cfg = make_cfg("model.activation=sigmoid", "model.pool=avg", "optimizer=sgd", "optimizer.lr=0.9",
                   "trainer.max_epochs=1")  # fmt: skip
    assert train(cfg, tmp_path / "l")["epochs_run"] == 1


def test_overfit_preset_drives_loss_down(make_cfg, tmp_path):
    cfg = make_cfg("debug=overfit", "trainer.max_epochs=15", "optimizer.lr=0.01")
    train(cfg, tmp_path / "o")
    rows = read_metrics(tmp_path / "o")
    assert float(rows[-1]["train_loss"]) < 0.2 * float(rows[0]["train_loss"])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("optimizer.lr=0", "optimizer.lr must be greater than 0"),
        ("optimizer.lr=-1", "optimizer.lr must be greater than 0"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be greater than 0"),
        ("trainer.batch_size=-4", "trainer.batch_size must be greater than 0"),
        ("dataset.val_split=1.5", "dataset.val_split must be between 0 and 1"),
        ("dataset.val_split=0", "dataset.val_split must be between 0 and 1"),
        ("trainer.precision=8", "Unknown trainer.precision '8'"),
        ("trainer.device=cuda", "no usable CUDA GPU"),
        ("trainer.device=tpu", "Unknown trainer.device"),
        ("model.activation=swish", "Unknown model.activation 'swish'; choose one of: relu, leaky_relu, elu"),
    ],
)
def test_bad_values_are_one_clear_error(make_cfg, tmp_path, override, fragment):
    if "cuda" in override and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        train(make_cfg(override), tmp_path / "r")


def test_missing_data_names_every_place(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "nowhere"))
    system = tmp_path / "usr-share" / "fashion-mnist"  # the real system dir may hold the data
    cfg = make_cfg(
        "dataset.root=null",
        "dataset.download=false",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        f"dataset.system_dirs=[{system}]",
    )
    with pytest.raises(DataError) as err:
        train(cfg, tmp_path / "r")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "fashion_mnist") in msg and str(system) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg


def test_cnnlab_data_env_is_searched(make_cfg, tmp_path, tiny_idx, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tiny_idx.parent))
    (tiny_idx.parent / "data").rename(tiny_idx.parent / "fashion-mnist")
    summary = train(make_cfg("dataset.root=null", "trainer.max_epochs=1"), tmp_path / "r")
    assert summary["epochs_run"] == 1


def test_a_run_whose_test_split_has_no_labels_says_how_to_predict(make_cfg, tmp_path, caplog):
    from tests.test_data_folders import write_food11

    write_food11(tmp_path / "food")
    (tmp_path / "food" / "train" / "2_99.jpg").unlink()  # its truncated file
    food = ("dataset=food11", f"dataset.root={tmp_path / 'food'}", "dataset.image_size=8", "model=mlp",
            "dataset.cache=false", "dataset.num_workers=0", "trainer.max_epochs=1",
            "trainer.report=false")  # fmt: skip
    with caplog.at_level("INFO", logger="cnnlab"):
        summary = train(make_cfg(*food), tmp_path / "run")
    assert summary["test_acc"] is None
    assert f"write a submission with `cnnlab predict run={tmp_path / 'run'}`" in caplog.messages[-1]
    caplog.clear()
    with caplog.at_level("INFO", logger="cnnlab"):
        train(make_cfg("trainer.max_epochs=1", "trainer.report=false"), tmp_path / "labeled")
    assert not any("cnnlab predict" in m for m in caplog.messages)  # a labeled test split was scored
