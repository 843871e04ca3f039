"""Run every fault of issue 8 against the installed CLI and print what happened.

    python scripts/fault_drill.py [--keep DIR]

Each drill builds its own tiny data (with the test suite's writers), runs `cnnlab ...` in a
subprocess, and reports the exit code, the user-facing message (the last line on stderr) and what
survived on disk. A drill "holds" when the exit code is the expected one, no traceback was printed,
and the files that must survive did. Exits 1 if any drill does not hold.
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test suite's data writers

from tests.conftest import write_tiny_idx  # noqa: E402
from tests.test_data_cifar import Exploit, fake_batches, write_bin, write_py  # noqa: E402
from tests.test_data_folders import write_food11  # noqa: E402

FAST = ["trainer.device=cpu", "trainer.tensorboard=false", "trainer.progress=plain", "trainer.batch_size=32"]


@dataclass
class Outcome:
    code: int
    message: str
    survived: str
    holds: bool


def cnnlab(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "cnnlab", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def outcome(proc, expected: int, must_exist: list[Path], must_not_exist: list[Path] = ()) -> Outcome:
    kept = [p for p in must_exist if p.exists()]
    leaked = [p for p in must_not_exist if p.exists()]
    survived = ", ".join(p.name for p in kept) or "-"
    if leaked:
        survived += f"; LEFT BEHIND: {', '.join(p.name for p in leaked)}"
    holds = proc.returncode == expected and "Traceback" not in proc.stderr and len(kept) == len(must_exist)
    return Outcome(proc.returncode, last_line(proc.stderr or proc.stdout), survived, holds and not leaked)


def trained_run(work: Path) -> Path:
    """A finished 2-epoch LeNet run on tiny IDX data (made once, copied by the drills that need it)."""
    run = work / "base-run"
    if not run.exists():
        data = write_tiny_idx(work / "idx")
        proc = cnnlab(
            "train", f"dataset.root={data}", *FAST, "trainer.max_epochs=2", f"hydra.run.dir={run}", cwd=work
        )
        if proc.returncode != 0:
            raise SystemExit(f"could not train the base run:\n{proc.stderr}")
    return run


def copy_run(work: Path, name: str) -> Path:
    target = work / name
    shutil.copytree(trained_run(work), target)
    return target


def food_with(work: Path, name: str, make_bad: Callable[[Path], None]) -> Outcome:
    root = work / name
    write_food11(root)
    (root / "train" / "2_99.jpg").unlink()  # write_food11's own truncated file; each drill adds its own
    make_bad(root / "train")
    food = ["dataset=food11", f"dataset.root={root}", "dataset.image_size=8", "dataset.cache=false",
            "dataset.num_workers=0"]  # fmt: skip
    proc = cnnlab("train", *food, *FAST, f"hydra.run.dir={work / (name + '-run')}", cwd=work)
    return outcome(proc, 2, [root / "train" / "0_0.jpg"])


def truncated_jpeg(work):
    def bad(train):
        (train / "1_77.jpg").write_bytes((train / "0_0.jpg").read_bytes()[:150])

    return food_with(work, "truncated", bad)


def png_not_an_image(work):
    return food_with(work, "fakepng", lambda train: (train / "1_78.png").write_text("just text"))


def zero_byte(work):
    return food_with(work, "zerobyte", lambda train: (train / "1_79.jpg").write_bytes(b""))


def huge_image(work):
    def bad(train):  # 2 x PIL's limit in pixels; a 1-bit PNG keeps the file small
        side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 1
        Image.new("1", (side, side)).save(train / "1_80.png")

    return food_with(work, "bomb", bad)


def idx_wrong_magic(work):
    data = write_tiny_idx(work / "idx-magic")
    path = data / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2] = 0x0D  # float data type: not what an image file holds
    path.write_bytes(gzip.compress(bytes(raw)))
    proc = cnnlab("train", f"dataset.root={data}", *FAST, f"hydra.run.dir={work / 'idx-magic-run'}", cwd=work)
    return outcome(proc, 2, [path])


def idx_short(work):
    data = write_tiny_idx(work / "idx-short")
    path = data / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))  # the header promises more
    proc = cnnlab("train", f"dataset.root={data}", *FAST, f"hydra.run.dir={work / 'idx-short-run'}", cwd=work)
    return outcome(proc, 2, [path])


def cifar_wrong_size(work):
    folder = write_bin(work / "cifar-size" / "cifar-10-batches-bin", fake_batches())
    batch = folder / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    proc = cnnlab("train", "dataset=cifar10", f"dataset.root={work / 'cifar-size'}", *FAST,
                  f"hydra.run.dir={work / 'cifar-size-run'}", cwd=work)  # fmt: skip
    return outcome(proc, 2, [batch])


def cifar_pickle_exploit(work):
    folder = write_py(work / "cifar-pickle" / "cifar-10-batches-py", fake_batches())
    marker = work / "PWNED"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(marker)}))
    proc = cnnlab("train", "dataset=cifar10", f"dataset.root={work / 'cifar-pickle'}", *FAST,
                  f"hydra.run.dir={work / 'cifar-pickle-run'}", cwd=work)  # fmt: skip
    return outcome(proc, 2, [folder / "data_batch_1"], [marker])


def checkpoint_of_another_model(work):
    """A LeNet run whose best.pt holds an MLP's weights (its config still says LeNet)."""
    import torch

    run = copy_run(work, "other-model")
    other = work / "mlp-run"
    mlp = ["model=mlp", "trainer.max_epochs=1", f"hydra.run.dir={other}"]
    cnnlab("train", f"dataset.root={work / 'idx'}", *FAST, *mlp, cwd=work)
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    state["model"] = torch.load(other / "checkpoints" / "best.pt", weights_only=True)["model"]
    torch.save(state, best)
    (run / "checkpoints" / "best.safetensors").unlink()
    proc = cnnlab("predict", f"run={run}", cwd=work)
    return outcome(proc, 2, [best], [run / "submission.csv"])


