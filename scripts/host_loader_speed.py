"""Throughput of dataset.in_memory=false (images on the host, a batch ahead) against the in-memory path.

    CNNLAB_DATA=../shared/datasets python scripts/host_loader_speed.py [--per-class 300] [--rounds 5]
        [--steps 20] [--device auto|cpu|cuda] [--batch 64] [--threads N]

Lays out CIFAR-10 JPEGs as Food-11 (scripts/cifar_as_food11.py) and decodes them once at 128 px
into the decode cache. Then, in alternation, round after round, for the same data:
``memory`` (``dataset.in_memory=true``: every split in device memory) and ``host``
(``dataset.in_memory=false``: the images stay memory-mapped from the cache and each batch is gathered
on the host and copied to the device one batch ahead). Two measures per round: ``data`` (one epoch of
batches alone, nothing trained) and ``train`` (``--steps`` training steps of simplecnn through
cnnlab's ``train_one_epoch``). Prints the medians and the ratio host / memory. The page cache is
warm (the cache file was just written), as it is from the second epoch of a real run on.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnlab.build import build_model, build_optimizer  # noqa: E402
from cnnlab.config import register_configs  # noqa: E402
from cnnlab.data.cifar import find_cifar10, unpack_zip  # noqa: E402
from cnnlab.data.loader import BatchPipeline  # noqa: E402
from cnnlab.data.lookup import cache_dir, find_root  # noqa: E402
from cnnlab.data.mmap import HostLoader  # noqa: E402
from cnnlab.data.registry import build_data  # noqa: E402
from cnnlab.engine.device import configure_cpu, resolve_device  # noqa: E402
from cnnlab.engine.loop import EpochState, StepContext, train_one_epoch  # noqa: E402
from cnnlab.engine.schedulers import build_scheduler  # noqa: E402


def food11_tree(per_class: int, work: Path) -> tuple[Path, list[str]]:
    cifar = compose("train", overrides=["dataset=cifar10"]).dataset
    kind, path = find_cifar10(find_root(cifar, lambda p: find_cifar10(p) is not None))
    src = unpack_zip(path, cache_dir(cifar)) if kind == "zip" else path
    src = src if (src / "train").is_dir() else next(p for p in src.iterdir() if (p / "train").is_dir())
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cifar_as_food11.py"), str(src), str(work / "food11"),
         "--train-per-class", str(per_class), "--valid-per-class", "10", "--test-per-class", "10"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return work / "food11", out.stdout.split("[", 1)[1].split("]", 1)[0].split(",")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_rate(loader, device) -> float:
    loader.set_epoch(loader.epoch + 1)
    sync(device)
    t, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    sync(device)
    return n / (time.perf_counter() - t)


def train_rate(cfg, data, device, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg.model, in_channels=3, num_classes=len(data.classes), image_size=data.image_size)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optimizer)
    schedule = build_scheduler(optimizer, name="none", steps_per_epoch=steps, max_epochs=1)
    pipeline = BatchPipeline(data.mean, data.std, device, channels_last=True)
    ctx = StepContext(device=device, precision="32", pipeline=pipeline, criterion=nn.CrossEntropyLoss())
    data.train.limit = steps + 1
    data.train.set_epoch(data.train.epoch + 1)
    batches = data.train.batches()
    first = next(batches)  # warm-up step outside the clock
    model(pipeline(first[0], train=True)).sum().backward()
    optimizer.zero_grad()
    data.train.limit = steps
    sync(device)
    t = time.perf_counter()
    stats = train_one_epoch(model, data.train, optimizer, schedule, ctx, epoch=1, state=EpochState())
    sync(device)
    return stats["images"] / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300, help="training images per class (x10)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    register_configs()
    initialize_config_module("cnnlab.conf", version_base="1.3")
    device = resolve_device(args.device)
    configure_cpu(args.threads, timed=False)  # none given: the usable CPUs, fixed
    work = Path(tempfile.mkdtemp(prefix="cnnlab-hostspeed-"))
    root, classes = food11_tree(args.per_class, work)
    places = [f"dataset.root={root}", f"dataset.cache_dir={work / 'cache'}"]
    base = ["dataset=food11", "model=simplecnn", *places, f"dataset.classes=[{','.join(classes)}]",
            f"dataset.num_classes={len(classes)}", f"trainer.batch_size={args.batch}"]  # fmt: skip
    cfgs = {mode: compose("train", overrides=[*base, f"dataset.in_memory={flag}"])
            for mode, flag in (("memory", "true"), ("host", "false"))}  # fmt: skip
    datas = {}
    for mode, cfg in cfgs.items():  # the first build decodes into the cache; both then read it
        batches = dict(batch_size=args.batch, eval_batch_size=args.batch)
        datas[mode] = build_data(cfg.dataset, device=device, seed=0, **batches)
    assert isinstance(datas["host"].train, HostLoader) and not isinstance(datas["memory"].train, HostLoader)
    n = len(datas["memory"].train.x)
    print(
        f"{n} training images of {tuple(datas['memory'].train.x.shape[1:])}, batch {args.batch}, device "
        f"{device}, {torch.get_num_threads()} threads; config {OmegaConf.to_container(cfgs['host'].model)}"
    )
    rates = {(mode, what): [] for mode in cfgs for what in ("data", "train")}
    for r in range(args.rounds):
        for mode in ("memory", "host") if r % 2 == 0 else ("host", "memory"):
            rates[mode, "data"].append(data_rate(datas[mode].train, device))
            rates[mode, "train"].append(train_rate(cfgs[mode], datas[mode], device, args.steps))
        print(f"round {r + 1}: " + ", ".join(f"{m} {w} {v[-1]:,.0f} img/s" for (m, w), v in rates.items()))
    for what in ("data", "train"):
        memory, host = (statistics.median(rates[mode, what]) for mode in ("memory", "host"))
        ratio = host / memory
        print(f"{what:5}: memory {memory:,.0f} img/s, host {host:,.0f} img/s, host / memory {ratio:.2f}x")


if __name__ == "__main__":
    main()
