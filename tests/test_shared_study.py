"""A study shared by workers that know only its storage: a real PostgreSQL server (a throwaway cluster
started here) and Optuna's journal file. Each worker is its own ``cnnlab tune`` process."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time

import optuna
import pytest

from cnnlab.commands.tune import prepare
from cnnlab.commands.tune.storage import describe, open_storage
from cnnlab.errors import CnnlabError, ConfigError
from tests.conftest import SIGNAL_AT, cli_args, cli_env, run_cli
from tests.servers import postgres, postgres_bin

FAST = ("trainer.max_epochs=1", "trainer.batch_size=64", "trainer.threads=1", "trainer.precision=32",
        "trainer.tensorboard=false", "trainer.report=false", "trainer.progress=plain",
        "trainer.evaluate=false")  # fmt: skip
NEEDS_POSTGRES = pytest.mark.skipif(
    postgres_bin() is None or importlib.util.find_spec("psycopg") is None,
    reason="needs PostgreSQL (Debian's postgresql package) and cnnlab[postgres]; .ci/run installs both",
)


def worker(*args: str, cwd, kill_after: str | None = None) -> subprocess.Popen:
    """``cnnlab tune`` in its own process; with ``kill_after`` it SIGKILLs itself when that function
    returns (a worker lost without warning)."""
    if kill_after is None:
        cmd = [sys.executable, "-m", "cnnlab", *cli_args(("tune", *args))]
    else:
        cmd = [sys.executable, "-c", SIGNAL_AT, kill_after, str(int(signal.SIGKILL)), "after", "tune", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=cli_env({"OMP_NUM_THREADS": "1"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for_study(url: str, name: str, proc: subprocess.Popen) -> None:
    storage = open_storage(url)
    for _ in range(600):
        if name in optuna.get_all_study_names(storage) or proc.poll() is not None:
            return
        time.sleep(0.1)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def trials_run(stderr: str) -> list[int]:
    return [int(line.split()[1].rstrip(":")) for line in stderr.splitlines() if line.startswith("trial ")
            and line.split()[1].rstrip(":").isdigit() and "(resumed)" not in line]  # fmt: skip


def two_workers_share_one_study(url: str, tiny_idx, tmp_path) -> None:
    """Worker A starts the study; worker B, given only the storage, its name and the shared folder,
    joins it. Together they run 2 + 2 trials, each exactly once, all shown by ``cnnlab runs``."""
    shared = tmp_path / "shared"
    where = (f"tune.storage={url}", "tune.study=lr", f"tune.dir={shared}")
    a = worker(*where, f"dataset.root={tiny_idx}", *FAST, "optimizer.lr=choice(0.001, 0.003, 0.01)",
               "tune.sampler=random", "tune.pruner=none", "tune.n_trials=2", cwd=tmp_path)  # fmt: skip
    wait_for_study(url, "lr", a)
    b = worker(*where, "tune.n_trials=2", cwd=tmp_path)
    (code_a, out_a, err_a), (code_b, out_b, err_b) = finish(a), finish(b)
    assert code_a == 0, err_a[-3000:]
    assert code_b == 0, err_b[-3000:]
    ran_a, ran_b = trials_run(err_a), trials_run(err_b)
    assert len(ran_a) == len(ran_b) == 2 and sorted(ran_a + ran_b) == [0, 1, 2, 3]  # none twice
    study = optuna.load_study(study_name="lr", storage=open_storage(url))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    for trial in study.trials:
        log = (shared / str(trial.number) / "train.log").read_text()
        assert log.count("epoch 1/1") == 1, log  # trained once
    assert "0 trials so far" in out_a and "trials so far; 2 more" in out_b
    assert not (shared / "study.db").exists()  # the study is in the storage, not the folder
    runs = run_cli("runs", str(shared), cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr
    for number in range(4):
        assert f"\n{number} " in runs.stdout or f" {number} " in runs.stdout, runs.stdout
    assert (shared / "summary.csv").read_text().count("\n") == 5  # header + 4 trials


@pytest.mark.slow
@NEEDS_POSTGRES
def test_two_workers_share_a_study_in_postgresql(tiny_idx, tmp_path):
    with postgres() as url:
        two_workers_share_one_study(url, tiny_idx, tmp_path)


@pytest.mark.slow
def test_two_workers_share_a_study_in_a_journal_file(tiny_idx, tmp_path):
    two_workers_share_one_study(f"journal:{tmp_path / 'study.log'}", tiny_idx, tmp_path)


@pytest.mark.slow
def test_a_killed_worker_leaves_its_trial_for_another_to_resume(tiny_idx, tmp_path):
    """Worker A is SIGKILLed after the first epoch of its trial is saved; worker B, joining, resumes that
    trial (its folder is no longer held) and then runs its own."""
    url, shared = f"{tmp_path / 'study.log'}", tmp_path / "shared"
    where = (f"tune.storage={url}", f"tune.dir={shared}")
    a = worker(*where, f"dataset.root={tiny_idx}", *FAST, "trainer.max_epochs=2", "tune.n_trials=1",
               "optimizer.lr=choice(0.001, 0.01)", "tune.sampler=random", "tune.pruner=none", cwd=tmp_path,
               kill_after="cnnlab.train.epochs.save_epoch")  # fmt: skip
    code, _, err = finish(a)
    assert code == -signal.SIGKILL, err[-2000:]
    assert (shared / "0" / "checkpoints" / "last.pt").is_file()
    b = worker(*where, "tune.n_trials=1", cwd=tmp_path)
    code, _, err = finish(b)
    assert code == 0, err[-3000:]
    assert "trial 0 (resumed)" in err and trials_run(err) == [1]
    assert "resuming" in (shared / "0" / "train.log").read_text()
    study = optuna.load_study(study_name="cnnlab", storage=open_storage(url))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


@pytest.mark.slow  # composes the config four times: over 4 s on 2 shared cores
def test_a_shared_study_needs_its_folder_named_and_a_usable_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"give them all the same tune.dir=<folder>"):
        prepare([f"tune.storage=journal:{tmp_path / 's.log'}"])
    with pytest.raises(ConfigError, match=r"the folder .* does not exist"):
        prepare([f"tune.storage={tmp_path / 'no' / 's.log'}", f"tune.dir={tmp_path / 'd'}"])
    with pytest.raises(ConfigError, match="neither an SQLAlchemy URL"):
        prepare(["tune.storage=not a url", f"tune.dir={tmp_path / 'd'}"])
    # no server there (or, without cnnlab[postgres], no driver): either way one line, the password hidden
    with pytest.raises(CnnlabError, match=r"postgresql://u:\*\*\*@127.0.0.1:1/x") as refused:
        prepare(["tune.storage=postgresql://u:secret@127.0.0.1:1/x", f"tune.dir={tmp_path / 'd'}"])
    assert "secret" not in str(refused.value) and "\n" not in str(refused.value)
    assert describe("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert not (tmp_path / "d").exists()
