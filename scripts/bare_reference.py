"""The framework-free reference for time to accuracy: one plain PyTorch script, nothing of cnnlab.

    python scripts/bare_reference.py --dataset mnist --epochs 1 --seed 42

A BN conv stack (conv3x3 -> max-pool -> BN -> ReLU per stage, linear head) trained with Adam and a
one-cycle schedule on in-memory uint8 tensors sliced by a random permutation, then evaluated on the
test split. This is the kind of script issue 7's reference points were measured with; it has no
config system, no validation split, no checkpoints and no logging, so it is the floor that
cnnlab's whole command is compared against (``scripts/time_to_accuracy.py`` runs both). Prints one
line: ``test_acc=<float> seconds=<since the interpreter started> setup_s=<after the imports, before the
first step> train_s=<the epochs> test_s=<scoring the test split>``. ``--device cuda`` runs it on a GPU
(the clock waits for the GPU at the three marks), with ``--precision bf16`` as cnnlab's auto picks there.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the heavy imports, which count

import argparse  # noqa: E402
import gzip  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}  # fmt: skip
STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
FOLDERS = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}  # as in ../shared/datasets


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = (read_idx(root / name) for name in FILES[split])
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def net(channels: list[int], classes: int = 10, size: int = 28) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 1
    for c in channels:
        conv = nn.Conv2d(width, c, 3, padding=1, bias=False)
        layers += [conv, nn.MaxPool2d(2), nn.BatchNorm2d(c), nn.ReLU()]
        width, size = c, size // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size * size, classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(STATS), default="mnist")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--channels", default="16,32,64")
    parser.add_argument("--lr", type=float, default=8e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default (all cores)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    args = parser.parse_args()

    device = torch.device(args.device)
    marks = [time.time()]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    root = Path(os.environ.get("CNNLAB_DATA", "../shared/datasets")) / FOLDERS[args.dataset]
    (x_train, y_train), (x_test, y_test) = (
        tuple(t.to(device) for t in load(root, s)) for s in ("train", "test")
    )
    mean, std = STATS[args.dataset]
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    def prepare(xb: torch.Tensor) -> torch.Tensor:
        x = (xb.float() / 255 - mean) / std
        return x.contiguous(memory_format=torch.channels_last)

    def mark() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.time())

    model = net([int(c) for c in args.channels.split(",")]).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * (len(x_train) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    mark()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), device=device)
        for i in range(len(x_train) // args.batch_size):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            with torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
                loss = criterion(model(prepare(x_train[idx])), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    mark()
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
        for i in range(0, len(x_test), 500):
            correct += int((model(prepare(x_test[i : i + 500])).argmax(1) == y_test[i : i + 500]).sum())
    mark()
    setup_s, train_s, test_s = (b - a for a, b in itertools.pairwise(marks))
    print(f"test_acc={correct / len(x_test):.4f} seconds={time.time() - STARTED:.2f} setup_s={setup_s:.2f} "
          f"train_s={train_s:.2f} test_s={test_s:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
