"""A run folder you can trust: nothing stored in it runs code, a refused command changes nothing, one
writer at a time, writes stay inside the folder, and one scoring path from training to predict."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.run import lock
from cnnlab.run.checkpoints import read_state, write_state
from cnnlab.run.layout import RunDir, find_runs
from cnnlab.run.resume import find_auto
from tests.conftest import run_cli, write_tiny_idx

FAST = ["trainer.device=cpu", "trainer.tensorboard=false", "trainer.progress=plain", "trainer.batch_size=32",
        "trainer.precision=32", "trainer.threads=1"]  # fmt: skip
FIXTURE = Path(__file__).parent / "fixtures" / "run_v0"  # written by cnnlab before the run-folder owner


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock file aside) with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RunDir(folder).lock_file.name
    }


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch LeNet run, trained once through the CLI; tests copy it before changing it."""
    base = tmp_path_factory.mktemp("finished")
    data = write_tiny_idx(base / "data")
    proc = run_cli(
        "train", f"dataset.root={data}", *FAST, "trainer.max_epochs=2", "hydra.run.dir=run", cwd=base
    )
    assert proc.returncode == 0, proc.stderr
    return base / "run"


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# -------------------------------------------------------------------------- nothing in a run folder runs
def forge_config(run: Path, model: dict) -> None:
    """Put ``model`` into the config stored in best.pt (and drop best.safetensors, read first)."""
    state = read_state(run / "checkpoints" / "best.pt")
    cfg = OmegaConf.to_container(OmegaConf.create(state["config"]))
    cfg["model"] = model
    state["config"] = yaml.safe_dump(cfg)
    write_state(state, run / "checkpoints" / "best.pt")
    (run / "checkpoints" / "best.safetensors").unlink()


def hostile_models(tmp_path: Path) -> dict[str, dict]:
    marker = tmp_path / "pwned"
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(
        f"open({str(marker)!r}, 'w').write('hub')\ndef evil(**kw):\n    return None\n"
    )

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pickled = tmp_path / "payload.pkl"
    pickled.write_bytes(pickle.dumps(Payload()))
    lenet = {"_target_": "cnnlab.models.lenet.LeNet", "name": "lenet", "activation": "relu", "pool": "max",
             "channels": [6, 16], "fc": [120, 84]}  # fmt: skip
    return {
        "torch.hub.load nested in a model option": {
            **lenet,
            "activation": {
                "_target_": "torch.hub.load",
                "repo_or_dir": str(hub),
                "model": "evil",
                "source": "local",
                "trust_repo": True,
            },
        },
        "torch.load weights_only false": {"_target_": "torch.load", "f": str(pickled), "weights_only": False},
        "torch.os.system": {"_target_": "torch.os.system", "command": f"touch {marker}"},
        "a partial call": {**lenet, "_partial_": True},
    }


@pytest.mark.parametrize("case", ["torch.hub.load nested in a model option", "torch.load weights_only false",
                                  "torch.os.system", "a partial call"])  # fmt: skip
@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "viz filters"])
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_a_stored_config_that_names_code_is_refused_and_nothing_runs(finished_run, tmp_path, case, command):
    run = copy_run(finished_run, tmp_path)
    forge_config(run, hostile_models(tmp_path)[case])
    before = snapshot(run)
    proc = run_cli(*command.split(), f"run={run}", cwd=tmp_path)
    message = one_line_error(proc)
    assert "does not build" in message or "Hydra's _" in message
    assert not (tmp_path / "pwned").exists()
    assert snapshot(run) == before


def test_resume_never_reads_stored_overrides_so_nothing_in_them_runs(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "summary.json").unlink()  # an unfinished run, so resume would otherwise go ahead
    marker = tmp_path / "pwned"
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    overrides += ["+hydra.callbacks.evil._target_=os.system", f"+hydra.callbacks.evil.command=touch {marker}"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    proc = run_cli("train", f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]  # overrides.yaml is a record, not replayed
    assert not marker.exists()


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_a_broken_overrides_yaml_does_not_stop_a_resume(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "summary.json").unlink()
    (run / ".hydra" / "overrides.yaml").write_text("[unclosed")  # a record for people: never read back
    proc = run_cli("train", f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ----------------------------------------------------------------------- a refused command changes nothing
@pytest.mark.slow
def test_a_refused_resume_leaves_every_file_byte_identical(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "summary.json").unlink()
    before = snapshot(run)
    for _ in range(2):  # refused twice: nothing piles up
        message = one_line_error(run_cli("train", f"resume={run}", "optimizer.lr=0.1", cwd=tmp_path))
        assert "optimizer.lr changed" in message
        assert snapshot(run) == before
    done = run_cli(
        "train", f"resume={run}", "trainer.max_epochs=3", cwd=tmp_path
    )  # the plain resume still works
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 3
    assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) == yaml.safe_load(
        (finished_run / ".hydra" / "overrides.yaml").read_text()
    )  # the run's own overrides, not the resume's


def test_a_new_run_into_a_used_folder_is_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    data = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())[0].split("=", 1)[1]
    message = one_line_error(
        run_cli("train", f"dataset.root={data}", *FAST, f"hydra.run.dir={run}", cwd=tmp_path)
    )
    assert "already holds a run" in message and f"resume={run}" in message
    assert snapshot(run) == before


