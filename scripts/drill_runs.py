"""Fault drill cases: damaged, forged and hostile run folders, the machine, signals, the run itself."""

from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from drill_kit import FAST, FOOD, ROOT, Case, Drill

from tests.test_data_cifar import Exploit, write_tree, zip_tree
from tests.test_data_folders import write_food11


# -------------------------------------------------------------------------------------- run folders
def predict_with(damage: Callable[[Path], None], expect: str, marker: str = ""):
    def case(d: Drill, name: str) -> Case:
        run = d.copy_run(name)
        damage(run)
        proc = d.cli("predict", f"run={run}", cwd=run.parent)
        gone = [run / "submission.csv"] + ([run.parent / marker] if marker else [])
        return Case(proc, 2, expect, keep=[run / "checkpoints" / "last.pt"], gone=gone)

    return case


def stored_option(value: str, checkpoints=("best.pt", "last.pt"), key: str = "activation"):
    """Damage: ``model.<key>`` of the config stored in the run's checkpoints set to ``value`` (a string
    that would run code if anything resolved or imported it); best.safetensors dropped."""

    def damage(run: Path) -> None:
        import yaml

        for name in checkpoints:
            path = run / "checkpoints" / name
            state = torch.load(path, weights_only=True)
            config = yaml.safe_load(state["config"])
            config["model"][key] = value
            state["config"] = yaml.safe_dump(config)
            torch.save(state, path)
        (run / "checkpoints" / "best.safetensors").unlink(missing_ok=True)

    return damage


def oc_create(marker: Path) -> str:
    return "${oc.create:{_target_: os.system, command: 'touch " + str(marker) + "'}}"


def hostile_stored_config(command: str, expect: str, key: str = "activation", value: str | None = None):
    """``command run=<run>`` on a run whose stored config holds ``oc.create`` (or ``value`` at
    ``model.<key>``): refused in one line, the payload's marker never made, nothing written."""

    def case(d: Drill, name: str) -> Case:
        run = d.copy_run(name)
        marker = run.parent / "PWNED"
        stored_option(value or oc_create(marker), key=key)(run)
        proc = d.cli(*command.split(), f"run={run}", cwd=run.parent)
        return Case(
            proc, 2, expect, keep=[run / "checkpoints" / "best.pt"], gone=[marker, run / "submission.csv"]
        )

    return case


def resume_ignores_stored_overrides(d: Drill, name: str) -> Case:
    """overrides.yaml holding every form that once ran code (a group path out of conf/, a package
    override into hydra.callbacks, -m, trust_config=true): a record, never replayed."""
    import yaml

    run = d.copy_run(name)
    marker = run.parent / "PWNED"
    evil = run.parent / "evil"
    evil.mkdir()
    callback = {"_target_": "os.system", "command": f"touch {marker}"}
    (evil / "evil.yaml").write_text(yaml.safe_dump({"hydra": {"callbacks": {"pwn": callback}}}))
    forms = [f"+experiment=../../../../../../../..{evil}/evil", "+model@hydra.callbacks.pwn=lenet", "-m",
             "trust_config=true", "--experimental-rerun=x.pickle"]  # fmt: skip
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(forms))
    proc = d.cli("train", f"resume={run}", "trainer.max_epochs=3", cwd=run.parent)
    return Case(proc, 0, "resuming", keep=[run / "summary.json"], gone=[marker])


def resume_refused(setup: Callable[[Path], None], expect: str, *args: str):
    """``train resume=<run>`` after ``setup``: one line, exit 2, the folder's last.pt as it was."""

    def case(d: Drill, name: str) -> Case:
        run = d.copy_run(name)
        setup(run)
        last = run / "checkpoints" / "last.pt"
        before = last.read_bytes() if last.is_file() else None
        proc = d.cli("train", f"resume={run}", *args, cwd=run.parent)
        same = (last.read_bytes() if last.is_file() else None) == before
        return Case(proc, 2, expect, ok=same, note="last.pt kept")

    return case