def hostile_checkpoint(work):
    run = copy_run(work, "hostile-ckpt")
    marker = work / "PWNED-CKPT"
    (run / "checkpoints" / "best.safetensors").unlink()
    (run / "checkpoints" / "best.pt").write_bytes(pickle.dumps({"model": Exploit(marker)}))
    proc = cnnlab("predict", f"run={run}", cwd=work)
    return outcome(proc, 2, [run / "checkpoints" / "last.pt"], [marker, run / "submission.csv"])


def unknown_config_key(work):
    proc = cnnlab("train", f"dataset.root={work / 'idx'}", "model.dropuot=0.1", *FAST,
                  f"hydra.run.dir={work / 'unknown-key-run'}", cwd=work)  # fmt: skip
    return outcome(proc, 2, [], [work / "unknown-key-run" / "checkpoints"])


def unwritable_output(work):
    (work / "a-file").write_text("")
    proc = cnnlab(
        "train", f"dataset.root={work / 'idx'}", *FAST, f"hydra.run.dir={work / 'a-file' / 'run'}", cwd=work
    )
    return outcome(proc, 2, [work / "a-file"])


def disk_full_while_checkpointing(work):
    """Resume a finished run for more epochs under a file-size limit below a checkpoint's size."""
    run = copy_run(work, "disk-full")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    limit_kb = len(before) // 1024 // 2
    prefix = ("bash", "-c", f'ulimit -f {limit_kb}; trap "" XFSZ; exec "$@"', "drill")
    proc = cnnlab("train", f"resume={run}", "trainer.max_epochs=4", cwd=work, prefix=prefix)
    intact = (run / "checkpoints" / "last.pt").read_bytes() == before
    result = outcome(proc, 2, [run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"])
    temp_left = list((run / "checkpoints").glob(".*.tmp"))
    result.survived += "" if intact else "; last.pt CHANGED"
    result.survived += f"; temp files left: {len(temp_left)}" if temp_left else ""
    result.holds = result.holds and intact and not temp_left
    return result


def interrupted(work, signum: int, name: str):
    data = work / "idx"
    run = work / f"{name}-run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "train", f"dataset.root={data}", *FAST, "trainer.batch_size=4",
         "trainer.max_epochs=50", "trainer.patience=null", f"hydra.run.dir={run}"],
        cwd=work, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("epoch 1/"):
            proc.send_signal(signum)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=300)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(lines) + rest)
    return outcome(done, 128 + signum, [run / "checkpoints" / "last.pt", run / "metrics.csv"])


def divergence(work):
    run = work / "nan-run"
    proc = cnnlab("train", f"dataset.root={work / 'idx'}", "optimizer=sgd", "optimizer.lr=1e6", *FAST,
                  "trainer.max_epochs=3", f"hydra.run.dir={run}", cwd=work)  # fmt: skip
    return outcome(proc, 3, [run / "status.json"], [run / "summary.json"])


DRILLS: list[tuple[str, Callable[[Path], Outcome]]] = [
    ("truncated JPEG in food11 train/", truncated_jpeg),
    ("PNG that is not an image", png_not_an_image),
    ("zero-byte image", zero_byte),
    ("huge image (decompression bomb)", huge_image),
    ("IDX with a wrong magic number", idx_wrong_magic),
    ("IDX with short data", idx_short),
    ("CIFAR batch of the wrong size", cifar_wrong_size),
    ("CIFAR pickle that runs code", cifar_pickle_exploit),
    ("checkpoint of another model", checkpoint_of_another_model),
    ("checkpoint pickle that runs code", hostile_checkpoint),
    ("config with an unknown key", unknown_config_key),
    ("output dir not writable", unwritable_output),
    ("disk fills while checkpointing", disk_full_while_checkpointing),
    ("Ctrl-C during training", lambda w: interrupted(w, signal.SIGINT, "sigint")),
    ("SIGTERM (preemption)", lambda w: interrupted(w, signal.SIGTERM, "sigterm")),
    ("loss becomes NaN", divergence),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="cnnlab-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    trained_run(work)
    rows = [(name, drill(work)) for name, drill in DRILLS]
    width = max(len(name) for name, _ in rows)
    print(f"{'fault':<{width}}  exit  holds  message  [survived on disk]")
    for name, o in rows:
        print(f"{name:<{width}}  {o.code:>4}  {'yes' if o.holds else 'NO':>5}  {o.message}  [{o.survived}]")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if all(o.holds for _, o in rows) else 1)


if __name__ == "__main__":
    main()
