"""Host work per training step: cnnlab's step against a bare loop doing the same step, in one process.

    CNNLAB_DATA=/work/shared/datasets python scripts/step_overhead.py              # ~1 min
    python scripts/step_overhead.py --steps 200 --rounds 31 --precision bf16

The model is so small (an MLP 784-32-10 on MNIST, batch 128, Adam, one thread) that compute is
negligible and what is measured is the host work around it, which is what keeps a GPU waiting:

* **img/s**: ``cnnlab`` runs ``train_one_epoch`` on a run built by ``cnnlab.train.build_run`` from the
  composed config (TensorLoader, BatchPipeline, schedule, metrics writer, the step hook and signal
  polling of ``train``); ``bare`` slices preloaded, normalised float tensors by a permutation and runs
  forward, loss, ``zero_grad``, backward and ``torch.optim.Adam.step`` (torch's defaults: a loop over the
  tensors on a CPU), nothing else; ``bare_fused`` is the same with ``Adam(fused=True)``, the kernel
  cnnlab picks. They alternate, round after round, after an untimed warm-up; medians and ratios are
  printed, of the wall-clock rates and of the rates by this thread's CPU time (``time.thread_time``),
  which other jobs on the same cores disturb much less.
* **operators per step**: every aten operator each step dispatches (a ``TorchDispatchMode``; on a GPU
  each is a kernel launch), counted over one epoch of ``--count-steps`` steps and attributed to a
  phase by the Python frames it was called from: data (loader and batch pipeline), forward (modules and
  loss), backward (autograd), optimizer (optimizer, schedule, scaler, clipping, EMA), bookkeeping (the
  rest: running totals, checks).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from cnnlab.config import register_configs
from cnnlab.data.loader import BatchPipeline
from cnnlab.engine import distributed
from cnnlab.engine.device import configure_cpu
from cnnlab.engine.interrupt import SignalGuard
from cnnlab.engine.loop import EpochState, train_one_epoch
from cnnlab.run.layout import RunDir
from cnnlab.train import build_run, step_hook

PHASES = ("data", "forward", "backward", "optimizer", "bookkeeping")
RECIPE = ["dataset=mnist", "model=mlp", "model.hidden=[32]", "model.dropout=0", "optimizer=adam",
          "trainer.batch_size=128", "trainer.device=cpu"]  # fmt: skip


def phase_of(frame) -> str:
    """The phase of the innermost frame that names one (see the module docstring)."""
    while frame is not None:
        path, name = frame.f_code.co_filename, frame.f_code.co_name
        if name == "bare_batch" or "/cnnlab/data/" in path:
            return "data"
        if "/torch/autograd/" in path:
            return "backward"
        if any(p in path for p in ("/torch/optim/", "/engine/schedulers.py", "/engine/ema.py", "/torch/amp/",
                                   "clip_grad.py")):  # fmt: skip
            return "optimizer"
        if "/torch/nn/modules/" in path or path.endswith("/torch/nn/functional.py"):
            return "forward"
        if name in ("train_one_epoch", "micro_step", "bare_steps"):
            return "bookkeeping"
        frame = frame.f_back
    return "bookkeeping"


class CountOps(TorchDispatchMode):
    """Count every aten operator dispatched, per phase."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self.names: dict[str, Counter] = {p: Counter() for p in PHASES}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        phase = phase_of(sys._getframe(1))
        self.counts[phase] += 1
        self.names[phase][str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def bare_batch(x, y, order, i: int, batch: int):
    idx = order[i * batch : (i + 1) * batch]
    return x[idx], y[idx]


def bare_steps(model, x, y, optimizer, *, batch: int, steps: int) -> int:
    """Preloaded normalised float tensors, a permutation, forward/loss/zero_grad/backward/step."""
    model.train()
    order = torch.randperm(len(x))
    for i in range(steps):
        xb, yb = bare_batch(x, y, order, i, batch)
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch


def cnnlab_steps(run, steps: int) -> int:
    loader = run.data.train
    loader.limit = steps
    loader.set_epoch(loader.epoch + 1)
    stats = train_one_epoch(run.train_model, loader, run.optimizer, run.schedule, run.ctx, epoch=1,
                            state=EpochState())  # fmt: skip
    run.metrics.write_pending()  # the per-step learning rates, written at each epoch's end by train
    return stats["images"]


def build(args, folder: Path):
    settings = [f"trainer.precision={args.precision}", f"trainer.tensorboard={str(args.tensorboard).lower()}"]
    cfg = compose("train", overrides=[*RECIPE, *settings, *args.overrides])
    dist = distributed.setup(cfg.trainer)
    run = build_run(cfg, RunDir(folder), dist, config_yaml=OmegaConf.to_yaml(cfg), resumed=False)
    run.ctx.on_step = step_hook(run)
    data = run.data
    bare_x = BatchPipeline(data.mean, data.std, torch.device("cpu"))(data.train.x, train=False)
    bare = {}
    for name, kernels in (("bare", {}), ("bare_fused", {"fused": True})):
        model = copy.deepcopy(run.model)
        bare[name] = (model, torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr, **kernels))
    return run, bare, bare_x, data.train.y, cfg.trainer.batch_size


