"""Short CIFAR-10 runs of torchvision networks through ``cnnlab train``: img/s and accuracy per model.

    CNNLAB_DATA=/work/shared/datasets python scripts/model_table.py                 # the README table
    python scripts/model_table.py --archs alexnet,resnet18 --epochs 2 --batches 20 --out /tmp/table

Each model trains ``--epochs`` epochs of ``--batches`` batches of 64 (Adam 1e-3, no augmentation,
fp32, one thread unless ``--threads``), validated on ``--val-split`` of the training images (1,000,
stratified) and tested on all 10,000 test images, as one ``cnnlab train`` process per model. The
table shows the input size the model runs at, its parameters, the training img/s of the last epoch
(``metrics.csv``), the best validation and the test accuracy (``summary.json``). Not
``trainer.limit_eval_batches``: the JPEG copy's test images are sorted by class, so the first batches
hold one class. These are smoke-scale figures for a CPU; full runs are GPU jobs. The img/s are
absolute, not a ratio: compare the models with each other, measured in one run of this script.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ARCHS = "alexnet,vgg11_bn,googlenet,resnet18,mobilenet_v3_small"


def train(arch: str, args, out: Path) -> dict:
    run = out / arch
    command = [
        sys.executable, "-m", "cnnlab", "train", "dataset=cifar10", "model=torchvision", f"model.arch={arch}",
        f"trainer.max_epochs={args.epochs}", f"trainer.limit_train_batches={args.batches}",
        "trainer.batch_size=64", f"dataset.val_split={args.val_split}", "trainer.eval_batch_size=500",
        f"trainer.threads={args.threads}", f"trainer.precision={args.precision}", "trainer.patience=null",
        "trainer.tensorboard=false", "trainer.report=false", "trainer.progress=plain",
        f"hydra.run.dir={run}",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (out / f"{arch}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        return {"arch": arch, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((run / "summary.json").read_text())
    log = (out / f"{arch}.log").read_text()
    params = next(
        line.split(": ")[1].split(" parameters")[0] for line in log.splitlines() if " parameters;" in line
    )
    size = next(
        (line.split(" takes ")[1].split("-pixel")[0] for line in log.splitlines() if " takes " in line), "32"
    )
    return {
        "arch": arch, "input": size, "params": params, "img_s": float(rows[-1]["img_per_s"]),
        "val_acc": summary["best_val_acc"], "test_acc": summary["test_acc"], "seconds": seconds,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=ARCHS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=40, help="training batches of 64 per epoch")
    parser.add_argument("--val-split", type=float, default=0.02, help="of the 50,000 training images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="32")
    parser.add_argument("--out", default="model_table")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| model | input px | parameters | train img/s | best val acc | test acc | command s |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        r = train(arch, args, out)
        if "error" in r:
            print(f"| {arch} | failed: {r['error']} |", flush=True)
            continue
        print(f"| {arch} | {r['input']} | {r['params']} | {r['img_s']:.0f} | {r['val_acc']:.3f} | "
              f"{r['test_acc']:.3f} | {r['seconds']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
