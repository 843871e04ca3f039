"""The GPU check of issue 18: cnnlab's fast presets, ResNet-18 and bare loops on one GPU, as one table.

    CNNLAB_DATA=../shared/datasets python scripts/gpu_check.py             # on a GPU, at most ~8 minutes
    python scripts/gpu_check.py --runs fast_mnist                         # only what MNIST data allows
    python scripts/gpu_check.py --device cpu --smoke                      # the same steps on a CPU, ~1 min

What it runs, in this order, each whole command timed from outside (``python -m cnnlab train ...``):

* ``fast_mnist`` and ``fast_cifar10_gpu`` (seed 42 first), ``cifar10_resnet18`` for 3 epochs;
* for the same networks and recipes, steady-state img/s of cnnlab's step path against a bare loop in the
  same process, in alternation (``scripts/benchmark.py --device cuda --paths cnnlab,bare
  --bare-optimizer recipe``: preloaded normalised tensors, the same optimizer kernels, no augmentation);
  ResNet-18 at batch 128 and 512;
* seeds 1 and 2 of the fast presets while the time budget (``--budget``, 480 s) allows.

Then it prints one Markdown table: the device, test accuracy, training time (the epochs' data and
compute time from metrics.csv), the run's time (summary.json: inside ``train()``), the whole command,
cnnlab's and the bare loop's img/s, and how busy the GPU was (nvidia-smi sampled every 250 ms, averaged
over the command, or over the timed rounds of each path). CIFAR-10 is decoded into cnnlab's cache
once before anything is timed. ``--smoke`` shrinks every run (a few steps, small batches, one seed) so
the same code runs in about a minute on a CPU; tests/test_scripts.py runs it that way.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from cnnlab.config import register_configs
from cnnlab.data.registry import read_splits
from cnnlab.engine.device import configure_cpu, resolve_device, resolve_precision
from cnnlab.errors import CnnlabError
from cnnlab.io import write_text

HERE = Path(__file__).resolve().parent


@dataclass
class Check:
    preset: str
    dataset: str
    benches: list[str]  # scripts/benchmark.py cases for the same network and recipe
    overrides: list[str] = field(default_factory=list)
    seeds: int = 3  # where time allows
    smoke: list[str] = field(default_factory=list)  # what --smoke adds


SMOKE_EVAL = ["trainer.limit_eval_batches=1", "trainer.eval_batch_size=200"]
CHECKS = {
    "fast_mnist": Check("fast_mnist", "mnist", ["fast_mnist"], smoke=["trainer.max_steps=20", *SMOKE_EVAL]),
    "fast_cifar10_gpu": Check(
        "fast_cifar10_gpu", "cifar10", ["fast_cifar10_gpu"],
        smoke=["trainer.batch_size=64", "trainer.max_steps=4", *SMOKE_EVAL],
    ),
    "resnet18": Check(
        "cifar10_resnet18", "cifar10", ["resnet18_b128", "resnet18_b512"], ["trainer.max_epochs=3"], seeds=1,
        smoke=["trainer.batch_size=32", "trainer.max_steps=2", *SMOKE_EVAL],
    ),
}  # fmt: skip


class Utilisation:
    """GPU utilisation from ``nvidia-smi -lms 250``, each sample stamped on arrival."""

    def __init__(self, enabled: bool):
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        smi = shutil.which("nvidia-smi") if enabled else None
        if smi:
            cmd = [
                smi,
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                "-lms",
                "250",
                "-i",
                "0",
            ]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                continue

    def mean(self, windows: list[tuple[float, float]]) -> str:
        values = [v for t, v in self.samples if any(a <= t <= b for a, b in windows)]
        return f"{statistics.mean(values):.0f}%" if values else "-"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", HERE / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if "model name" in line), "")
    native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"CPU {model or platform.processor()} ({', '.join(native) or 'no native bf16'})"


def run_preset(check: Check, seed: int, args, workdir: Path, util: Utilisation) -> dict:
    """One whole ``cnnlab train`` command; its accuracy and times."""
    run_dir = workdir / f"{check.preset}-{seed}"
    cmd = [sys.executable, "-m", "cnnlab", "train", f"+experiment={check.preset}", f"seed={seed}",
           f"trainer.device={args.device}", "trainer.progress=plain", *check.overrides,
           *(["trainer.threads=1"] if args.device == "cpu" else []),
           *(check.smoke if args.smoke else []), f"hydra.run.dir={run_dir}"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    end = time.perf_counter()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    train_s = sum(float(r["data_s"]) + float(r["compute_s"]) for r in rows)
    return {"run": f"`{check.preset}` seed {seed}", "acc": summary["test_acc"], "train_s": train_s,
            "run_s": summary["seconds"], "command_s": end - start,
            "busy": util.mean([(start, end)])}  # fmt: skip


def run_bench(bench, case: str, args, util: Utilisation) -> dict:
    """Steady-state img/s of cnnlab's step path and the bare loop (scripts/benchmark.py)."""
    options = argparse.Namespace(
        device=args.device, paths="cnnlab,bare", bare_optimizer="recipe", workers=0,
        steps=3 if args.smoke else None, rounds=1 if args.smoke else 3, precision=args.precision,
        overrides=["trainer.batch_size=32"] if args.smoke and case != "fast_mnist" else [],
    )  # fmt: skip
    rows = {path: (rate, windows) for _, path, _, rate, _, _, windows, _ in bench.run_case(case, options)}
    (fast, fast_w), (bare, bare_w) = rows["cnnlab"], rows["bare"]
    batch = bench.compose_cfg([*bench.CASES[case].overrides, *options.overrides]).trainer.batch_size
    return {"run": f"{bench.CASES[case].label}: step loop, batch {batch}", "cnnlab": fast, "bare": bare,
            "busy": f"{util.mean(fast_w)} / {util.mean(bare_w)}"}  # fmt: skip


