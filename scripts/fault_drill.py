"""Run every fault of issues 8 and 17 against the CLI and print what happened.

    python scripts/fault_drill.py [--keep DIR] [--jobs N] [--only WORD]

Each case runs ``cnnlab ...`` in a subprocess on tiny data it writes (with the test suite's writers)
and holds when: the exit code is the expected one, the output holds the expected fragment of the
message, no traceback and no Hydra "Error executing job" line was printed, every file that must survive
did, nothing that must not exist does (a marker a hostile file would have written, a half-written file),
and no temp file (``*.tmp``) is left in the case's folder. Cases share two trained runs (copied where a
case changes one). Prints a table; exits 1 if any case does not hold.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test suite's data writers

from tests.conftest import SIGNAL_AT, write_tiny_idx  # noqa: E402
from tests.test_data_cifar import Exploit, fake_batches, write_bin, write_py, write_tree, zip_tree  # noqa: E402
from tests.test_data_folders import write, write_food11  # noqa: E402

FAST = ["trainer.device=cpu", "trainer.tensorboard=false", "trainer.progress=plain", "trainer.batch_size=32",
        "trainer.threads=1"]  # fmt: skip
FOOD = ["dataset=food11", "dataset.image_size=16", "dataset.cache=false", "dataset.num_workers=0"]


@dataclass
class Result:
    code: int
    message: str
    survived: str
    holds: bool


@dataclass
class Case:
    """What a case ran and what must hold afterwards."""

    proc: subprocess.CompletedProcess
    code: int
    expect: str
    keep: list[Path] = field(default_factory=list)  # must exist afterwards
    gone: list[Path] = field(default_factory=list)  # must not exist
    ok: bool = True  # a case's own extra condition
    note: str = ""


class Drill:
    def __init__(self, work: Path):
        self.work = work

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cli(self, *args: str, cwd: Path, signal_at: tuple[str, int, str] | None = None, preexec=None):
        """``cnnlab <args>``, or with a real signal sent when ``module.function`` is called."""
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        head = ["-m", "cnnlab"]
        if signal_at is not None:
            head = ["-c", SIGNAL_AT, signal_at[0], str(signal_at[1]), signal_at[2]]
        return subprocess.run([sys.executable, *head, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600, preexec_fn=preexec)  # fmt: skip

    def idx(self) -> Path:
        return write_tiny_idx(self.work / "idx") if not (self.work / "idx").exists() else self.work / "idx"

    def base_run(self, name: str = "base-run", *extra: str) -> Path:
        """A finished 2-epoch run on the tiny IDX data, trained once."""
        run = self.work / name
        if not run.exists():
            proc = self.cli("train", f"dataset.root={self.idx()}", *FAST, "trainer.max_epochs=2", *extra,
                            f"hydra.run.dir={run}", cwd=self.work)  # fmt: skip
            if proc.returncode != 0:
                raise SystemExit(f"could not train {name}:\n{proc.stderr}")
            (run / "train-output.txt").write_text(proc.stdout + proc.stderr)
        return run

    def copy_run(self, name: str, base: str = "base-run") -> Path:
        target = self.folder(name) / "run"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.work / base, target)
        return target

    def train(self, name: str, *args: str, **kwargs) -> tuple[Path, subprocess.CompletedProcess]:
        """Train in a new case folder on the tiny IDX data; returns the run folder and the process."""
        folder = self.folder(name)
        run = folder / "run"
        return run, self.cli("train", f"dataset.root={self.idx()}", *FAST, *args, f"hydra.run.dir={run}",
                             cwd=folder, **kwargs)  # fmt: skip


def judge(case: Case, folder: Path) -> Result:
    out = case.proc.stdout + case.proc.stderr
    kept = [p for p in case.keep if p.exists()]
    present = [p for p in case.gone if p.exists()]
    temps = [p for p in folder.rglob("*") if p.name.endswith(".tmp")] if folder.is_dir() else []
    survived = ", ".join(p.name for p in kept) or "-"
    survived += f"; LEFT: {', '.join(p.name for p in present + temps)}" if present or temps else ""
    survived += f"; {case.note}" if case.note else ""
    holds = (
        case.proc.returncode == case.code and case.expect in out and "Traceback" not in out
        and "Error executing job" not in out and len(kept) == len(case.keep) and not present and not temps
        and case.ok
    )  # fmt: skip
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    said = [line for line in lines if case.expect and case.expect in line]  # the line the case looks for
    errors = [line.strip() for line in case.proc.stderr.splitlines() if line.strip()]
    message = (said or errors or lines or [""])[-1]
    return Result(case.proc.returncode, message[:150], survived, holds)


# ------------------------------------------------------------------------ the command line and config
def config_error(*args: str, expect: str, command: str = "train", before_data: bool = True):
    """A refused command: exit 2; with ``before_data`` refused before the run folder exists."""

    def case(d: Drill, name: str) -> Case:
        folder = d.folder(name)
        extra = (
            [f"dataset.root={d.idx()}", *FAST, f"hydra.run.dir={folder / 'run'}"]
            if command == "train"
            else []
        )
        proc = d.cli(command, *extra, *args, cwd=folder)
        return Case(
            proc, 2, expect, gone=[folder / "run"] if before_data else [folder / "run" / "checkpoints"]
        )

    return case


# ------------------------------------------------------------------------------------------- data
def food_with(make_bad: Callable[[Path], None], expect: str, code: int = 2, *extra: str):
    def case(d: Drill, name: str) -> Case:
        folder = d.folder(name)
        root = folder / "food"
        write_food11(root)
        (root / "train" / "2_99.jpg").unlink()  # write_food11's own truncated file; each case adds its own
        make_bad(root / "train")
        proc = d.cli("train", *FOOD, f"dataset.root={root}", *FAST, *extra, "trainer.max_epochs=1",
                     f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
        return Case(proc, code, expect, keep=[root / "train" / "0_0.jpg"])

    return case


def truncated_jpeg(train: Path) -> None:
    (train / "1_77.jpg").write_bytes((train / "0_0.jpg").read_bytes()[:150])


def huge_png(train: Path) -> None:  # 2 x PIL's limit in pixels; a 1-bit PNG keeps the file small
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 1
    Image.new("1", (side, side)).save(train / "1_80.png")


def idx_damaged(damage: Callable[[bytes], bytes], file: str, expect: str):
    def case(d: Drill, name: str) -> Case:
        data = write_tiny_idx(d.folder(name) / "idx")
        path = data / file
        path.write_bytes(gzip.compress(damage(gzip.decompress(path.read_bytes())), compresslevel=1))
        proc = d.cli(
            "train", f"dataset.root={data}", *FAST, f"hydra.run.dir={data.parent / 'run'}", cwd=data.parent
        )
        return Case(proc, 2, expect, keep=[path], gone=[data.parent / "run" / "checkpoints"])

    return case


def cifar_wrong_size(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    batches = write_bin(folder / "cifar" / "cifar-10-batches-bin", fake_batches())
    batch = batches / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    proc = d.cli("train", "dataset=cifar10", f"dataset.root={folder / 'cifar'}", *FAST,
                 f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    return Case(proc, 2, "data_batch_2.bin", keep=[batch])


def cifar_pickle_exploit(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    batches = write_py(folder / "cifar" / "cifar-10-batches-py", fake_batches())
    marker = folder / "PWNED"
    (batches / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(marker)}))
    proc = d.cli("train", "dataset=cifar10", f"dataset.root={folder / 'cifar'}", *FAST,
                 f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    return Case(proc, 2, "data_batch_1", keep=[batches / "data_batch_1"], gone=[marker])


def unreadable_folder(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    data = write_tiny_idx(folder / "idx")
    data.chmod(0)
    try:
        proc = d.cli("train", f"dataset.root={data}", *FAST, f"hydra.run.dir={folder / 'run'}", cwd=folder)
    finally:
        data.chmod(0o755)
    return Case(proc, 2, "cannot read")


def food11_wrong_root(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    (folder / "food" / "images").mkdir(parents=True)
    proc = d.cli("train", *FOOD, f"dataset.root={folder / 'food'}", *FAST, f"hydra.run.dir={folder / 'run'}",
                 cwd=folder)  # fmt: skip
    return Case(proc, 2, "train/")


def food11_course_layout(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    write_food11(folder / "food")
    (folder / "food" / "train" / "2_99.jpg").unlink()
    for old, new in (("train", "training"), ("valid", "validation"), ("test", "evaluation")):
        (folder / "food" / old).rename(folder / "food" / new)
    proc = d.cli("train", *FOOD, f"dataset.root={folder / 'food'}", *FAST, "trainer.max_epochs=1",
                 f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    return Case(proc, 0, "cnnlab predict run=", keep=[folder / "run" / "summary.json"])


def imagefolder_classes(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for label in ("cat", "dog"):
            for i in range(n):
                write(folder / "pets" / split / label / f"{i}.png", seed=i, shape=(12, 12))
    proc = d.cli("train", "dataset=imagefolder", f"dataset.root={folder / 'pets'}", "dataset.image_size=8",
                 "dataset.cache=false", "dataset.num_workers=0", *FAST, "trainer.max_epochs=1",
                 f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    return Case(proc, 0, "test acc", keep=[folder / "run" / "summary.json"])


def verify_bad_files(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    root = folder / "food"
    write_food11(root)  # with its truncated train/2_99.jpg
    proc = d.cli(
        "data", "verify", "dataset=food11", f"dataset.root={root}", "dataset.num_workers=0", cwd=folder
    )
    out = proc.stdout + proc.stderr
    once = out.count("2_99.jpg") == 1 and str(root) in out
    return Case(
        proc, 1, "2_99.jpg", keep=[root / "train" / "2_99.jpg"], ok=once, note="named once, folder named"
    )


def skip_warning(d: Drill, name: str) -> Case:
    case = food_with(truncated_jpeg, "skipping", 0, "dataset.on_bad_image=skip")(d, name)
    case.ok = "on_bad_image=skip" not in case.proc.stdout + case.proc.stderr
    return case


def stale_cache_temp(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    write_tree(folder / "tree")
    archive = zip_tree(folder / "tree", folder / "cifar10-jpg.zip")
    stale = folder / "cache" / ".cifar10-jpg-0123456789ab.x1y2z3.tmp"  # a killed unpack's folder
    (stale / "train").mkdir(parents=True)
    proc = d.cli("data", "verify", "dataset=cifar10", f"dataset.root={archive}", "dataset.num_workers=0",
                 f"dataset.cache_dir={folder / 'cache'}", cwd=folder)  # fmt: skip
    return Case(proc, 0, "", gone=[stale])


def gzip_bomb(raw: bytes) -> bytes:
    return raw + bytes(64 * 2**20)  # 64 MiB past what the header promises (64 KB of gzip)


# -------------------------------------------------------------------------------------- run folders
def predict_with(damage: Callable[[Path], None], expect: str, marker: str = ""):
    def case(d: Drill, name: str) -> Case:
        run = d.copy_run(name)
        damage(run)
        proc = d.cli("predict", f"run={run}", cwd=run.parent)
        gone = [run / "submission.csv"] + ([run.parent / marker] if marker else [])
        return Case(proc, 2, expect, keep=[run / "checkpoints" / "last.pt"], gone=gone)

    return case


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
    first = signal_at("cnnlab.train.Predictor", signal.SIGINT, "testing")(d, name)
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


def sweep_with_cfg(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    proc = d.cli("train", "-m", f"dataset.root={d.idx()}", "optimizer.lr=0.1,0.2", "--cfg", "job", cwd=folder)
    return Case(proc, 2, "Only one of --run, --multirun, --cfg", gone=[folder / "multirun"])


def no_arguments(d: Drill, name: str) -> Case:
    return Case(d.cli(cwd=d.folder(name)), 2, "usage: cnnlab <command>")


DRILLS: list[tuple[str, Callable[[Drill, str], Case]]] = [
    # the command line and the config: one line, exit 2, nothing written
    ("unknown config key", config_error("model=mlp", "model.dropuot=0.1", expect="Did you mean 'dropout'?")),
    ("unknown choice", config_error("model=lenett", expect="Did you mean 'lenet'?")),
    (
        "+key the schema lacks: +optimiser=sgd",
        config_error("+optimiser=sgd", expect="Did you mean 'optimizer'?"),
    ),
    ("+trainer.max_epoch=3", config_error("+trainer.max_epoch=3", expect="Did you mean 'max_epochs'?")),
    ("optimizer.learning_rate", config_error("optimizer.learning_rate=0.1", expect="Did you mean 'lr'?")),
    (
        "momentum 2",
        config_error("optimizer=sgd", "optimizer.momentum=2", expect="momentum must be in [0, 1]"),
    ),
    (
        "dampening -1",
        config_error("optimizer=sgd", "optimizer.dampening=-1", expect="dampening must be in [0, 1]"),
    ),
    (
        "betas [0.9, 1.0]",
        config_error("optimizer.betas=[0.9,1.0]", expect="betas must be two numbers in [0, 1)"),
    ),
    (
        "rmsprop alpha 1",
        config_error("optimizer=rmsprop", "optimizer.alpha=1", expect="alpha must be in [0, 1)"),
    ),
    ("eps 0", config_error("optimizer.eps=0", expect="eps must be greater than 0")),
    ("weight_decay -1", config_error("optimizer.weight_decay=-1", expect="weight_decay must be 0 or more")),
    ("lr nan", config_error("optimizer.lr=nan", expect="optimizer.lr must be greater than 0")),
    ("seed of 20 digits", config_error("seed=99999999999999999999", expect="is too large")),
    ("max_epochs of 5,000 digits", config_error("trainer.max_epochs=" + "9" * 5000, expect="5,000 digits")),
    (
        "${oc.env:UNSET}",
        config_error("dataset.root=${oc.env:CNNLAB_DRILL_UNSET}", expect="could not be resolved"),
    ),
    ("experiment= without +", config_error("experiment=fast_mnist", expect="+experiment=<name>")),
    ("-m with --cfg", sweep_with_cfg),
    ("unknown command", config_error(expect="unknown command 'trian'", command="trian")),
    ("cnnlab without a command", no_arguments),
    # data: broken and hostile files
    ("truncated JPEG in food11 train/", food_with(truncated_jpeg, "not a readable image")),
    (
        "PNG that is not an image",
        food_with(lambda t: (t / "1_78.png").write_text("text"), "not a readable image"),
    ),
    ("zero-byte image", food_with(lambda t: (t / "1_79.jpg").write_bytes(b""), "not a readable image")),
    ("huge image (decompression bomb)", food_with(huge_png, "decompression-bomb")),
    ("on_bad_image=skip: a warning, no advice to set it", skip_warning),
    (
        "IDX with a wrong magic number",
        idx_damaged(lambda r: r[:2] + b"\x0d" + r[3:], "t10k-images-idx3-ubyte.gz", "not an IDX file"),
    ),
    ("IDX with short data", idx_damaged(lambda r: r[:-100], "train-images-idx3-ubyte.gz", "truncated")),
    ("IDX gzip bomb", idx_damaged(gzip_bomb, "train-images-idx3-ubyte.gz", "more data than its header")),
    ("CIFAR batch of the wrong size", cifar_wrong_size),
    ("CIFAR pickle that runs code", cifar_pickle_exploit),
    ("data folder that cannot be read", unreadable_folder),
    ("food11 root without train/ valid/ test/", food11_wrong_root),
    ("food11 as training/ validation/ evaluation/", food11_course_layout),
    ("imagefolder: classes from the folders", imagefolder_classes),
    ("data verify: bad file once, folder named", verify_bad_files),
    (
        "image_size too small for the model",
        config_error("dataset.image_size=3", expect="at least 12 pixels", before_data=False),
    ),
    ("temp folder of a killed unpack", stale_cache_temp),
    # run folders: damaged, forged and hostile files
    ("checkpoint of another model", predict_with(other_models_weights, "do not fit the model")),
    ("checkpoint pickle that runs code", predict_with(hostile_pickle, "can be loaded safely", "PWNED")),
    ("safetensors epoch='abc'", predict_with(metadata("epoch", "abc"), "not a number of epochs")),
    ("safetensors mean=[]", predict_with(metadata("mean", []), "one per channel")),
    ("safetensors config='[1,2]'", predict_with(metadata("config", "[1,2]"), "not a cnnlab config")),
    ("safetensors std=[0]", predict_with(metadata("std", [0]), "must be greater than 0")),
    ("resume: last.pt without rng", resume_with(edit_last(lambda s: s.pop("rng")), "lacks rng")),
    ("resume: weights of the wrong shape", resume_with(edit_last(wrong_shape), "last.pt")),
    (
        "resume: metrics.csv garbage",
        resume_with(lambda r: (r / "metrics.csv").write_text("garbage,xx\n1,2,3\n"), "metrics.csv"),
    ),
    (
        "resume: overrides.yaml not YAML",
        resume_with(lambda r: (r / ".hydra" / "overrides.yaml").write_text("- a: [\n"), "not valid YAML"),
    ),
    (
        "resume: overrides.yaml with a number",
        resume_with(
            lambda r: (r / ".hydra" / "overrides.yaml").write_text("- 3\n"), "list of key=value strings"
        ),
    ),
    ("resume=auto past a truncated status.json", resume_auto_skips_truncated_status),
    ("viz curves: binary metrics.csv", curves_of_binary_metrics),
    ("runs: truncated summary.json", runs_lists_broken(lambda r: (r / "summary.json").write_text('{"best'))),
    (
        "runs: summary.json holding a list",
        runs_lists_broken(lambda r: (r / "summary.json").write_text("[1, 2]")),
    ),
    (
        "runs: unparsable .hydra/config.yaml",
        runs_lists_broken(lambda r: (r / ".hydra" / "config.yaml").write_text("model: [\n")),
    ),
    ("runs of two datasets: grouped", runs_group_datasets),
    ("temp file of a killed checkpoint write", stale_run_temp),
    ("evaluate scored otherwise keeps training's report", evaluate_keeps_the_report),
    # the machine
    ("output dir not writable", unwritable_output),
    ("disk fills while checkpointing", disk_full),
    # signals
    ("Ctrl-C during training", signal_in_epoch(signal.SIGINT)),
    ("SIGTERM during training (preemption)", signal_in_epoch(signal.SIGTERM)),
    ("SIGHUP during training (terminal closed)", signal_in_epoch(signal.SIGHUP)),
    ("resume after Ctrl-C", signal_in_epoch(signal.SIGINT, resume=True)),
    ("SIGTERM while loading data", signal_at("cnnlab.train.build_data", signal.SIGTERM, "loading data")),
    (
        "SIGTERM while unpacking the CIFAR zip",
        signal_at("cnnlab.data.cifar._extract", signal.SIGTERM, "loading data", when="after", data="zip"),
    ),
    (
        "SIGTERM from outside while workers decode",
        signal_at(
            "cnnlab.data.images.open_image", signal.SIGTERM, "loading data", when="worker", data="food"
        ),
    ),
    ("SIGHUP while building the model", signal_at("cnnlab.train.build_model", signal.SIGHUP, "building")),
    ("SIGINT while testing, then resume", testing_then_resume),
    (
        "SIGTERM while writing the report",
        signal_at("cnnlab.report.evaluate.write_curves", signal.SIGTERM, "report"),
    ),
    # the run itself
    ("loss becomes NaN", divergence),
    ("train: no grad_norm column unclipped, no tables", quiet_run),
    ("export: no warnings or exporter notes", export_quiet),
]


def run_case(drill: Drill, index: int, name: str, make: Callable) -> Result:
    slug = f"{index:02d}"
    if make is unreadable_folder and os.geteuid() == 0:  # root reads every folder: nothing to refuse
        return Result(0, "skipped: running as root, which can read a chmod 000 folder", "-", True)
    try:
        return judge(make(drill, slug), drill.work / slug)
    except Exception as exc:  # a case that could not even run does not hold
        return Result(-1, f"drill error: {type(exc).__name__}: {exc}"[:150], "-", False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--only", default="", help="run the cases whose name contains one of these words "
                        "(comma-separated)")  # fmt: skip
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cnnlab-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    drill = Drill(work)
    started = time.perf_counter()
    drill.base_run()
    drill.base_run("mlp-run", "model=mlp", "trainer.max_epochs=1")
    words = args.only.split(",")
    chosen = [(i, name, make) for i, (name, make) in enumerate(DRILLS, 1) if any(w in name for w in words)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda c: run_case(drill, *c), chosen))
    width = max(len(name) for _, name, _ in chosen)
    print(f"{'#':>2}  {'fault':<{width}}  exit  holds  message  [survived on disk]")
    for (i, name, _), r in zip(chosen, results, strict=True):
        holds = "yes" if r.holds else "NO"
        print(f"{i:>2}  {name:<{width}}  {r.code:>4}  {holds:>5}  {r.message}  [{r.survived}]")
    held = sum(r.holds for r in results)
    print(f"{held} of {len(results)} hold ({time.perf_counter() - started:.0f} s)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if held == len(results) else 1)


if __name__ == "__main__":
    main()
