"""Sweeps and tune workers through a real Slurm: a one-node cluster (Debian's slurm-wlm and munge)
started on this machine for these tests and stopped after."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import optuna
import pytest

from cnnlab.commands.tune.slurm import shares
from cnnlab.commands.tune.storage import open_storage
from tests.conftest import run_cli
from tests.servers import slurm, slurm_installed
from tests.test_distributed import TINY
from tests.test_shared_study import FAST

pytestmark = pytest.mark.skipif(
    not slurm_installed() or os.geteuid() != 0,
    reason="needs Slurm (Debian's slurmctld, slurmd, slurm-client, munge; .ci/run installs them) and root "
    "to start its daemons",
)


@pytest.fixture(scope="module")
def cluster():
    with slurm() as env:
        yield env


def slurm_jobs(folder, env) -> dict[str, str]:
    """The Slurm jobs (array tasks ``<job>_<task>``) submitit ran from ``folder`` and their final state as
    the controller tells it (a job may still be completing when its result file is there)."""
    states = {}
    for job in sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)):
        if not (folder / job / f"{job}_0_log.out").is_file():
            continue  # an array's own folder
        for _ in range(300):
            shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True)
            state = next(w.split("=")[1] for w in shown.stdout.split() if w.startswith("JobState="))
            if state not in ("RUNNING", "COMPLETING"):
                break
            time.sleep(0.1)
        states[job] = state
    return states


def test_trials_are_shared_out_over_the_jobs():
    assert shares(5, 2) == [3, 2] and shares(2, 2) == [1, 1] and shares(1, 3) == [1, 0, 0]


@pytest.mark.slow
def test_a_sweep_runs_as_slurm_jobs(cluster, tiny_idx, tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli("train", "-m", "hydra/launcher=submitit_slurm", f"dataset.root={tiny_idx}", *TINY,
                  "model=mlp", "trainer.max_epochs=1", "trainer.evaluate=false", f"hydra.sweep.dir={sweep}",
                  "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                  "hydra.launcher.timeout_min=10", "optimizer.lr=0.001,0.01",
                  cwd=tmp_path, env=cluster)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "summary.json").read_text())["status"] == "finished"
    assert list(slurm_jobs(sweep / ".submitit", cluster).values()) == ["COMPLETED", "COMPLETED"]
    assert (sweep / "summary.csv").is_file()


@pytest.mark.slow
def test_tune_workers_run_as_slurm_jobs(cluster, tiny_idx, tmp_path):
    """tune.launcher=slurm with 2 workers: two Slurm jobs, one trial each, one journal-file study."""
    study_dir, journal = tmp_path / "study", f"journal:{tmp_path / 'study.log'}"
    res = run_cli("tune", f"dataset.root={tiny_idx}", *FAST, "optimizer.lr=choice(0.001, 0.01)",
                  "tune.sampler=random", "tune.pruner=none", "tune.launcher=slurm", "tune.n_jobs=2",
                  "tune.n_trials=2", f"tune.storage={journal}", f"tune.dir={study_dir}",
                  "tune.slurm.cpus_per_task=1", "tune.slurm.time=10", cwd=tmp_path, env=cluster)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = slurm_jobs(study_dir / ".slurm", cluster)
    assert list(jobs.values()) == ["COMPLETED", "COMPLETED"], jobs
    assert f"Slurm jobs {' '.join(jobs)}: 1, 1 trials each" in res.stdout
    ran = sorted(
        line.split()[1].rstrip(":")
        for job in jobs
        for line in (study_dir / ".slurm" / job / f"{job}_0_log.err").read_text().splitlines()
        if line.startswith("trial ")
    )
    assert ran == ["0", "1"]  # one trial in each job
    study = optuna.load_study(study_name="cnnlab", storage=open_storage(journal))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert (study_dir / "summary.csv").read_text().count("\n") == 3


def test_unknown_slurm_parameters_are_refused_before_anything_is_submitted(tmp_path, monkeypatch):
    from cnnlab.commands.tune import prepare
    from cnnlab.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"tune.slurm.partitoin is not a Slurm job parameter"):
        prepare(["tune.launcher=slurm", "+tune.slurm.partitoin=gpu"])
    with pytest.raises(ConfigError, match=r"Unknown tune.launcher 'k8s'"):
        prepare(["tune.launcher=k8s"])
    assert list(tmp_path.iterdir()) == []
