"""Training throughput of cnnlab against two references measured in the same process, in alternation.

    CNNLAB_DATA=/work/shared/datasets python scripts/benchmark.py                 # all cases (~5 min)
    python scripts/benchmark.py --cases lenet_fashion --rounds 5 --steps 200      # one case, longer

For each case the same model, batch size and number of steps run three ways, round after round:

* ``cnnlab``  -- cnnlab's own step path: TensorLoader (uint8 in memory, seeded permutation) ->
  BatchPipeline (float, augment, normalise, memory format on whole batches) -> ``train_one_epoch``
  with a StepContext, at ``--precision`` and cnnlab's default memory format (channels_last for convs).
* ``classic`` -- the course-notebook loop: a torchvision dataset object over the same arrays (one PIL
  image per sample, ``ToTensor`` + ``Normalize``, per-sample crop/flip where the case augments), a
  ``DataLoader``, ``zero_grad / forward / loss / backward / step`` with ``loss.item()`` per batch, fp32,
  default memory format.
* ``bare``    -- the framework-free floor: preloaded, normalised float tensors sliced by a permutation,
  at the same precision and memory format as ``cnnlab`` (no augmentation: it is the floor), with torch's
  Adam at the case's lr (``--bare-optimizer recipe``: the case's own optimizer, built as cnnlab builds it).

``--device cuda --paths cnnlab,bare`` runs the same on a GPU (the clock waits for the GPU around each
round); ``scripts/gpu_check.py`` uses that, with the GPU-sized cases ``fast_cifar10_gpu``,
``resnet18_b128`` and ``resnet18_b512``.

Each round times ``steps`` optimizer steps per path after one untimed warm-up, so start-up (imports,
first-call allocation, data reading) is excluded; the table shows the median img/s over the rounds and
the ratios, by the clock and by this thread's CPU time (other jobs on the cores disturb the latter much
less; DataLoader workers' time is not in it). ``food11`` is different: it lays out CIFAR-10 JPEGs as a
Food-11 tree at 128 px and times whole epochs, including decoding, for cnnlab (epoch 1 decodes and
writes the cache, epoch 2 runs from memory, a second run reads the cache) against the classic
per-sample ``ImageFolder`` loop.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cnnlab.build import build_augment_from, build_model, build_optimizer, has_conv
from cnnlab.config import register_configs
from cnnlab.data.cifar import find_cifar10, unpack_zip
from cnnlab.data.loader import BatchPipeline
from cnnlab.data.lookup import cache_dir, find_root
from cnnlab.data.registry import build_data
from cnnlab.engine.device import autocast, configure_cpu, configure_cuda
from cnnlab.engine.loop import EpochState, StepContext, train_one_epoch
from cnnlab.engine.schedulers import build_scheduler

CPU = torch.device("cpu")


@dataclass
class Case:
    overrides: list[str]
    steps: int  # default timed steps per round
    label: str


CASES = {
    "lenet_fashion": Case(["dataset=fashion_mnist", "model=lenet"], 200, "LeNet / Fashion-MNIST"),
    "fast_mnist": Case(["+experiment=fast_mnist"], 200, "fast_mnist preset (simplecnn 16-32-64) / MNIST"),
    "simplecnn_cifar": Case(
        ["dataset=cifar10", "model=simplecnn", "augmentation=basic"], 15, "simplecnn / CIFAR-10 (crop+flip)"
    ),
    "resnet18_cifar": Case(
        [
            "dataset=cifar10",
            "model=resnet18",
            "model.stem=cifar",
            "augmentation=basic",
            "trainer.batch_size=64",
        ],
        1,
        "resnet18 (CIFAR stem) / CIFAR-10",
    ),
    # GPU-sized cases (scripts/gpu_check.py): the presets' own recipes.
    "fast_cifar10_gpu": Case(
        ["+experiment=fast_cifar10_gpu"], 40, "fast_cifar10_gpu preset (simplecnn 64-256-256)"
    ),
    "resnet18_b128": Case(["+experiment=cifar10_resnet18"], 40, "cifar10_resnet18 preset (CIFAR stem)"),
    "resnet18_b512": Case(
        ["+experiment=cifar10_resnet18", "trainer.batch_size=512"], 20, "cifar10_resnet18 preset (CIFAR stem)"
    ),
}
TORCHVISION = ("alexnet", "vgg11_bn", "googlenet", "resnet18", "mobilenet_v3_small")  # model=torchvision
for _arch in TORCHVISION:
    CASES[f"tv_{_arch}"] = Case(
        ["dataset=cifar10", "model=torchvision", f"model.arch={_arch}", "trainer.batch_size=64"],
        3,
        f"torchvision {_arch} / CIFAR-10",
    )


class ArrayVisionDataset(Dataset):
    """What ``torchvision.datasets.FashionMNIST``/``CIFAR10`` do per sample: a PIL image from the
    uint8 array, then the transform (built here from the arrays cnnlab read, not from their files)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.data = x.permute(0, 2, 3, 1).squeeze(-1).numpy()  # HW or HWC, as torchvision stores them
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i], mode="L" if self.data.ndim == 3 else "RGB")
        return self.transform(img), self.targets[i]


