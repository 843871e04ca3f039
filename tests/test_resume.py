"""Never lose a run: exact resume after a kill or a signal, refusals, resume=auto, divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from cnnlab.engine.interrupt import Interrupted
from cnnlab.engine.loop import DivergedError
from cnnlab.errors import ConfigError
from cnnlab.run.checkpoints import read_state
from cnnlab.run.resume import find_auto
from cnnlab.train import Callback, train
from tests.conftest import run_cli
from tests.test_train import read_metrics, without_timing

# Dropout (global RNG), augmentation (pipeline generator), EMA and a per-step schedule: all must resume.
# A fixed thread count: a different one changes the last bits of a step (trainer.threads=auto may switch)
RECIPE = ("model=mlp", "augmentation=basic", "trainer.ema=0.9", "scheduler=cosine", "trainer.max_epochs=3",
          "trainer.threads=1")  # fmt: skip


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, no handler sees it."""


def assert_same_run(a, b):
    wa, wb = read_state(a / "checkpoints" / "last.pt"), read_state(b / "checkpoints" / "last.pt")
    for key in ("model", "optimizer"):
        assert str(wa[key]) == str(wb[key]) or all(torch.equal(wa[key][k], wb[key][k]) for k in wa[key])
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    assert without_timing(read_metrics(a)) == without_timing(read_metrics(b))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    same = [k for k in sa if k not in ("seconds", "threads")]  # threads: what trainer.threads=auto timed
    assert {k: sa[k] for k in same} == {k: sb.get(k) for k in same} and sa.keys() == sb.keys()


