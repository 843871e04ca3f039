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

from cnnlab.engine.interrupt import Interrupted
from cnnlab.engine.loop import DivergedError
from cnnlab.errors import ConfigError
from cnnlab.run.checkpoints import read_state
from cnnlab.run.resume import resume_arguments
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


def fake_run(root, name, overrides, *, finished=False):
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if finished:
        (run / "summary.json").write_text("{}")
    return run


def test_resume_auto_picks_the_newest_unfinished_run_with_the_same_overrides(tmp_path):
    old = fake_run(tmp_path, "a", ["model=mlp"])
    fake_run(tmp_path, "b", ["model=mlp"], finished=True)
    (fake_run(tmp_path, "e", ["model=mlp"]) / "status.json").write_text('{"status": "diverged"}')
    fake_run(tmp_path, "c", ["model=lenet"])
    os.utime(old / "checkpoints" / "last.pt", (1, 1))
    new = fake_run(tmp_path, "d", ["model=mlp"])
    args = resume_arguments(["model=mlp", "resume=auto"], search=tmp_path)
    assert args == ["model=mlp", "model=mlp", f"resume={new}", f"hydra.run.dir={new}"]
    with pytest.raises(ConfigError, match="no unfinished run"):
        resume_arguments(["model=simplecnn", "resume=auto"], search=tmp_path)
    with pytest.raises(ConfigError, match=r"has no checkpoints/last\.pt"):
        resume_arguments([f"resume={tmp_path / 'zzz'}"], search=tmp_path)


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
