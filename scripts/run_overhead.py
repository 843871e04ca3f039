"""Where a preset's time before its first step and inside ``train()`` outside its epochs goes, part by part.

    CNNLAB_DATA=../shared/datasets python scripts/run_overhead.py                      # fast_mnist, 3 runs
    python scripts/run_overhead.py --preset fast_fashion_mnist --repeats 5 --threads 1

Each repeat is a fresh process (imports are cold, as for a command) that calls ``cnnlab.train.train``
with the preset after wrapping its parts in timers: reading the data, building the model, optimizer and
schedule, fitting data-initialised layers, provenance, checkpoints, the test pass (``Scored.score``),
the summary and closing the writers. ``torch._dynamo``'s import, which the first ``torch.optim``
optimizer triggers (any script using torch.optim pays it), is timed apart. The epochs are metrics.csv's
``seconds`` (training and validation); "outside the epochs" is summary.json's seconds less those.
Before train(): the imports (hydra and the config schema, torch, the trainer's modules) and composing the
config, as ``cnnlab train`` meets them; then train()'s start to the end of the first optimizer step.
``--startup N`` times instead, in alternation, ``import torch`` alone and the commands that answer
before training (``cnnlab train --help``, a refused override), wall and CPU.
Prints the median of each part over the repeats, wall and CPU (process) time: on a machine shared with
other jobs CPU time is the steadier figure. The epochs' own parts are listed in parentheses.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = {  # module attribute -> label, in the order a run meets them
    "check": "check the config", "build_data": "read the data", "build_model": "build the model",
    "store_channels_last": "channels_last copy of the splits", "fit_to_data": "fit the whitening layer",
    "build_optimizer": "build the optimizer", "build_schedule": "build the schedule",
    "MetricsWriter": "metrics writer", "provenance": "provenance (git, data hash)",
    "save_epoch": "checkpoints (best, safetensors, last)", "read_best": "load best.pt",
    "write_summary": "summary.json", "close": "close the writers",
    "result_table": "summary table",
    "train_one_epoch": "(epochs: training)", "score_epoch": "(epochs: validation)",
}  # fmt: skip
EPOCHS = ("(epochs: training)", "(epochs: validation)")
# Scored.score's label; it is not in PARTS, where ``score`` would also match train.py's validation
TEST_PASS = "test pass"  # noqa: S105 (a label, not a password)


class _Block:
    """``with _Block(times, label):`` adds the block's wall and CPU seconds to ``times[label]``."""

    def __init__(self, times: dict, label: str):
        self.times, self.label = times, label

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        self.times[self.label] = [time.perf_counter() - self.wall, time.process_time() - self.cpu]