def no_last_checkpoint(run: Path) -> None:
    (run / "checkpoints" / "last.pt").unlink()
    (run / "summary.json").unlink()


def crafted_study(d: Drill, name: str) -> Case:
    """A study.db whose search space samples ``model._target_`` from ``torch.hub.load``: refused."""
    import optuna

    folder = d.folder(name) / "study"
    folder.mkdir()
    study = optuna.create_study(study_name="cnnlab", storage=f"sqlite:///{folder / 'study.db'}")
    study.set_user_attr("cnnlab.overrides", [f"+experiment=../../../..{folder}/evil"])
    study.set_user_attr("cnnlab.space", {"model._target_": json.dumps(
        {"name": "CategoricalDistribution", "attributes": {"choices": ["torch.hub.load"]}})})  # fmt: skip
    proc = d.cli("tune", f"tune.dir={folder}", "tune.n_trials=1", cwd=folder.parent)
    return Case(proc, 2, "does not hold a cnnlab study's config", gone=[folder / "0"])


def other_models_weights(run: Path) -> None:
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    state["model"] = torch.load(run.parents[1] / "mlp-run" / "checkpoints" / "best.pt", weights_only=True)[
        "model"
    ]
    torch.save(state, best)
    (run / "checkpoints" / "best.safetensors").unlink()


def hostile_pickle(run: Path) -> None:
    (run / "checkpoints" / "best.safetensors").unlink()
    (run / "checkpoints" / "best.pt").write_bytes(pickle.dumps({"model": Exploit(run.parent / "PWNED")}))