@pytest.mark.slow
def test_options_are_checked_before_any_data_is_read(make_cfg, tmp_path):
    from cnnlab.train import train

    bad = [("scheduler=step", "+scheduler.options.gama=0.5", "gama"),
           ("augmentation=standard", "augmentation.rotation=500", "rotation"),
           ("trainer.tta=flop", "trainer.ema=null", "tta"),
           ("+trainer.max_epoch=3", "trainer.ema=null", "Did you mean 'max_epochs'"),
           ("+optimiser=sgd", "trainer.ema=null", "Did you mean 'optimizer'")]  # fmt: skip
    for first, second, fragment in bad:
        with pytest.raises(ConfigError, match=fragment):
            train(make_cfg(first, second, f"dataset.root={tmp_path / 'no-data-here'}"), tmp_path / "r")
        message = one_line_error(run_cli("train", first, second, f"dataset.root={tmp_path / 'no-data-here'}",
                                         "hydra.run.dir=r2", cwd=tmp_path))  # fmt: skip
        assert fragment.split("'")[0] in message and "no-data-here" not in message
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


# ------------------------------------------------------------------------------------------- one writer
@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path):
    data = write_tiny_idx(tmp_path / "data")
    args = ["train", f"dataset.root={data}", *FAST, "trainer.max_epochs=500", "trainer.patience=null",
            "hydra.run.dir=run"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    first = subprocess.Popen([sys.executable, "-m", "cnnlab", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    run = tmp_path / "run"
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.csv").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lock.is_locked(run) and first.poll() is None
        second = run_cli("train", f"dataset.root={data}", *FAST, "hydra.run.dir=run", cwd=tmp_path)
        assert f"pid {first.pid}" in one_line_error(second)
        assert "no unfinished run" in one_line_error(run_cli("train", "resume=auto", cwd=tmp_path))
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err
    epochs = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(1, len(epochs) + 1))  # one writer: no interleaved or repeated epochs
    assert read_state(run / "checkpoints" / "last.pt")["config"]
    done = run_cli("train", "resume=run", "trainer.max_epochs=" + str(len(epochs) + 1), cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # the lock died with the process


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from cnnlab.run import lock\n"
        f"with lock.hold({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)"
    )], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    assert lock.is_locked(tmp_path)
    with pytest.raises(lock.FolderLocked, match=f"pid {holder.pid}"), lock.hold(tmp_path):
        pass
    holder.kill()
    holder.wait()
    assert not lock.is_locked(tmp_path)
    with lock.hold(tmp_path), lock.hold(tmp_path):  # re-entrant within a process
        assert not lock.is_locked(tmp_path)


def test_resume_auto_skips_a_run_another_process_writes(tmp_path):
    from tests.test_resume import composed, fake_run

    (tmp_path / "outputs").mkdir()
    run = fake_run(tmp_path / "outputs", "a", [])
    now = composed()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from cnnlab.run import lock\n"
        f"with lock.hold({str(run)!r}):\n    print('held', flush=True); time.sleep(60)"
    )], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="no unfinished run"):
            find_auto(now, tmp_path / "outputs")
    finally:
        holder.kill()
        holder.wait()
    assert find_auto(now, tmp_path / "outputs") == run


