"""Hostile and broken surroundings: nothing already written is lost, nothing runs, one clear message."""

from __future__ import annotations

import errno
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

import cnnlab.io as io_module
from cnnlab.errors import CheckpointError
from cnnlab.run.checkpoints import read_state, write_state
from cnnlab.train import train
from tests.conftest import run_cli
from tests.test_data_cifar import Exploit
from tests.test_data_folders import write_food11
from tests.test_train import read_metrics, without_timing


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "best.pt"
    evil.write_bytes(pickle.dumps({"model": Exploit(marker)}))
    with pytest.raises(CheckpointError, match="contain code, so it was not loaded"):
        read_state(evil)
    assert not marker.exists()


@pytest.mark.slow
def test_predict_refuses_a_hostile_checkpoint_in_a_run(trained_run, tmp_path):
    marker = tmp_path / "pwned"
    (trained_run / "checkpoints" / "best.safetensors").unlink()
    (trained_run / "checkpoints" / "best.pt").write_bytes(pickle.dumps({"model": Exploit(marker)}))
    proc = run_cli("predict", f"run={trained_run}", cwd=tmp_path)
    assert proc.returncode == 2 and "can be loaded safely" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (trained_run / "submission.csv").exists()


class FillsUp:
    """A file object on a disk that fills after ``room`` bytes: half a write lands, then ENOSPC."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.f.write(data[: self.room])
            raise OSError(errno.ENOSPC, "No space left on device", self.f.name)
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_when(monkeypatch, should_fill):
    """Make file writes whose target passes ``should_fill(path)`` hit a full disk.

    Every write goes through a temp file named ``.<target>.<random>.tmp`` (cnnlab.io), opened with
    ``os.fdopen``; the target is read back from the descriptor's path.
    """
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        target = Path(name[1:].rsplit(".", 2)[0]) if name.startswith(".") and name.endswith(".tmp") else None
        return FillsUp(f, 500) if target is not None and should_fill(target) else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(make_cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"
    saves = []

    def second_epoch(path):
        saves.append(path.name)
        return saves.count("last.pt") == 2 and path.name == "last.pt"

    fill_disk_when(monkeypatch, second_epoch)
    with pytest.raises(OSError, match="No space left"):
        train(make_cfg("trainer.max_epochs=3", "trainer.patience=null", "optimizer.lr=1e-12"), run)
    monkeypatch.undo()
    assert read_state(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert read_state(run / "checkpoints" / "best.pt")["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.pt", "best.safetensors", "last.pt",
    ]  # fmt: skip


def test_save_checkpoint_failing_halfway_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    write_state({"epoch": 1, "w": torch.zeros(1000)}, target)
    fill_disk_when(monkeypatch, lambda path: True)
    with pytest.raises(OSError, match="No space left"):
        write_state({"epoch": 2, "w": torch.ones(1000)}, target)
    assert read_state(target)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_an_output_dir_that_cannot_be_created_is_one_line(tiny_idx, tmp_path):
    (tmp_path / "a-file").write_text("")
    proc = run_cli("train", f"dataset.root={tiny_idx}", f"hydra.run.dir={tmp_path / 'a-file' / 'run'}",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot use {tmp_path / 'a-file' / 'run'} (Not a directory)" in proc.stderr


def test_deterministic_food11_with_worker_processes_is_bit_identical(make_cfg, tmp_path):
    root = tmp_path / "food"
    write_food11(root)
    (root / "train" / "2_99.jpg").unlink()
    common = (
        "dataset=food11", f"dataset.root={root}", "dataset.image_size=8", "dataset.num_workers=2",
        "dataset.cache=false", "model=simplecnn", "augmentation=standard", "trainer.deterministic=true",
        "trainer.batch_size=2", "trainer.max_epochs=2", "seed=3",
    )  # fmt: skip
    train(make_cfg(*common), tmp_path / "a")
    train(make_cfg(*common), tmp_path / "b")
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert len(a) == 2 and without_timing(a) == without_timing(b)
    wa = read_state(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    wb = read_state(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_trainer_deterministic_sets_the_global_flag_both_ways(make_cfg, tiny_idx, tmp_path):
    common = (f"dataset.root={tiny_idx}", "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    try:
        train(make_cfg(*common, "trainer.deterministic=true"), tmp_path / "a")
        assert torch.are_deterministic_algorithms_enabled()
        train(make_cfg(*common, "trainer.deterministic=false"), tmp_path / "b")
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_written_files_get_the_usual_permissions_not_temp_file_ones(tmp_path):
    umask = os.umask(0)
    os.umask(umask)  # the process's umask, which cnnlab read when it was imported
    path = tmp_path / "out.json"
    io_module.atomic_write(path, lambda f: f.write(b"{}"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    path.chmod(0o640)
    io_module.atomic_write(path, lambda f: f.write(b"[]"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_bytes() == b"[]"  # replaced: mode kept