def classic_transform(cfg, *, train: bool, resize: int | None = None) -> transforms.Compose:
    steps = [transforms.Resize((resize, resize))] if resize else []
    if train and cfg.augmentation.name == "basic":
        steps += [transforms.RandomCrop(cfg.dataset.image_size, padding=4)]
        if cfg.dataset.channels == 3:
            steps += [transforms.RandomHorizontalFlip()]
    return transforms.Compose(
        [*steps, transforms.ToTensor(), transforms.Normalize(cfg.dataset.mean, cfg.dataset.std)]
    )


def classic_steps(model, loader_iter, optimizer, steps: int) -> int:
    """The notebook loop; returns images seen."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen, running_loss = 0, 0.0
    for _ in range(steps):
        x, y = next(loader_iter)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        seen += len(y)
    return seen


def forever(loader):
    """Batches of ``loader`` across epochs, so a DataLoader's start-up is paid once, not per round."""
    for _epoch in itertools.count():
        yield from loader


def bare_steps(model, x, y, optimizer, *, batch: int, steps: int, precision: str, memory_format) -> int:
    """Preloaded float tensors, a permutation, forward/backward/step: nothing else."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    order = torch.randperm(len(x), device=x.device)
    for i in range(steps):
        idx = order[i * batch : (i + 1) * batch]
        xb = x[idx].contiguous(memory_format=memory_format)
        with autocast(x.device, precision):
            loss = criterion(model(xb), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch


def compose_cfg(overrides: list[str], device: str = "cpu"):
    return compose("train", overrides=[f"trainer.device={device}", *overrides])


def setup_cnnlab(cfg, data, model, precision: str, channels_last: bool, device=CPU):
    augment = build_augment_from(cfg.augmentation, channels=data.channels, image_size=data.image_size)
    pipeline = BatchPipeline(data.mean, data.std, device, augment=augment, channels_last=channels_last)
    optimizer = build_optimizer(model, cfg.optimizer)
    schedule = build_scheduler(optimizer, name="none", steps_per_epoch=len(data.train), max_epochs=1)
    ctx = StepContext(
        device=device, precision=precision, pipeline=pipeline, criterion=nn.CrossEntropyLoss(),
    )  # fmt: skip
    return optimizer, schedule, ctx


def cnnlab_steps(model, data, optimizer, schedule, ctx, steps: int) -> int:
    data.train.limit = steps
    data.train.set_epoch(data.train.epoch + 1)
    stats = train_one_epoch(model, data.train, optimizer, schedule, ctx, epoch=1, state=EpochState())
    return stats["images"]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so a clock reading covers the work (GPUs run ahead)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn, device: torch.device = CPU, windows: list | None = None, cpu_rates: list | None = None
) -> float:
    """img/s by the clock; also records the timed window and the img/s by this thread's CPU time
    (steadier than the clock when other jobs share the cores; meaningless on a GPU)."""
    synchronize(device)
    t, c = time.perf_counter(), time.thread_time()
    images = fn()
    synchronize(device)
    end = time.perf_counter()
    if cpu_rates is not None:
        cpu_rates.append(images / max(time.thread_time() - c, 1e-9))
    if windows is not None:
        windows.append((t, end))
    return images / (end - t)


def run_case(name: str, args) -> list[tuple]:
    """The case's paths in alternation; rows of (label, path, setting, median img/s, cnnlab/classic,
    cnnlab/bare, timed windows). ``args.paths`` picks paths (cnnlab and bare at least), ``args.device``
    the device, ``args.bare_optimizer`` the bare loop's optimizer (adam: torch's Adam at the recipe's lr;
    recipe: the recipe's own, built as cnnlab builds it, same kernels); ``args.overrides`` (optional) is
    added to the case's overrides."""
    case = CASES[name]
    device = torch.device(getattr(args, "device", "cpu"))
    paths_wanted = getattr(args, "paths", "cnnlab,classic,bare").split(",")
    cfg = compose_cfg([*case.overrides, *getattr(args, "overrides", [])], device.type)
    configure_cuda(device, deterministic=False)
    steps = args.steps or case.steps
    batch = cfg.trainer.batch_size
    data = build_data(cfg.dataset, device=device, batch_size=batch, eval_batch_size=batch, seed=0)
    torch.manual_seed(0)
    base = build_model(
        cfg.model, in_channels=data.channels, num_classes=len(data.classes), image_size=data.image_size
    ).to(device)
    channels_last = has_conv(base)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        data.train.x = data.train.x.contiguous(memory_format=fmt)  # as cnnlab.train stores it

    fast = copy.deepcopy(base).to(memory_format=fmt)
    optimizer, schedule, ctx = setup_cnnlab(cfg, data, fast, args.precision, channels_last, device)
    paths = {"cnnlab": lambda n: cnnlab_steps(fast, data, optimizer, schedule, ctx, n)}

    if "classic" in paths_wanted:  # PIL per sample: a CPU loop
        classic = copy.deepcopy(base).cpu()
        classic_opt = torch.optim.Adam(classic.parameters(), lr=cfg.optimizer.lr)
        dataset = ArrayVisionDataset(
            data.train.x.cpu(), data.train.y.cpu(), classic_transform(cfg, train=True)
        )
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=args.workers, drop_last=True,
                            persistent_workers=args.workers > 0)  # fmt: skip
        classic_iter = forever(loader)
        paths["classic"] = lambda n: classic_steps(classic, classic_iter, classic_opt, n)

    bare = copy.deepcopy(base).to(memory_format=fmt)
    if getattr(args, "bare_optimizer", "adam") == "recipe":
        bare_opt = build_optimizer(bare, cfg.optimizer)
    else:
        bare_opt = torch.optim.Adam(bare.parameters(), lr=cfg.optimizer.lr)
    bare_x = BatchPipeline(data.mean, data.std, device)(data.train.x, train=False)
    bare_y = data.train.y
    paths["bare"] = lambda n: bare_steps(
        bare, bare_x, bare_y, bare_opt, batch=batch, steps=n, precision=args.precision, memory_format=fmt
    )
    for fn in paths.values():  # warm-up: first-call allocations, DataLoader workers, kernel selection
        fn(2)
    rates: dict[str, list[float]] = {k: [] for k in paths}
    windows: dict[str, list] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.rounds):
        for key, fn in paths.items():
            rates[key].append(timed(lambda fn=fn: fn(steps), device, windows[key], cpu[key]))
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    prec = {"32": "fp32", "bf16": "bf16 autocast"}[args.precision]
    mem = "channels_last" if channels_last else "contiguous"
    detail = {
        "cnnlab": f"{prec}, {mem}",
        "classic": f"fp32, contiguous, PIL+ToTensor, workers={args.workers}",
        "bare": f"{prec}, {mem}, no augmentation",
    }
    label = f"{case.label}, batch {batch}, {steps} steps x {args.rounds} rounds"
    classic_ratio = med["cnnlab"] / med["classic"] if "classic" in med else float("nan")
    return [
        (label, k, detail[k], med[k], classic_ratio, med["cnnlab"] / med["bare"], windows[k], cpu_med[k])
        for k in paths
    ]


