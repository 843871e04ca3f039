"""A real signal at every stage of a run, outside the epochs (tests/test_resume.py covers mid-epoch): one
line, status.json naming the stage, no temp files, exit 128 + signal, and a way to go on."""

from __future__ import annotations

import json
import signal

import pytest

from cnnlab.data.cache import LOCK_NAME as CACHE_LOCK
from cnnlab.engine.interrupt import Interrupted
from cnnlab.run.checkpoints import read_state
from cnnlab.train import train
from tests.conftest import run_cli, run_cli_with_signal
from tests.test_data_cifar import write_tree, zip_tree
from tests.test_data_folders import write_food11
from tests.test_resume import SignalAtStep

FAST = ("trainer.tensorboard=false", "trainer.progress=plain", "hydra.run.dir=run")


def assert_stopped(proc, run, signum: int, stage: str, message: str) -> dict:
    """Exit 128 + signum, the message as the last line and no other error output; status.json says
    interrupted at ``stage``; no temp file anywhere in the run."""
    assert proc.returncode == 128 + signum, proc.stderr
    name = signal.Signals(signum).name
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cnnlab: error: Stopped by {name} while {message}"), proc.stderr
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["stage"] == stage
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    return status


@pytest.mark.parametrize(
    ("target", "signum", "stage", "message"),
    [
        (
            "cnnlab.train.assemble.build_data",
            signal.SIGTERM,
            "loading data",
            "loading data; nothing was trained yet",
        ),
        ("cnnlab.train.assemble.build_model", signal.SIGHUP, "building", "building; nothing was trained yet"),
    ],
)
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_a_signal_before_the_first_epoch(tiny_idx, tmp_path, target, signum, stage, message):
    proc = run_cli_with_signal(target, signum, "train", f"dataset.root={tiny_idx}", *FAST, cwd=tmp_path)
    assert_stopped(proc, tmp_path / "run", signum, stage, message)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_signal_while_the_cifar_zip_is_unpacked_leaves_no_half_tree(tmp_path):
    write_tree(tmp_path / "tree")
    archive = zip_tree(tmp_path / "tree", tmp_path / "cifar10-jpg.zip")
    cache = tmp_path / "cache"
    proc = run_cli_with_signal("cnnlab.data.cifar._extract", signal.SIGTERM, "train", "dataset=cifar10",
                               f"dataset.root={archive}", f"dataset.cache_dir={cache}", *FAST, cwd=tmp_path,
                               when="after")  # fmt: skip
    assert_stopped(proc, tmp_path / "run", signal.SIGTERM, "loading data", "loading data")
    left = [p.name for p in cache.iterdir() if p.name != CACHE_LOCK]  # the lock of the cache's writers stays
    assert left == []  # the temp folder of the unpack is gone, nothing half-unpacked kept


def test_a_signal_from_outside_while_workers_decode_images(tmp_path):
    root = tmp_path / "food"
    write_food11(root)
    (root / "train" / "2_99.jpg").unlink()  # its truncated file
    cache = tmp_path / "cache"
    food = ("dataset=food11", f"dataset.root={root}", "dataset.image_size=16", "dataset.num_workers=2",
            "dataset.cache=true", f"dataset.cache_dir={cache}")  # fmt: skip
    proc = run_cli_with_signal("cnnlab.data.images.open_image", signal.SIGTERM, "train", *food, *FAST,
                               cwd=tmp_path, when="worker")  # fmt: skip
    assert_stopped(proc, tmp_path / "run", signal.SIGTERM, "loading data", "loading data")
    assert not [p for p in cache.rglob("*") if p.is_file() and p.name != CACHE_LOCK]  # no cache, no temp file


@pytest.mark.slow
def test_a_signal_while_testing_then_resume_only_tests(tiny_idx, tmp_path):
    """patience=0 stops after epoch 1 of 3: the resume must neither train on nor lose that."""
    args = ("train", f"dataset.root={tiny_idx}", "trainer.max_epochs=3", "trainer.patience=0", *FAST)
    proc = run_cli_with_signal("cnnlab.train.ending.Predictor", signal.SIGINT, *args, cwd=tmp_path)
    run = tmp_path / "run"
    assert_stopped(proc, run, signal.SIGINT, "testing", "testing; training had ended: score the test split")
    assert f"`cnnlab train resume={run}`" in proc.stderr and not (run / "summary.json").exists()
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
    done = run_cli("train", "resume=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["stop_reason"] == "early_stop" and summary["test_acc"] > 0
    assert not (run / "status.json").exists()


@pytest.mark.slow
def test_a_signal_while_writing_the_report(tiny_idx, tmp_path):
    args = ("train", f"dataset.root={tiny_idx}", "trainer.max_epochs=1", *FAST)
    proc = run_cli_with_signal("cnnlab.report.evaluate.write_curves", signal.SIGTERM, *args, cwd=tmp_path)
    run = tmp_path / "run"
    assert_stopped(proc, run, signal.SIGTERM, "report", "writing the report; the run finished (summary.json)")
    # The training finished and its numbers stay in summary.json; it says how the command ended, as
    # status.json does, so the two never disagree.
    summary, status = (json.loads((run / name).read_text()) for name in ("summary.json", "status.json"))
    assert summary["status"] == status["status"] == "interrupted" and summary["stage"] == "report"
    assert summary["test_acc"] is not None
    assert f"`cnnlab evaluate run={run}`" in proc.stderr
    done = run_cli("evaluate", "run=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (run / "report" / "index.html").is_file()


def test_sighup_mid_epoch_is_handled_like_sigterm(make_cfg, tmp_path):
    with pytest.raises(Interrupted) as info:
        train(make_cfg("trainer.max_epochs=1"), tmp_path / "run", callbacks=(SignalAtStep(3, signal.SIGHUP),))
    assert info.value.exit_code == 129 and info.value.stage == "training"
    assert "Stopped by SIGHUP in epoch 1 after step 3" in str(info.value)
    assert read_state(tmp_path / "run" / "checkpoints" / "last.pt")["partial"]["step"] == 3
