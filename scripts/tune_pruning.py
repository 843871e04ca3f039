"""Time saved by pruning: the same `cnnlab tune` study with the median pruner and without a pruner.

Both studies use the random sampler with the same seed, so they draw the same trials (random sampling
does not look at results); the only difference is that the pruned one stops weak trials after an epoch.
The two commands run in alternation (pruned first in odd rounds), each as a whole process timed from
outside, and the script prints each study's trials, the best trial and the ratio of the times.

    CNNLAB_DATA=../shared/datasets python scripts/tune_pruning.py --out /tmp/tune_pruning
    python scripts/tune_pruning.py --trials 12 --epochs 3 --batches 100 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

SEARCH = (
    "optimizer=adamw",
    "optimizer.lr=tag(log, interval(1e-4, 0.1))",
    "optimizer.weight_decay=tag(log, interval(1e-6, 0.1))",
    "trainer.batch_size=choice(64, 128, 256)",
)


SEARCHED = ("optimizer.lr", "optimizer.weight_decay", "trainer.batch_size")


def run_study(folder: Path, pruner: str, args: argparse.Namespace) -> float:
    """Run one study as a process; return its wall-clock seconds."""
    command = [
        sys.executable, "-m", "cnnlab", "tune", "dataset=fashion_mnist", "model=lenet", *SEARCH,
        f"trainer.max_epochs={args.epochs}", f"trainer.limit_train_batches={args.batches}",
        "trainer.threads=1", "trainer.precision=32", "trainer.tensorboard=false", "trainer.report=false",
        "trainer.progress=plain", "trainer.patience=null", f"tune.n_trials={args.trials}",
        "tune.sampler=random", f"tune.seed={args.seed}", f"tune.pruner={pruner}",
        f"tune.startup_trials={args.startup}",
        "tune.report=true", f"tune.dir={folder}",
    ]  # fmt: skip
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (folder.parent / f"{folder.name}.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def trials(folder: Path) -> list[dict]:
    """Each trial's folder record: its status, epochs, best value, seconds, and its sampled values."""
    rows = []
    for run in sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        status = json.loads((run / "status.json").read_text()) if (run / "status.json").is_file() else {}
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        rows.append({
            "trial": int(run.name), "status": status.get("status", "ok"),
            "epochs": summary.get("epochs_run", status.get("epochs_run")),
            "val_acc": summary.get("best_value", status.get("best_value")),
            "test_acc": summary.get("test_acc"),
            "seconds": summary.get("seconds", status.get("seconds")),
            "params": [o for o in overrides if o.split("=")[0] in SEARCHED],
        })  # fmt: skip
    return rows


def report(name: str, rows: list[dict], wall: float) -> None:
    pruned, epochs = sum(r["status"] == "pruned" for r in rows), sum(r["epochs"] for r in rows)
    print(f"\n{name}: {len(rows)} trials, {pruned} pruned, {epochs} epochs trained, "
          f"{sum(r['seconds'] for r in rows):.0f} s in trials, {wall:.0f} s for the command")  # fmt: skip
    print("| trial | lr | weight decay | batch | status | epochs | best val acc | test acc | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        values = dict(p.split("=", 1) for p in r["params"])
        lr, decay = float(values["optimizer.lr"]), float(values["optimizer.weight_decay"])
        test = "-" if r["test_acc"] is None else f"{r['test_acc']:.4f}"
        cells = [r["trial"], f"{lr:.2e}", f"{decay:.2e}", values["trainer.batch_size"], r["status"],
                 r["epochs"], f"{r['val_acc']:.4f}", test, f"{r['seconds']:.1f}"]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")
    best = max((r for r in rows if r["status"] == "ok"), key=lambda r: r["val_acc"])
    print(f"best: trial {best['trial']} val acc {best['val_acc']:.4f} test acc {best['test_acc']:.4f} "
          f"with {' '.join(best['params'])}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("tune_pruning"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=100, help="trainer.limit_train_batches")
    parser.add_argument("--startup", type=int, default=4, help="tune.startup_trials (never pruned)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if not os.environ.get("CNNLAB_DATA"):
        print(
            "note: CNNLAB_DATA is not set; Fashion-MNIST is looked for in the usual places", file=sys.stderr
        )
    walls: dict[str, list[float]] = {"median": [], "none": []}
    for k in range(args.rounds):
        order = ("median", "none") if k % 2 == 0 else ("none", "median")
        for pruner in order:
            folder = args.out / f"round{k}_{pruner}"
            walls[pruner].append(run_study(folder, pruner, args))
            report(f"round {k}, pruner={pruner} ({folder})", trials(folder), walls[pruner][-1])
    pruned, unpruned = (statistics.median(walls[p]) for p in ("median", "none"))
    ratio = pruned / unpruned
    print(f"\nmedian pruner / no pruner, command time (median over {args.rounds} rounds): "
          f"{pruned:.0f} s / {unpruned:.0f} s = {ratio:.2f}x ({1 - ratio:.0%} saved)")  # fmt: skip


if __name__ == "__main__":
    main()