class KillAfterEpoch(Callback):
    """Dies right after epoch ``epoch``'s checkpoints are written, as a kill then would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, run, row, value):
        if row["epoch"] == self.epoch:
            raise Killed


class SignalAtStep(Callback):
    """Sends this process ``signum`` after optimizer step ``step`` of the run."""

    def __init__(self, step: int, signum=signal.SIGINT):
        self.step, self.signum = step, signum

    def on_step(self, run):
        if run.metrics.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def test_resume_after_a_kill_matches_an_uninterrupted_run(make_cfg, tmp_path):
    train(make_cfg(*RECIPE), tmp_path / "whole")
    with pytest.raises(Killed):
        train(make_cfg(*RECIPE), tmp_path / "killed", callbacks=(KillAfterEpoch(1),))
    assert not (tmp_path / "killed" / "summary.json").exists()
    train(make_cfg(*RECIPE, f"resume={tmp_path / 'killed'}"), tmp_path / "killed")
    assert_same_run(tmp_path / "whole", tmp_path / "killed")


def test_sigint_mid_epoch_saves_a_state_that_resumes_exactly(make_cfg, tmp_path):
    train(make_cfg(*RECIPE), tmp_path / "whole")
    with pytest.raises(Interrupted) as info:  # epoch 2, step 5 of 12
        train(make_cfg(*RECIPE), tmp_path / "int", callbacks=(SignalAtStep(17),))
    assert info.value.exit_code == 130
    assert "SIGINT in epoch 2 after step 5" in str(info.value) and "resume=" in str(info.value)
    saved = read_state(tmp_path / "int" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1 and saved["partial"]["step"] == 5
    assert len(read_metrics(tmp_path / "int")) == 1
    train(make_cfg(*RECIPE, f"resume={tmp_path / 'int'}"), tmp_path / "int")
    assert_same_run(tmp_path / "whole", tmp_path / "int")


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_exit_status_and_message_from_the_cli(tiny_idx, tmp_path, signum, code):
    script = textwrap.dedent(f"""
        import os, signal, sys
        from cnnlab.run.metrics import MetricsWriter
        real = MetricsWriter.step
        def step(self, lr):
            real(self, lr)
            if self.global_step == 3:
                os.kill(os.getpid(), {int(signum)})
        MetricsWriter.step = step
        from cnnlab.cli import main
        main(sys.argv[1:])
    """)
    args = [f"dataset.root={tiny_idx}", "trainer.device=cpu", "trainer.tensorboard=false",
            "hydra.run.dir=run", "trainer.progress=plain", "trainer.batch_size=32",
            "trainer.max_epochs=2"]  # fmt: skip

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-c", script, "train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == code, proc.stderr
    name = signal.Signals(signum).name
    assert f"Stopped by {name} in epoch 1 after step 3" in proc.stderr
    assert f"cnnlab train resume={tmp_path / 'run'}" in proc.stderr and "Traceback" not in proc.stderr
    assert read_state(tmp_path / "run" / "checkpoints" / "last.pt")["partial"]["step"] == 3
    done = run_cli("train", "resume=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_run"] == 2


def test_resume_refuses_a_changed_config(make_cfg, tmp_path, monkeypatch):
    run = tmp_path / "r"
    train(make_cfg("trainer.max_epochs=1"), run)
    with pytest.raises(ConfigError, match=r"different config \(optimizer\.lr changed\)"):
        train(make_cfg("trainer.max_epochs=2", "optimizer.lr=0.5", f"resume={run}"), run)
    summary = train(make_cfg("trainer.max_epochs=2", f"resume={run}"), run)  # longer is allowed
    assert summary["epochs_run"] == 2 and [r["epoch"] for r in read_metrics(run)] == ["1", "2"]


def composed(*overrides):
    from cnnlab.commands.train import _compose, _task

    return _task(_compose(list(overrides)))


def fake_run(root, name, overrides, *, finished=False):
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(composed(*overrides), resolve=True))
    # A record for people only: resume=auto compares stored configs, never these strings.
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["+experiment=../../../evil"]))
    if finished:
        (run / "summary.json").write_text("{}")
    return run


def test_resume_auto_picks_the_newest_unfinished_run_with_the_same_config(tmp_path):
    old = fake_run(tmp_path, "a", ["model=mlp"])
    fake_run(tmp_path, "b", ["model=mlp"], finished=True)
    (fake_run(tmp_path, "e", ["model=mlp"]) / "status.json").write_text('{"status": "diverged"}')
    fake_run(tmp_path, "c", ["model=lenet"])
    (fake_run(tmp_path, "f", ["model=mlp"]) / ".hydra" / "config.yaml").write_text("a: ${oc.env:HOME}\n")
    os.utime(old / "checkpoints" / "last.pt", (1, 1))
    new = fake_run(tmp_path, "d", ["model=mlp", "trainer.max_epochs=9"])  # max_epochs may change
    assert find_auto(composed("model=mlp"), tmp_path) == new
    with pytest.raises(ConfigError, match="no unfinished run"):
        find_auto(composed("model=simplecnn"), tmp_path)


def test_resume_refusals_name_the_cause(tmp_path):
    from cnnlab.commands.train import check_not_finished, check_resume_target
    from cnnlab.run.layout import RunDir

    with pytest.raises(ConfigError, match="no such run directory"):
        check_resume_target(RunDir(tmp_path / "zzz"))
    (tmp_path / "early").mkdir()
    with pytest.raises(ConfigError, match=r"no checkpoints/last\.pt \(it stopped before its first epoch"):
        check_resume_target(RunDir(tmp_path / "early"))
    done = fake_run(tmp_path, "done", [], finished=True)
    (done / "summary.json").write_text('{"epochs_run": 2}')
    with pytest.raises(ConfigError, match=r"has finished \(2 epochs.*trainer.max_epochs=<more than 2>"):
        check_not_finished(RunDir(done), composed("trainer.max_epochs=2"))  # the resumed run's config
    check_not_finished(RunDir(done), composed("trainer.max_epochs=5"))  # training longer is allowed


def test_divergence_names_epoch_and_step_and_marks_the_run(make_cfg, tmp_path):
    run = tmp_path / "d"
    with pytest.raises(DivergedError, match=r"diverged in epoch 1 at step \d+: the loss became (nan|inf)"):
        train(make_cfg("optimizer=sgd", "optimizer.lr=1e6", "trainer.channels_last=false"), run)
    assert not (run / "summary.json").exists() and not (run / "checkpoints" / "last.pt").exists()


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_divergence_from_the_cli_exits_3_and_is_recorded(tiny_idx, tmp_path):
    proc = run_cli("train", f"dataset.root={tiny_idx}", "optimizer=sgd", "optimizer.lr=1e6",
                   "trainer.tensorboard=false", "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 3 and "Training diverged in epoch 1 at step" in proc.stderr
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "diverged"


def test_a_second_ctrl_c_aborts_at_once():
    from cnnlab.engine.interrupt import SignalGuard

    before = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN in a job started in the background
    with SignalGuard() as guard, guard.polling("training"):
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested() and guard.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_a_folder_killed_before_its_first_checkpoint_can_take_a_new_run(tmp_path):
    from cnnlab.run.layout import RunDir
    from cnnlab.run.workspace import check_fresh, claim

    run = RunDir(tmp_path / "run")
    (run.path / ".hydra").mkdir(parents=True)
    run.status_file.write_text('{"status": "interrupted", "stage": "loading data"}')
    check_fresh(run, resume=False)
    with claim(run, resume=False):
        assert not run.status_file.exists()  # the killed attempt's record is not the new run's
    run.last.parent.mkdir()
    run.last.write_bytes(b"x")
    with pytest.raises(ConfigError, match="already holds a run"):
        check_fresh(run, resume=False)


def test_resume_of_a_run_in_its_first_epoch_names_the_process_writing_it(tmp_path):
    from cnnlab.commands.train import check_resume_target
    from cnnlab.run.layout import RunDir
    from cnnlab.run.lock import FolderLocked

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom cnnlab.run import lock\n"
         "with lock.hold(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)\n", str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLocked, match=rf"is being written by pid {holder.pid} "):
            check_resume_target(RunDir(run))
    finally:
        holder.kill()
        holder.wait()
