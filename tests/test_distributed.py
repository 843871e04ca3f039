"""Data-parallel training (torchrun, gloo on CPU) and cluster sweeps (submitit launchers)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.data.loader import TensorLoader
from cnnlab.engine import distributed, ranks
from cnnlab.errors import ConfigError
from tests.conftest import run_cli

TINY = ["trainer.device=cpu", "trainer.batch_size=32", "trainer.max_epochs=2", "trainer.progress=plain",
        "trainer.tensorboard=false", "trainer.precision=32", "model=lenet"]  # fmt: skip


def rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_shards_partition_every_global_batch():
    x = torch.arange(107).view(-1, 1, 1, 1).to(torch.uint8)
    full = TensorLoader(x, torch.arange(107), 10, shuffle=True, seed=3)
    shards = [TensorLoader(x, torch.arange(107), 10, shuffle=True, seed=3) for _ in range(3)]
    for rank, shard in enumerate(shards):
        shard.shard(rank, 3)
    assert len({len(full), *(len(s) for s in shards)}) == 1  # global batch count on every rank
    for whole, *parts in zip(full, *shards, strict=True):
        assert torch.equal(whole[1], torch.cat([p[1] for p in parts]))
        assert max(len(p[1]) for p in parts) - min(len(p[1]) for p in parts) <= 1


def test_short_final_batch_is_dropped_when_a_rank_would_get_under_two():
    x, y = torch.zeros(69, 1, 1, 1, dtype=torch.uint8), torch.zeros(69, dtype=torch.long)
    loader = TensorLoader(x, y, 32, shuffle=True)
    assert len(loader) == 3  # 5 left over: kept for one process
    loader.shard(0, 4)
    assert len(loader) == 2  # 5 over 4 ranks would leave some with one sample


def test_ranks_other_than_zero_let_hydra_write_nothing(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert ranks.hydra_overrides(["model=lenet"]) == ["model=lenet"]
    monkeypatch.setenv("RANK", "1")
    assert ranks.hydra_overrides(["model=lenet"])[-2:] == [
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
    ]
    with pytest.raises(ConfigError, match="sweep cannot run inside torchrun"):
        ranks.hydra_overrides(["-m", "optimizer.lr=0.1,0.01"])


def test_single_process_needs_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = distributed.setup(OmegaConf.create({"device": "cpu", "backend": "nccl", "batch_size": 1}))
    assert not dist.enabled and dist.is_main and dist.totals(torch.tensor(2), 3) == [2.0, 3.0]
    assert dist.broadcast("x") == "x"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "nccl"}, "backend=nccl needs CUDA"),
        ({"sync_batchnorm": True}, "sync_batchnorm needs CUDA"),
        ({"batch_size": 1}, "must be at least the number of processes"),
    ],
)
def test_distributed_settings_that_cannot_work_are_refused(monkeypatch, options, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    tc = OmegaConf.create({"device": "cpu", "backend": "auto", "batch_size": 32, "sync_batchnorm": False})
    tc.update(options)
    with pytest.raises(ConfigError, match=message):
        distributed.setup(tc)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tiny_idx, make_cfg, tmp_path):
    """torchrun: one run directory (rank 0's), files written once, the same loss curve as one process."""
    from cnnlab.train import train

    args = ["train", f"dataset.root={tiny_idx}", *TINY]
    train(make_cfg(*TINY), tmp_path / "single")

    work = tmp_path / "ddp"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cnnlab", *args]  # fmt: skip
    ddp = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    assert sorted(p.name for p in work.iterdir()) == ["outputs"]  # rank 1 wrote nothing beside it
    (run_dir,) = list((work / "outputs").glob("*/*"))  # one directory for both ranks
    log = (run_dir / "train.log").read_text()
    assert "data parallel: 2 processes (gloo), global batch 32, 16 per process" in log
    assert log.count("epoch 2/2") == 1  # written by rank 0 alone
    a, b = rows(tmp_path / "single"), rows(run_dir)
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-3, abs=1e-4), key
    sa = json.loads((tmp_path / "single" / "summary.json").read_text())
    sb = json.loads((run_dir / "summary.json").read_text())
    assert sb["test_acc"] == pytest.approx(sa["test_acc"]) and sb["test_loss"] == pytest.approx(
        sa["test_loss"]
    )
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "report").is_dir()


def test_slurm_preset_composes_into_an_sbatch_script(tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from submitit.slurm.slurm import _make_sbatch_string

    from cnnlab.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("cnnlab.conf", version_base="1.3"):
        overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.sweep.dir=sweep"]
        overrides.append("hydra.launcher.tasks_per_node=4")
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    keys = ("partition", "gpus_per_task", "cpus_per_task", "nodes", "signal_delay_s", "additional_parameters")
    params = {k: launcher[k] for k in keys}  # submitit's AutoExecutor renames the other three so:
    params.update(time=launcher["timeout_min"], ntasks_per_node=launcher["tasks_per_node"],
                  mem=f"{launcher['mem_gb']}GB")  # fmt: skip
    script = _make_sbatch_string(command="true", folder=tmp_path, **params)
    for line in ("--partition=gpu", "--ntasks-per-node=4", "--gpus-per-task=1", "--time=240",
                 "--signal=USR2@120", "#SBATCH --requeue"):  # fmt: skip
        assert line in script, line


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep_and_a_requeued_job_resumes(tiny_idx, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=submitit_local", f"dataset.root={tiny_idx}", *TINY,
            "model=mlp", "trainer.evaluate=false", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    first = run_cli(*args, "optimizer.lr=0.001,0.01", "trainer.max_epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "summary.json").read_text())["status"] == "finished"
    assert (sweep / "summary.csv").is_file()

    # Job 0 as SLURM leaves it when time runs out: last.pt written, no summary. Run again (a requeue
    # runs the same job in the same directory): it continues from epoch 1 instead of starting over.
    (sweep / "0" / "summary.json").unlink()
    again = run_cli(*args, "optimizer.lr=0.001", "trainer.max_epochs=2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in (sweep / "0" / "train.log").read_text()
    assert [r["epoch"] for r in rows(sweep / "0")] == ["1", "2"]