def count_ops(fn) -> CountOps:
    with CountOps() as mode:
        fn()
    return mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round and path")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--count-steps", type=int, default=50, help="steps whose operators are counted")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                        help="cnnlab's default writes the lr to TensorBoard after every step")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=0, help="also list the N most frequent operators")
    parser.add_argument("overrides", nargs="*", help="more config overrides (e.g. dataset.root=...)")
    args = parser.parse_args()
    configure_cpu(args.threads)
    register_configs()
    initialize_config_module("cnnlab.conf", version_base="1.3")
    flags = sorted(
        {f for f in Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx512_bf", "amx"))}
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{torch.backends.cpu.get_cpu_capability()}, {' '.join(flags) or 'no native bf16'}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, SignalGuard() as guard:
        run, bare, x, y, batch = build(args, Path(tmp))
        run.ctx.should_stop = guard.requested
        paths = {"cnnlab": lambda n: cnnlab_steps(run, n)}
        for name, (model, opt) in bare.items():
            paths[name] = lambda n, m=model, o=opt: bare_steps(m, x, y, o, batch=batch, steps=n)
        for fn in paths.values():  # warm-up: first-call allocations, lazy imports
            fn(20)
        wall: dict[str, list[float]] = {k: [] for k in paths}
        cpu: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):
            for key, fn in paths.items():
                t, c = time.perf_counter(), time.thread_time()
                images = fn(args.steps)
                cpu[key].append(images / (time.thread_time() - c))
                wall[key].append(images / (time.perf_counter() - t))
        print(f"\nMLP 784-32-10 / MNIST, batch {batch}, Adam, fp{args.precision}, {args.steps} steps x "
              f"{args.rounds} rounds, alternating: median img/s by the clock and by this thread's CPU time "
              "(steadier when other jobs share the cores)")  # fmt: skip
        for name, rates in (("wall", wall), ("CPU", cpu)):
            med = {k: statistics.median(v) for k, v in rates.items()}
            print("  " + "   ".join(f"{k} {v:,.0f}" for k, v in med.items()) + f"   ({name})")
            print(f"    cnnlab / bare = {med['cnnlab'] / med['bare']:.2f}x, "
                  f"cnnlab / bare_fused = {med['cnnlab'] / med['bare_fused']:.2f}x")  # fmt: skip
        print(
            "  (bare: torch's default Adam, a loop over the tensors on a CPU; bare_fused: Adam(fused=True),"
        )
        print("  which cnnlab's optimizer.implementation=auto picks)")

        n = args.count_steps
        counts = {k: count_ops(lambda fn=fn: fn(n)) for k, fn in paths.items()}
        print(f"\naten operators per step (one epoch of {n} steps, per phase)")
        print(f"  {'phase':12s} " + " ".join(f"{k:>10s}" for k in paths))
        for phase in PHASES:
            per_step = [counts[k].counts[phase] / n for k in paths]
            print(f"  {phase:12s} " + " ".join(f"{c:10.2f}" for c in per_step))
        total = {k: sum(c.counts.values()) / n for k, c in counts.items()}
        print(f"  {'total':12s} " + " ".join(f"{t:10.2f}" for t in total.values()) +
              f"   cnnlab / bare = {total['cnnlab'] / total['bare']:.2f}x, "
              f"cnnlab / bare_fused = {total['cnnlab'] / total['bare_fused']:.2f}x")  # fmt: skip
        for key, mode in counts.items():
            if args.top:
                print(f"\n{key}: most frequent operators per step")
                for phase in PHASES:
                    top = ", ".join(
                        f"{name} {c / n:.2f}" for name, c in mode.names[phase].most_common(args.top)
                    )
                    print(f"  {phase:12s} {top}")
        run.metrics.flush()  # a measurement, not a finished run: no summary for the loggers


if __name__ == "__main__":
    main()