def child(preset: str, threads: int, extra: list[str]) -> None:
    """One run, in this process; prints a JSON line of timings."""
    times: dict[str, list[float]] = {}

    def timer(label: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                w, c = times.get(label, [0.0, 0.0])
                times[label] = [w + time.perf_counter() - wall, c + time.process_time() - cpu]

        return timed

    def part(label: str) -> _Block:
        """Time a block before train(): the imports and the config, in the order the command meets them."""
        return _Block(times, label)

    with part("before train(): import hydra, omegaconf, cnnlab.config"):
        from hydra import compose, initialize_config_module

        from cnnlab.config import register_configs
    with part("before train(): import torch"):
        import torch  # noqa: F401
    with part("before train(): import the trainer (cnnlab.train)"):
        import cnnlab.train as train_module
        from cnnlab.report.evaluate import Scored
        from cnnlab.run.checkpoints import RunCheckpoints
        from cnnlab.run.layout import RunDir
        from cnnlab.run.metrics import MetricsWriter
        from cnnlab.train import assemble, ending, epochs

    def import_dynamo_then(fn):
        def build(*args, **kwargs):
            if "torch._dynamo" not in sys.modules:
                timer("torch._dynamo import (first torch.optim call)", lambda: __import__("torch._dynamo"))()
            return fn(*args, **kwargs)

        return build

    for module in (train_module, assemble, epochs, ending):  # each part where train's modules call it
        for name, label in PARTS.items():
            if hasattr(module, name):
                timed = timer(label, getattr(module, name))  # the optimizer's time without the import
                setattr(module, name, import_dynamo_then(timed) if name == "build_optimizer" else timed)
    Scored.score = classmethod(timer(TEST_PASS, Scored.score.__func__))
    RunDir.write_summary = timer(PARTS["write_summary"], RunDir.write_summary)
    RunCheckpoints.read_best = timer(PARTS["read_best"], RunCheckpoints.read_best)
    MetricsWriter.close = timer(PARTS["close"], MetricsWriter.close)
    with part("before train(): compose the config"):
        register_configs()
        initialize_config_module("cnnlab.conf", version_base="1.3")
        overrides = [f"+experiment={preset}", "trainer.progress=plain", *extra]
        cfg = compose("train", overrides=overrides + ([f"trainer.threads={threads}"] if threads else []))
    run = Path(tempfile.mkdtemp(prefix="cnnlab-overhead-")) / "run"
    wall, cpu = time.perf_counter(), time.process_time()

    class FirstStep(train_module.Callback):
        def on_step(self, run) -> None:
            if "train() start to the first step's end" not in times:
                times["train() start to the first step's end"] = [time.perf_counter() - wall,
                                                                   time.process_time() - cpu]  # fmt: skip

    summary = train_module.train(cfg, run, callbacks=(FirstStep(),))
    times["train() in all"] = [time.perf_counter() - wall, time.process_time() - cpu]
    with (run / "metrics.csv").open() as f:
        epochs = sum(float(r["seconds"]) for r in csv.DictReader(f))
    print(
        json.dumps(
            {"times": times, "seconds": summary["seconds"], "epochs": epochs, "acc": summary["test_acc"]}
        )
    )


CNNLAB = str(Path(sys.executable).with_name("cnnlab"))
STARTUP = {  # label -> command; run in alternation, in fresh processes
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "cnnlab train --help": [CNNLAB, "train", "--help"],
    "cnnlab train model=lenett (refused)": [CNNLAB, "train", "model=lenett"],
}


def startup(repeats: int) -> None:
    """Wall and CPU seconds (the child's user + system time) of commands that end before training."""
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in STARTUP}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for label, cmd in STARTUP.items():
                before, wall = os.times(), time.perf_counter()
                subprocess.run(cmd, capture_output=True, cwd=tmp, check=False)
                after = os.times()
                cpu = (after.children_user - before.children_user) + (
                    after.children_system - before.children_system
                )
                results[label].append((time.perf_counter() - wall, cpu))
    print(f"start-up, {repeats} rounds in alternation (medians)")
    print(f"  {'command':46s} {'wall s':>7s} {'CPU s':>7s}")
    for label, runs in results.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"  {label:46s} {wall:7.3f} {cpu:7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--startup", type=int, default=0, metavar="N",
                        help="instead: time N rounds of commands that end before training")  # fmt: skip
    parser.add_argument("--preset", default="fast_mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="trainer.threads (0: the preset's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="more config overrides")
    args = parser.parse_args()
    if args.child:
        child(args.preset, args.threads, args.overrides)
        return
    if args.startup:
        startup(args.startup)
        return
    runs = []
    for _ in range(args.repeats):
        cmd = [sys.executable, __file__, "--child", "--preset", args.preset, "--threads", str(args.threads),
               *args.overrides]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    labels = list(runs[0]["times"])
    print(f"{args.preset}, trainer.threads={args.threads or 'default'}, {args.repeats} fresh processes "
          f"(medians; test acc {', '.join(str(r['acc']) for r in runs)})")  # fmt: skip
    print(f"  {'part':46s} {'wall s':>7s} {'CPU s':>7s}")
    for label in labels:
        wall = statistics.median(r["times"].get(label, [0, 0])[0] for r in runs)
        cpu = statistics.median(r["times"].get(label, [0, 0])[1] for r in runs)
        print(f"  {label:46s} {wall:7.3f} {cpu:7.3f}")
    outside_wall = statistics.median(r["seconds"] - r["epochs"] for r in runs)
    outside_cpu = statistics.median(
        r["times"]["train() in all"][1] - sum(r["times"][label][1] for label in EPOCHS) for r in runs
    )
    print(f"  {'inside train(), outside the epochs':46s} {outside_wall:7.3f} {outside_cpu:7.3f}")
    print("  (wall: summary.json's seconds less metrics.csv's; CPU: train()'s less the epochs' parts)")


if __name__ == "__main__":
    main()
