"""Training time of the default run with ``trainer.threads=auto`` against each fixed thread count, on the
machine as it is and with 1 and 2 competing busy processes that this script starts itself.

    CNNLAB_DATA=/work/shared/datasets python scripts/threads_check.py     # ~20 min on a loaded 2-core machine
    python scripts/threads_check.py --loads 0,1 --settings auto,1,2 --rounds 3 --steps 150 --limit 300

Each run is a whole ``cnnlab train`` command (LeNet on Fashion-MNIST, the README's first command) cut to
two epochs of ``--steps`` steps each, without testing or the report; its time is the training time
metrics.csv records (data + forward/backward, both epochs: ``auto``'s timing of the candidates is in it,
validation is not). Settings run in alternation, round after round, so that a change in the machine's
other load hits every setting alike; the table shows medians, the best fixed count per row and the ratio
of ``auto`` to it. ``auto+passive`` is ``auto`` with ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep
instead of spinning at a barrier), which must be set before torch loads, hence a process per run.

A busy process is a Python loop that never sleeps: the worst neighbour for OpenMP's barriers. A run still
going after ``--limit`` seconds (the whole command) is stopped; the median counts it as infinitely slow.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CNNLAB = Path(sys.executable).with_name("cnnlab")


def spin() -> None:
    while True:
        pass


def one_run(setting: str, steps: int, folder: Path, extra: list[str], limit: float) -> tuple[float, str]:
    """Train seconds of one run with ``trainer.threads=<setting>``, and the threads it ended on; a run
    still going after ``limit`` seconds is stopped and counts as infinitely slow."""
    env = dict(os.environ)
    threads = setting
    if setting.endswith("+passive"):
        threads, env["OMP_WAIT_POLICY"] = setting.split("+")[0], "PASSIVE"
    args = [str(CNNLAB), "train", "model=lenet", "dataset=fashion_mnist", "trainer.max_epochs=2",
            f"trainer.limit_train_batches={steps}", "trainer.limit_eval_batches=2", "trainer.evaluate=false",
            "trainer.tensorboard=false", "trainer.progress=plain", "trainer.patience=null",
            f"trainer.threads={threads}", f"hydra.run.dir={folder}", *extra]  # fmt: skip
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False, timeout=limit)
    except subprocess.TimeoutExpired:  # the whole command, start-up included, took longer
        return math.inf, "stopped"
    if done.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    with (folder / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    seconds = sum(float(r["data_s"]) + float(r["compute_s"]) for r in rows)
    summary = json.loads((folder / "summary.json").read_text())
    return seconds, str(summary.get("threads", {}).get("threads", ""))


def measure(load: int, settings: list[str], rounds: int, steps: int, extra: list[str], limit: float) -> dict:
    busy = [multiprocessing.Process(target=spin, daemon=True) for _ in range(load)]
    for p in busy:
        p.start()
    times: dict[str, list[float]] = {s: [] for s in settings}
    ended: dict[str, list[str]] = {s: [] for s in settings}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds):
                for s in settings:
                    seconds, used = one_run(s, steps, Path(tmp) / f"{s}-{r}", extra, limit)
                    times[s].append(seconds)
                    ended[s].append(used)
                    print(f"  load {load} round {r + 1} {s}: {seconds:.1f} s (threads at the end {used})",
                          flush=True)  # fmt: skip
    finally:
        for p in busy:
            p.kill()
            p.join()
    return {"times": times, "ended": ended}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", default="0,1,2", help="numbers of competing busy processes, one row each")
    ap.add_argument("--settings", default="auto,1,2,auto+passive")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50, help="training steps per epoch (two epochs)")
    ap.add_argument("--limit", type=float, default=90, help="seconds before a run is stopped (shown as >)")
    ap.add_argument("extra", nargs="*", help="more overrides for every run")
    args = ap.parse_args()
    settings = args.settings.split(",")
    fixed = [s for s in settings if s.isdigit()]
    started = time.time()
    rows = []
    for load in (int(x) for x in args.loads.split(",")):
        result = measure(load, settings, args.rounds, args.steps, args.extra, args.limit)
        med = {s: statistics.median(v) for s, v in result["times"].items()}
        best = min(fixed, key=med.get) if fixed else None
        rows.append((load, med, best, result["ended"]))
    usable = len(os.sched_getaffinity(0))
    print(f"\ntraining seconds, 2 epochs x {args.steps} steps, median of {args.rounds} "
          f"(whole run {time.time() - started:.0f} s); CPUs usable: {usable}")  # fmt: skip
    head = "| busy processes | " + " | ".join(f"threads={s}" for s in settings) + " | best fixed |"
    head += "".join(f" {s} / best |" for s in settings if not s.isdigit())
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for load, med, best, ended in rows:
        cells = [
            (f"{med[s]:.1f} s" if med[s] < math.inf else f"stopped after {args.limit:.0f} s")
            + (f" (ended on {','.join(ended[s])})" if not s.isdigit() else "")
            for s in settings
        ]
        ratios = [f"{med[s] / med[best]:.2f}x" for s in settings if not s.isdigit()] if best else []
        print(f"| {load} | " + " | ".join(cells) + f" | {best} | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