def metadata(key: str, value):
    def damage(run: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        path = run / "checkpoints" / "best.safetensors"
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        save_file(load_file(str(path)), str(path), metadata={**meta, key: json.dumps(value)})
        (run / "checkpoints" / "best.pt").unlink()

    return damage


def resume_with(damage: Callable[[Path], None], expect: str):
    """A finished run resumed for one more epoch, after ``damage``: refused, last.pt as it was."""

    def case(d: Drill, name: str) -> Case:
        run = d.copy_run(name)
        damage(run)
        before = (run / "checkpoints" / "last.pt").read_bytes()
        proc = d.cli("train", f"resume={run}", "trainer.max_epochs=3", cwd=run.parent)
        same = (run / "checkpoints" / "last.pt").read_bytes() == before
        return Case(proc, 2, expect, keep=[run / "checkpoints" / "best.pt"], ok=same, note="last.pt kept")

    return case


def edit_last(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / "checkpoints" / "last.pt"
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)

    return damage


def wrong_shape(state: dict) -> None:
    key = next(k for k, v in state["model"].items() if v.ndim > 1)
    state["model"][key] = torch.zeros(3, 3)


def curves_of_binary_metrics(d: Drill, name: str) -> Case:
    run = d.copy_run(name)
    (run / "metrics.csv").write_bytes(b"\x00\x01\xff" * 40)
    proc = d.cli("viz", "curves", f"run={run}", cwd=run.parent)
    return Case(proc, 2, "not a text file", keep=[run / "checkpoints" / "best.pt"])


def runs_lists_broken(damage: Callable[[Path], None]):
    def case(d: Drill, name: str) -> Case:
        run = d.copy_run(name)
        damage(run)
        proc = d.cli("runs", str(run.parent), "csv=false", cwd=run.parent)
        return Case(proc, 0, "broken", keep=[run / "checkpoints" / "best.pt"])

    return case


def resume_auto_skips_truncated_status(d: Drill, name: str) -> Case:
    run = d.copy_run(name)
    (run / "summary.json").unlink()
    (run / "status.json").write_text('{"status": "interr')
    outputs = run.parent / "outputs" / "2026-01-01"
    outputs.mkdir(parents=True)
    run.rename(outputs / "run")
    proc = d.cli(
        "train", f"dataset.root={d.idx()}", *FAST, "trainer.max_epochs=2", "resume=auto", cwd=run.parent
    )
    return Case(proc, 2, "no unfinished run", keep=[outputs / "run" / "checkpoints" / "last.pt"])


def stale_run_temp(d: Drill, name: str) -> Case:
    run = d.copy_run(name)
    stale = run / "checkpoints" / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    proc = d.cli("train", f"resume={run}", "trainer.max_epochs=3", cwd=run.parent)
    return Case(proc, 0, "resuming", keep=[run / "summary.json"], gone=[stale])


def evaluate_keeps_the_report(d: Drill, name: str) -> Case:
    run = d.copy_run(name)
    before = (run / "report" / "metrics.json").read_bytes()
    proc = d.cli("evaluate", f"run={run}", "tta=flip", cwd=run.parent)
    kept = (run / "report" / "metrics.json").read_bytes() == before
    other = [p for p in (run / "report").iterdir() if p.name.startswith("evaluate_")]
    return Case(proc, 0, "goes to report/evaluate_", keep=other, ok=kept and bool(other), note="report kept")


def runs_group_datasets(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    for run_name, dataset, acc in (("a", "mnist", 0.98), ("b", "cifar10", 0.6), ("c", "mnist", 0.99)):
        run = folder / "outputs" / run_name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"dataset:\n  name: {dataset}\n")
        (run / "summary.json").write_text(
            json.dumps({"best_val_acc": acc, "monitor": "val_acc", "best_value": acc})
        )
    proc = d.cli("runs", "outputs", "csv=false", cwd=folder)
    return Case(proc, 0, "dataset", ok=proc.stdout.find("cifar10") < proc.stdout.find("mnist"))


# -------------------------------------------------------------------------------------- environment
def unwritable_output(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    (folder / "a-file").write_text("")
    proc = d.cli(
        "train", f"dataset.root={d.idx()}", *FAST, f"hydra.run.dir={folder / 'a-file' / 'run'}", cwd=folder
    )
    return Case(proc, 2, "cannot use", keep=[folder / "a-file"])


def compile_without_a_compiler(d: Drill, name: str) -> Case:
    """trainer.compile where Inductor finds no C++ compiler (and has nothing cached to fall back on)."""
    folder = d.folder(name)
    env = {"CXX": str(folder / "no-such-c++"), "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor-cache")}
    proc = d.cli("train", f"dataset.root={d.idx()}", *FAST, "trainer.compile=true", "trainer.max_epochs=1",
                 f"hydra.run.dir={folder / 'run'}", cwd=folder, env=env)  # fmt: skip
    return Case(
        proc, 2, "torch.compile failed (InvalidCxxCompiler", gone=[folder / "run" / "checkpoints" / "last.pt"]
    )


def disk_full(d: Drill, name: str) -> Case:
    """Resume a finished run for more epochs under a file-size limit below a checkpoint's size."""
    run = d.copy_run(name)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    limit = len(before) // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    proc = d.cli("train", f"resume={run}", "trainer.max_epochs=4", cwd=run.parent, preexec=small_files)
    same = (run / "checkpoints" / "last.pt").read_bytes() == before
    return Case(
        proc, 2, "(File too large)", keep=[run / "checkpoints" / "best.pt"], ok=same, note="last.pt kept"
    )


# ------------------------------------------------------------------------------------------ signals
def signal_in_epoch(signum: int, *, resume: bool = False):
    def case(d: Drill, name: str) -> Case:
        folder = d.folder(name)
        run = folder / "run"
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cnnlab", "train", f"dataset.root={d.idx()}", *FAST,
             "trainer.batch_size=4", "trainer.max_epochs=50", "trainer.patience=null",
             f"hydra.run.dir={run}"],
            cwd=folder, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("epoch 1/"):
                time.sleep(0.2)  # into epoch 2
                proc.send_signal(signum)
                break
        rest = proc.stderr.read()
        proc.wait(timeout=300)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(lines) + rest)
        keep = [run / "checkpoints" / "last.pt", run / "metrics.csv", run / "status.json"]
        if not resume:
            return Case(done, 128 + signum, f"Stopped by {signal.Signals(signum).name} in epoch", keep=keep)
        again = d.cli("train", f"resume={run}", "trainer.max_epochs=2", cwd=folder)
        return Case(again, 0, "resuming", keep=[run / "summary.json"], ok=done.returncode == 128 + signum,
                    note=f"first exit {done.returncode}")  # fmt: skip

    return case


