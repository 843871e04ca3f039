"""Class weights and the balanced sampler on an imbalanced split: macro F1 and per-class recall.

    python scripts/imbalance_idx.py $CNNLAB_DATA/fashion-mnist /tmp/fmnist10 --classes 0 1 2 --keep 0.1
    python scripts/imbalance_table.py /tmp/fmnist10 --seeds 42,1 --epochs 3 --out /tmp/imbalance

Trains one ``cnnlab train`` process per variant and seed (LeNet, fp32, one thread unless ``--threads``;
the variants: nothing, ``loss.class_weights=auto``, ``dataset.sampler=balanced``, both) on the IDX
copy ``ROOT`` and reads the test split's report (``report/metrics.json``, written at the end of the
run): accuracy, macro F1 and the recall of every class. Prints one Markdown row per run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "none": [],
    "class_weights=auto": ["loss.class_weights=auto"],
    "sampler=balanced": ["dataset.sampler=balanced"],
    "both": ["loss.class_weights=auto", "dataset.sampler=balanced"],
}


def train(root: Path, variant: str, seed: int, args, out: Path) -> dict:
    run = out / f"{variant.replace('=', '_')}-{seed}"
    command = [
        sys.executable, "-m", "cnnlab", "train", "dataset=fashion_mnist", f"dataset.root={root}",
        f"model={args.model}", f"trainer.max_epochs={args.epochs}", f"seed={seed}",
        f"trainer.threads={args.threads}", "trainer.precision=32", "trainer.tensorboard=false",
        "trainer.progress=plain", f"hydra.run.dir={run}", *VARIANTS[variant], *args.extra,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True)
    (out / f"{run.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads((run / "report" / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the imbalanced IDX copy (scripts/imbalance_idx.py)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="42,1")
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("imbalance_table"))
    parser.add_argument("extra", nargs="*", help="more overrides for every run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    header = None
    for variant in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            m = train(args.root, variant, seed, args, args.out)
            if "error" in m:
                print(f"| {variant} | {seed} | failed: {m['error']} |", flush=True)
                continue
            if header is None:
                names = " | ".join(f"recall {r['class']}" for r in m["per_class"])
                print(f"| variant | seed | test acc | macro F1 | {names} |")
                print("|---" * (4 + len(m["per_class"])) + "|")
                header = True
            recalls = " | ".join(f"{r['recall']:.3f}" for r in m["per_class"])
            print(f"| {variant} | {seed} | {m['accuracy']:.4f} | {m['macro']['f1']:.4f} | {recalls} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
