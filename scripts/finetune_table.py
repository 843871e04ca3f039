"""Fine-tuning from a local file against training from scratch: test accuracy after each phase.

    CNNLAB_DATA=/work/shared/datasets python scripts/finetune_table.py --out /tmp/finetune
    python scripts/finetune_table.py --model lenet --source mnist --target fashion_mnist --freeze 1 --epochs 2

First trains ``--model`` on ``--source`` for ``--pretrain-epochs`` epochs (its ``checkpoints/best.pt`` is
the "pretrained" file), then on ``--target``, one ``cnnlab train`` process each (fp32, one thread unless
``--threads``, no early stopping):

- scratch: ``--freeze`` epochs, and ``--freeze + --epochs`` epochs, from a fresh initialisation;
- head only: ``model.weights=<file> trainer.freeze_epochs=F`` for F epochs (the first phase alone);
- head, then all: the same, continued for ``--epochs`` more epochs with everything training;
- all: ``model.weights=<file>`` with nothing frozen, ``--freeze + --epochs`` epochs.

Prints one Markdown row per run: the validation accuracy after every epoch and the test accuracy of the
best-validation weights at the end (``summary.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path


def train(name: str, overrides: list[str], args, out: Path) -> dict:
    run = out / name
    command = [
        sys.executable, "-m", "cnnlab", "train", f"model={args.model}", f"seed={args.seed}",
        f"trainer.threads={args.threads}", "trainer.precision=32", "trainer.patience=null",
        "trainer.tensorboard=false", "trainer.report=false", "trainer.progress=plain",
        f"hydra.run.dir={run}", *overrides, *args.extra,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"{name} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    with open(run / "metrics.csv") as f:
        val = [float(r["val_acc"]) for r in csv.DictReader(f)]
    return {"run": run, "val": val, **json.loads((run / "summary.json").read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simplecnn")
    parser.add_argument("--source", default="mnist")
    parser.add_argument("--target", default="fashion_mnist")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--freeze", type=int, default=2, help="epochs of the head-only phase")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the second phase (all trains)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("finetune_table"))
    parser.add_argument("extra", nargs="*", help="more overrides for every run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = train("pretrain", [f"dataset={args.source}", f"trainer.max_epochs={args.pretrain_epochs}"], args,
                   args.out)  # fmt: skip
    weights = source["run"] / "checkpoints" / "best.pt"
    print(f"pretrained: {args.model} on {args.source}, {args.pretrain_epochs} epochs, "
          f"test acc {source['test_acc']:.4f} ({weights})", flush=True)  # fmt: skip
    total = args.freeze + args.epochs
    target = [f"dataset={args.target}"]
    start = [f"model.weights={weights}"]
    freeze = [*start, f"trainer.freeze_epochs={args.freeze}"]
    runs = [
        (f"scratch, {args.freeze} epochs", [*target, f"trainer.max_epochs={args.freeze}"]),
        (f"scratch, {total} epochs", [*target, f"trainer.max_epochs={total}"]),
        (f"head only, {args.freeze} epochs", [*target, *freeze, f"trainer.max_epochs={args.freeze}"]),
        (f"head {args.freeze}, then all {args.epochs}", [*target, *freeze, f"trainer.max_epochs={total}"]),
        (f"all from the file, {total} epochs", [*target, *start, f"trainer.max_epochs={total}"]),
    ]
    print(f"| {args.target} ({args.model}, seed {args.seed}) | val acc per epoch | test acc |")
    print("|---|---|---|")
    for i, (name, overrides) in enumerate(runs):
        r = train(f"run{i}", overrides, args, args.out)
        val = " / ".join(f"{v:.4f}" for v in r["val"])
        print(f"| {name} | {val} | {r['test_acc']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
