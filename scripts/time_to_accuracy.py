"""Whole-command time to accuracy: `cnnlab train +experiment=fast_<dataset>` against a bare script.

    CNNLAB_DATA=../shared/datasets python scripts/time_to_accuracy.py                  # both presets, 3 seeds
    python scripts/time_to_accuracy.py --presets fast_mnist --seeds 42

For every seed, in alternation, it runs two processes from start to the final test line and times
them from outside: cnnlab's installed CLI with the preset, and ``scripts/bare_reference.py`` (plain
PyTorch, no framework) with the same recipe read from the composed preset (channels, batch size,
learning rate, epochs, label smoothing, threads, and the precision ``trainer.precision=auto`` picks on
this machine). cnnlab does more around the same loop: Hydra, a validation split and validation every
epoch, checkpoints, logs and a summary. The table gives each side's test accuracy and seconds, the
ratio of the times (cnnlab / bare; below 1 is faster), and the time around the epochs: for cnnlab the
time inside ``train()`` outside its epochs (summary.json's seconds less metrics.csv's), for the bare
script its setup after the imports plus its test pass. Both include torch's ``torch._dynamo`` import,
which the first ``torch.optim`` call triggers (about 1 s of CPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from cnnlab.config import register_configs
from cnnlab.engine.device import resolve_precision
from cnnlab.engine.losses import loss_node
from cnnlab.engine.threads import check_threads

HERE = Path(__file__).resolve().parent
DATASETS = ("mnist", "fashion_mnist")  # what bare_reference.py reads


def bare_arguments(preset: str) -> list[str]:
    """The preset's recipe as arguments of bare_reference.py, so both sides train the same thing."""
    cfg = compose("train", overrides=[f"+experiment={preset}"])
    plain_stack = cfg.model.name == "simplecnn" and cfg.model.convs == 1 and not cfg.model.whiten
    if cfg.dataset.name not in DATASETS or not plain_stack:
        raise SystemExit(
            f"{preset}: the bare reference covers simplecnn on MNIST/Fashion-MNIST only "
            "(one conv per stage, no whitening)."
        )
    tc = cfg.trainer
    return [
        "--dataset", cfg.dataset.name, "--epochs", str(tc.max_epochs),
        "--channels", ",".join(str(c) for c in cfg.model.channels), "--lr", str(cfg.optimizer.lr),
        "--batch-size", str(tc.batch_size), "--label-smoothing", str(loss_node(cfg).label_smoothing),
        "--threads", str(check_threads(tc.threads) or 0),  # auto: the bare loop keeps torch's default
        "--precision", resolve_precision(str(tc.precision), torch.device("cpu")),
    ]  # fmt: skip


def timed(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)  # not a TTY: no progress bars
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def run_cnnlab(preset: str, seed: int, workdir: Path, extra: list[str]) -> tuple[float, float, float]:
    """Test accuracy, whole-command seconds, and seconds inside train() outside the epochs."""
    run_dir = workdir / f"{preset}-{seed}"
    # The CLI of this interpreter's cnnlab (`python -m cnnlab` is the `cnnlab` entry point), not whatever
    # `cnnlab` comes first on PATH.
    cmd = [sys.executable, "-m", "cnnlab", "train", f"+experiment={preset}", f"seed={seed}", *extra]
    seconds, _ = timed([*cmd, f"hydra.run.dir={run_dir}"])
    summary = json.loads((run_dir / "summary.json").read_text())
    with (run_dir / "metrics.csv").open() as f:
        epochs = sum(float(row["seconds"]) for row in csv.DictReader(f))
    return float(summary["test_acc"]), seconds, summary["seconds"] - epochs


def run_bare(args: list[str], seed: int) -> tuple[float, float, float]:
    """Test accuracy, whole-process seconds, and seconds of setup (after the imports) and test."""
    seconds, out = timed([sys.executable, str(HERE / "bare_reference.py"), *args, "--seed", str(seed)])
    fields = dict(item.split("=") for item in out.split())
    return float(fields["test_acc"]), seconds, float(fields["setup_s"]) + float(fields["test_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="fast_mnist,fast_fashion_mnist")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--threads", type=int, default=0, help="both sides (0: the preset's, all cores)")
    args = parser.parse_args()
    register_configs()
    seeds = [int(s) for s in args.seeds.split(",")]
    with initialize_config_module("cnnlab.conf", version_base="1.3"):
        recipes = {p: bare_arguments(p) for p in args.presets.split(",")}
    extra = [f"trainer.threads={args.threads}"] if args.threads else []
    for recipe in recipes.values():
        if args.threads:
            recipe[recipe.index("--threads") + 1] = str(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="cnnlab-tta-"))
    try:
        for preset, bare_args in recipes.items():
            print(f"\n{preset}  (bare: {' '.join(bare_args)})")
            head = (
                ("seed", 5),
                ("cnnlab acc", 10),
                ("cnnlab s", 9),
                ("around", 7),
                ("bare acc", 9),
            )
            head += ("bare s", 7), ("around", 7), ("ratio", 6)
            print("  " + " ".join(f"{name:>{width}}" for name, width in head))
            ratios = []
            for i, seed in enumerate(seeds):
                # Alternate which side goes first, so neither always runs on a cold page cache.
                order = ("cnnlab", "bare") if i % 2 == 0 else ("bare", "cnnlab")
                result = {
                    side: run_cnnlab(preset, seed, workdir, extra)
                    if side == "cnnlab"
                    else run_bare(bare_args, seed)
                    for side in order
                }
                (ca, cs, co), (ba, bs, bo) = result["cnnlab"], result["bare"]
                ratios.append(cs / bs)
                print(f"  {seed:>5} {ca:>10.4f} {cs:>9.1f} {co:>7.2f} {ba:>9.4f} {bs:>7.1f} {bo:>7.2f} "
                      f"{cs / bs:>5.2f}x")  # fmt: skip
            print(f"  median time ratio cnnlab / bare = {statistics.median(ratios):.2f}x   (around: seconds "
                  "around the epochs, see the docstring)")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