def signal_at(target: str, signum: int, stage: str, *, when: str = "before", data: str = "idx"):
    """A real signal when ``target`` is called: status.json names ``stage``, its leftovers are gone."""

    def case(d: Drill, name: str) -> Case:
        folder = d.folder(name)
        run = folder / "run"
        if data == "zip":
            write_tree(folder / "tree")
            args = ["dataset=cifar10", f"dataset.root={zip_tree(folder / 'tree', folder / 'c.zip')}"]
        elif data == "food":
            write_food11(folder / "food")
            (folder / "food" / "train" / "2_99.jpg").unlink()
            args = [*FOOD, f"dataset.root={folder / 'food'}", "dataset.num_workers=2", "dataset.cache=true"]
        else:
            args = [f"dataset.root={d.idx()}", "trainer.max_epochs=1"]
        cache = folder / "cache"
        proc = d.cli("train", *args, f"dataset.cache_dir={cache}", *FAST, f"hydra.run.dir={run}", cwd=folder,
                     signal_at=(target, signum, when))  # fmt: skip
        status = json.loads((run / "status.json").read_text()) if (run / "status.json").is_file() else {}
        cached = [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"] if data != "idx" else []
        return Case(proc, 128 + signum, f"while {'writing the report' if stage == 'report' else stage}",
                    keep=[run / "status.json"], ok=status.get("stage") == stage and not cached,
                    note=f"stage {status.get('stage')}{'; cache LEFT' if cached else ''}")  # fmt: skip

    return case


def testing_then_resume(d: Drill, name: str) -> Case:
    first = signal_at("cnnlab.train.ending.Predictor", signal.SIGINT, "testing")(d, name)
    run = d.work / name / "run"
    again = d.cli("train", f"resume={run}", cwd=run.parent)
    held = first.proc.returncode == 130 and first.ok
    return Case(again, 0, "test accuracy", keep=[run / "summary.json"], gone=[run / "status.json"], ok=held,
                note=f"first exit {first.proc.returncode}")  # fmt: skip


# ----------------------------------------------------------------------------------- the run itself
def divergence(d: Drill, name: str) -> Case:
    run, proc = d.train(name, "optimizer=sgd", "optimizer.lr=1e6", "trainer.max_epochs=3")
    return Case(
        proc, 3, "Training diverged in epoch 1", keep=[run / "status.json"], gone=[run / "summary.json"]
    )


def quiet_run(d: Drill, name: str) -> Case:
    run = d.work / "base-run"
    output = (run / "train-output.txt").read_text()
    header = (run / "metrics.csv").read_text().splitlines()[0]
    proc = subprocess.CompletedProcess([], 0, output, "")
    ok = (
        "grad_norm" not in header
        and "per class (accuracy = recall)" not in output
        and "macro F1" not in output
    )
    return Case(proc, 0, "test accuracy", ok=ok, note="no grad_norm column, no evaluation tables")


def export_quiet(d: Drill, name: str) -> Case:
    run = d.copy_run(name)
    proc = d.cli("export", f"run={run}", "format=torchscript", cwd=run.parent)
    one = len(proc.stderr.strip().splitlines()) == 1
    return Case(proc, 0, "exported", keep=[run / "export" / "lenet.torchscript.pt"], ok=one, note="one line")