# ---------------------------------------------------------------------- writes stay inside the run folder
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_a_symlinked_report_folder_is_not_written_through(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metrics.json").write_text("mine")
    shutil.rmtree(run / "report")
    (run / "report").symlink_to(elsewhere)
    for command in (["evaluate"], ["viz", "curves"]):
        message = one_line_error(run_cli(*command, f"run={run}", cwd=tmp_path))
        assert "symbolic link" in message
    assert [p.name for p in elsewhere.iterdir()] == ["metrics.json"]
    assert (elsewhere / "metrics.json").read_text() == "mine"


def test_runs_does_not_follow_a_symlink_loop_and_lists_a_broken_run(finished_run, tmp_path):
    root = tmp_path / "outputs"
    shutil.copytree(finished_run, root / "good")
    shutil.copytree(finished_run, root / "bad")
    (root / "bad" / "summary.json").write_text('{"best_val_acc": 0.5')  # truncated
    (root / "loop").symlink_to(root)
    assert [p.name for p in find_runs(root)] == ["bad", "good"]
    proc = run_cli("runs", str(root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "broken" in proc.stdout and "good" in proc.stdout


# ------------------------------------------------------------------------------------ one scoring path
def test_train_reads_its_data_once_and_scores_the_test_split_once(make_cfg, tmp_path, monkeypatch):
    from cnnlab.data import registry
    from cnnlab.run.load import Predictor
    from cnnlab.train import train

    reads, scored = [], []
    real_reader, real_log_probs = registry.FORMATS["idx"], Predictor.log_probs
    counting = dataclasses.replace(
        real_reader, read=lambda cfg, root: reads.append(1) or real_reader.read(cfg, root)
    )
    monkeypatch.setitem(registry.FORMATS, "idx", counting)
    monkeypatch.setattr(
        Predictor, "log_probs", lambda self, xb: scored.append(len(xb)) or real_log_probs(self, xb)
    )
    summary = train(make_cfg("trainer.precision=bf16", "trainer.eval_batch_size=40"), tmp_path / "run")
    assert len(reads) == 1
    assert sum(scored) == 100  # the 100 test images, once (in batches of 40)
    report = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    assert report["accuracy"] == summary["test_acc"] and report["n"] == 100  # exactly, bf16 too
    assert report["precision"] == "bf16"


@pytest.mark.slow
def test_predict_evaluate_viz_and_training_agree_with_flip_tta(tmp_path):
    data = write_tiny_idx(tmp_path / "data")
    run = tmp_path / "run"
    trained = run_cli("train", f"dataset.root={data}", *FAST[:-2], "trainer.tta=flip", "trainer.max_epochs=1",
                      "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads((run / "report" / "metrics.json").read_text())
    assert report["tta"] == "flip" and report["accuracy"] == summary["test_acc"]
    wrong = round((1 - summary["test_acc"]) * report["n"])
    evaluated = run_cli("evaluate", f"run={run}", "out=again", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["accuracy"] == summary["test_acc"]
    predicted = run_cli("predict", f"run={run}", "out=sub.csv", cwd=tmp_path)
    assert predicted.returncode == 0 and f"accuracy {summary['test_acc']:.4f}" in predicted.stdout
    drawn = run_cli("viz", "predictions", f"run={run}", cwd=tmp_path)
    assert drawn.returncode == 0 and f"{wrong} of {report['n']} test images wrong" in drawn.stdout, (
        drawn.stdout
    )
    no_tta = run_cli("predict", f"run={run}", "out=plain.csv", "tta=null", cwd=tmp_path)
    assert no_tta.returncode == 0 and "tta" not in no_tta.stdout.split("(")[-1]


@pytest.mark.slow
def test_evaluate_keeps_the_training_report_when_its_numbers_differ(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    before = (run / "report" / "metrics.json").read_text()
    proc = run_cli(
        "evaluate", f"run={run}", "ckpt=" + str(run / "checkpoints" / "last.pt"), "tta=2", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert (run / "report" / "metrics.json").read_text() == before
    [other] = [p for p in (run / "report").iterdir() if p.is_dir()]
    assert other.name == "evaluate_last_precision-32_tta-2" and (other / "metrics.json").is_file()


# -------------------------------------------------------------------- runs written before this change
@pytest.fixture
def old_run(tmp_path) -> Path:
    write_tiny_idx(tmp_path / "data", n_train=200, n_test=50)  # what the fixture was trained on
    return Path(shutil.copytree(FIXTURE, tmp_path / "run"))


@pytest.mark.slow
def test_a_run_from_before_still_predicts_and_evaluates(old_run, tmp_path):
    summary = json.loads((old_run / "summary.json").read_text())
    predicted = run_cli("predict", "run=run", "out=sub.csv", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert f"accuracy {summary['test_acc']:.4f}" in predicted.stdout
    evaluated = run_cli("evaluate", "run=run", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((old_run / "report" / "metrics.json").read_text())["accuracy"] == summary["test_acc"]
    exported = run_cli("export", "run=run", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr


@pytest.mark.slow
def test_a_run_from_before_still_resumes(old_run, tmp_path):
    (old_run / "summary.json").unlink()
    proc = run_cli("train", "resume=run", "trainer.max_epochs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((old_run / "summary.json").read_text())["epochs_run"] == 2
    assert [r.split(",")[0] for r in (old_run / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]
    assert torch.load(old_run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_run_file_names_are_spelled_only_in_the_layout_module():
    package = Path(__file__).parents[1] / "cnnlab"
    names = re.compile(r'"(checkpoints|summary\.json|status\.json|overrides\.yaml|metrics\.csv)"')
    spelled = {str(p.relative_to(package)) for p in package.rglob("*.py") if names.search(p.read_text())}
    # models/pretrained.py names torch.hub's own cache folder (<hub dir>/checkpoints), not a run's
    assert spelled == {"run/layout.py", "models/pretrained.py"}
