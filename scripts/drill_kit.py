"""The fault drill's kit (see fault_drill.py): how a case runs the CLI, what it must leave, its verdict."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test suite's data writers

from tests.conftest import SIGNAL_AT, write_tiny_idx  # noqa: E402

FAST = ["trainer.device=cpu", "trainer.tensorboard=false", "trainer.progress=plain", "trainer.batch_size=32",
        "trainer.threads=1"]  # fmt: skip
FOOD = ["dataset=food11", "dataset.image_size=16", "dataset.cache=false", "dataset.num_workers=0"]


@dataclass
class Result:
    code: int
    message: str
    survived: str
    holds: bool
    skipped: bool = False  # the case could not be tried here (e.g. as root): neither held nor failed


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

    def cli(self, *args: str, cwd: Path, signal_at: tuple[str, int, str] | None = None, preexec=None,
            env: dict[str, str] | None = None, timeout: float = 600):  # fmt: skip
        """``cnnlab <args>`` (with ``env`` added to the environment), or with a real signal sent when
        ``module.function`` is called."""
        env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        head = ["-m", "cnnlab"]
        if signal_at is not None:
            head = ["-c", SIGNAL_AT, signal_at[0], str(signal_at[1]), signal_at[2]]
        return subprocess.run([sys.executable, *head, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=preexec)  # fmt: skip

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