def warm_cache(checks: list[Check]) -> float:
    """Decode CIFAR-10 into cnnlab's cache before anything is timed (the first read decodes JPEGs)."""
    t = time.perf_counter()
    if any(c.dataset == "cifar10" for c in checks):
        read_splits(compose("train", overrides=["dataset=cifar10"]).dataset)
    return time.perf_counter() - t


TIMES = ("train_s", "run_s", "command_s")


def cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(name: str, precision: str, rows: list[dict]) -> str:
    lines = [
        f"GPU check on **{name}** (torch {torch.__version__}, precision {precision})",
        "",
        "| run | device | test acc | train s | run s | command s | cnnlab img/s | bare img/s | cnnlab / bare "
        "| GPU busy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["cnnlab"] / r["bare"] if r.get("bare") else None
        cells = [
            r["run"],
            name,
            cell(r.get("acc"), ".4f"),
            *(cell(r.get(k), ".1f") for k in TIMES),
            cell(r.get("cnnlab"), ",.0f"),
            cell(r.get("bare"), ",.0f"),
            cell(ratio, ".2f"),
            r.get("busy", "-"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def means(rows: list[dict]) -> list[str]:
    by_preset: dict[str, list[dict]] = {}
    for r in rows:
        if "acc" in r:
            by_preset.setdefault(r["run"].split(" seed")[0], []).append(r)
    return [
        f"{preset}: mean test acc {statistics.mean(x['acc'] for x in rs):.4f} over {len(rs)} seed(s), "
        f"training {statistics.mean(x['train_s'] for x in rs):.1f} s, command "
        f"{statistics.mean(x['command_s'] for x in rs):.1f} s"
        for preset, rs in by_preset.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cpu")
    parser.add_argument("--runs", default=",".join(CHECKS), help=f"comma-separated, from {', '.join(CHECKS)}")
    parser.add_argument(
        "--smoke", action="store_true", help="a few steps per run, one seed: checks the wiring"
    )
    parser.add_argument(
        "--budget", type=float, default=480.0, help="seconds; more seeds only while time is left"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    unknown = [r for r in args.runs.split(",") if r not in CHECKS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    started = time.perf_counter()
    register_configs()
    initialize_config_module("cnnlab.conf", version_base="1.3")
    try:
        device = resolve_device(args.device)
    except CnnlabError as exc:
        raise SystemExit(str(exc)) from None
    args.device = str(device)
    args.precision = resolve_precision("auto", device)
    if device.type == "cpu":  # one thread: OpenMP threads that share busy cores wait for each other
        configure_cpu(1)
    checks = [CHECKS[r] for r in args.runs.split(",")]
    name = device_name(device)
    print(f"{name}; CIFAR-10 cache ready in {warm_cache(checks):.1f} s", flush=True)
    bench = load_benchmark()
    util = Utilisation(enabled=device.type == "cuda")
    workdir = Path(tempfile.mkdtemp(prefix="cnnlab-gpu-check-"))
    rows: list[dict] = []
    try:
        for check in checks:  # seed 42 and the step loops first: the table's core
            rows.append(run_preset(check, 42, args, workdir, util))
            print(f"  {rows[-1]['run']}: {rows[-1]['acc']:.4f} in {rows[-1]['command_s']:.1f} s", flush=True)
            for case in check.benches[:1] if args.smoke else check.benches:
                rows.append(run_bench(bench, case, args, util))
                print(
                    f"  {rows[-1]['run']}: {rows[-1]['cnnlab']:,.0f} vs {rows[-1]['bare']:,.0f} img/s",
                    flush=True,
                )
        for seed in (1, 2):  # more seeds while the budget allows (a run takes about as long as the last)
            for check in checks:
                last = next(r for r in reversed(rows) if r["run"].startswith(f"`{check.preset}`"))
                if (
                    args.smoke
                    or seed >= check.seeds
                    or time.perf_counter() - started + last["command_s"] > args.budget
                ):
                    continue
                rows.append(run_preset(check, seed, args, workdir, util))
                print(
                    f"  {rows[-1]['run']}: {rows[-1]['acc']:.4f} in {rows[-1]['command_s']:.1f} s", flush=True
                )
    finally:
        util.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join([table(name, args.precision, rows), "", *means(rows),
                      f"whole check: {time.perf_counter() - started:.0f} s"])  # fmt: skip
    print("\n" + text)
    if args.out:
        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