def food11_tree(args) -> tuple[Path, list[str]]:
    """A small Food-11 layout from the CIFAR-10 JPEGs (scripts/cifar_as_food11.py)."""
    cifar = compose_cfg(["dataset=cifar10"]).dataset
    kind, path = find_cifar10(find_root(cifar, lambda p: find_cifar10(p) is not None))
    src = unpack_zip(path, cache_dir(cifar)) if kind == "zip" else path
    src = src if (src / "train").is_dir() else next(p for p in src.iterdir() if (p / "train").is_dir())
    dst = Path(tempfile.mkdtemp(prefix="cnnlab-bench-")) / "food11"
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("cifar_as_food11.py")), str(src), str(dst),
         "--train-per-class", str(args.food11_per_class), "--valid-per-class", "10",
         "--test-per-class", "10"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    classes = out.stdout.split("[", 1)[1].split("]", 1)[0].split(",")
    return dst, classes


class FileDataset(Dataset):
    """The notebook's Food-11 dataset: open, decode and resize one JPEG per sample, every epoch."""

    def __init__(self, files: list[Path], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), int(path.stem.split("_")[0])


def run_food11(args) -> list[tuple]:
    root, classes = food11_tree(args)
    size = 128
    overrides = ["dataset=food11", "model=simplecnn", f"dataset.root={root}",
                 f"dataset.cache_dir={root.parent / 'cache'}", f"dataset.classes=[{','.join(classes)}]",
                 f"dataset.num_classes={len(classes)}", "trainer.batch_size=64"]  # fmt: skip
    cfg = compose_cfg(overrides)
    batch = cfg.trainer.batch_size
    torch.manual_seed(0)
    rows = []

    def cnnlab_run(tag: str) -> None:
        t0 = time.perf_counter()
        data = build_data(
            cfg.dataset, device=torch.device("cpu"), batch_size=batch, eval_batch_size=batch, seed=0
        )
        t_read = time.perf_counter() - t0
        model = build_model(cfg.model, in_channels=3, num_classes=len(classes), image_size=size).to(
            memory_format=torch.channels_last
        )
        optimizer, schedule, ctx = setup_cnnlab(cfg, data, model, args.precision, True)
        n = len(data.train.x)
        for epoch in (1, 2):
            data.train.set_epoch(epoch)
            t = time.perf_counter()
            state = EpochState()
            stats = train_one_epoch(model, data.train, optimizer, schedule, ctx, epoch=epoch, state=state)
            first = epoch == 1  # reading (decode + resize + cache write, or cache load) is data time
            secs = time.perf_counter() - t + (t_read if first else 0.0)
            data_s = stats["data_s"] + (t_read if first else 0.0)
            what = f"{tag} epoch {epoch}" + (f" (read {t_read:.1f}s)" if first else " (in memory)")
            label = f"simplecnn / food11 layout at {size} px, {n} images, batch {batch}"
            rows.append((label, "cnnlab", what, n / secs, data_s))

    cnnlab_run("cold cache:")
    cnnlab_run("warm cache:")
    files = sorted((root / "train").glob("*.jpg"))
    loader = DataLoader(FileDataset(files, classic_transform(cfg, train=True, resize=size)), batch_size=batch,
                        shuffle=True, num_workers=args.workers)  # fmt: skip
    model = build_model(cfg.model, in_channels=3, num_classes=len(classes), image_size=size)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    for epoch in (1, 2):
        t = time.perf_counter()
        seen = classic_steps(model, iter(loader), optimizer, len(loader))
        rows.append(
            (
                rows[0][0],
                "classic",
                f"epoch {epoch} (decode every epoch, workers={args.workers})",
                seen / (time.perf_counter() - t),
                None,  # the classic loop does not separate its data time
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="lenet_fashion,fast_mnist,simplecnn_cifar,resnet18_cifar,food11",
                        help=f"comma-separated, from: {', '.join([*CASES, 'food11'])}")  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default: per case)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the classic loop")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--food11-per-class", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the classic path runs on the CPU)")
    parser.add_argument("--paths", default="cnnlab,classic,bare", help="cnnlab,bare or cnnlab,classic,bare")
    parser.add_argument(
        "--bare-optimizer",
        choices=("adam", "recipe"),
        default="adam",
        help="adam: torch's Adam at the recipe's lr; recipe: the case's optimizer as cnnlab builds it",
    )
    args = parser.parse_args()
    configure_cpu(args.threads, timed=False)  # none given: the usable CPUs, fixed
    register_configs()
    initialize_config_module("cnnlab.conf", version_base="1.3")
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")
    for name in args.cases.split(","):
        if name != "food11" and name not in CASES:
            parser.error(f"unknown case '{name}'; choose from {', '.join([*CASES, 'food11'])}")
        if name == "food11":
            rows = run_food11(args)
            print(f"\n{rows[0][0]}")
            for _, path, what, rate, data_s in rows:
                data = f"data {data_s:7.2f} s" if data_s is not None else " " * 14
                print(f"  {path:8s} {rate:9.0f} img/s  {data}  {what}")
            cold1, cold2 = rows[0][4], rows[1][4]
            print(f"  cnnlab data time, cold cache: epoch 1 / epoch 2 = {cold1 / max(cold2, 1e-9):.0f}x")
            continue
        rows = run_case(name, args)
        print(f"\n{rows[0][0]}")
        print(f"  {'path':8s} {'img/s':>9s}   setting")
        for _, path, detail, rate, *_, cpu_rate in rows:
            print(f"  {path:8s} {rate:9.0f}   {detail}   ({cpu_rate:.0f} img/s by CPU time)")
        print(f"  cnnlab / classic = {rows[0][4]:.2f}x    cnnlab / bare = {rows[0][5]:.2f}x")
        by_cpu = {path: cpu_rate for _, path, *_, cpu_rate in rows}
        print("  by CPU time: " + "    ".join(f"cnnlab / {p} = {by_cpu['cnnlab'] / by_cpu[p]:.2f}x"
                                            for p in by_cpu if p != "cnnlab"))  # fmt: skip


if __name__ == "__main__":
    main()
