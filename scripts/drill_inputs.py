"""Fault drill cases: the command line, the config, and broken or hostile data files."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

from drill_kit import FAST, FOOD, Case, Drill
from PIL import Image

from tests.conftest import write_tiny_idx
from tests.test_data_cifar import Exploit, fake_batches, write_bin, write_py, write_tree, zip_tree
from tests.test_data_folders import write, write_food11


# ------------------------------------------------------------------------ the command line and config
def config_error(*args: str, expect: str, command: str = "train", before_data: bool = True):
    """A refused command: exit 2; with ``before_data`` refused before the run folder exists."""

    def case(d: Drill, name: str) -> Case:
        folder = d.folder(name)
        extra = (
            [f"dataset.root={d.idx()}", *FAST, f"hydra.run.dir={folder / 'run'}"]
            if command == "train"
            else []
        )
        proc = d.cli(command, *extra, *args, cwd=folder)
        return Case(
            proc, 2, expect, gone=[folder / "run"] if before_data else [folder / "run" / "checkpoints"]
        )

    return case


# ------------------------------------------------------------------------------------------- data
def food_with(make_bad: Callable[[Path], None], expect: str, code: int = 2, *extra: str):
    def case(d: Drill, name: str) -> Case:
        folder = d.folder(name)
        root = folder / "food"
        write_food11(root)
        (root / "train" / "2_99.jpg").unlink()  # write_food11's own truncated file; each case adds its own
        make_bad(root / "train")
        proc = d.cli("train", *FOOD, f"dataset.root={root}", *FAST, *extra, "trainer.max_epochs=1",
                     f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
        return Case(proc, code, expect, keep=[root / "train" / "0_0.jpg"])

    return case


def truncated_jpeg(train: Path) -> None:
    (train / "1_77.jpg").write_bytes((train / "0_0.jpg").read_bytes()[:150])


def huge_png(train: Path) -> None:  # 2 x PIL's limit in pixels; a 1-bit PNG keeps the file small
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 1
    Image.new("1", (side, side)).save(train / "1_80.png")


def idx_damaged(damage: Callable[[bytes], bytes], file: str, expect: str):
    def case(d: Drill, name: str) -> Case:
        data = write_tiny_idx(d.folder(name) / "idx")
        path = data / file
        path.write_bytes(gzip.compress(damage(gzip.decompress(path.read_bytes())), compresslevel=1))
        proc = d.cli(
            "train", f"dataset.root={data}", *FAST, f"hydra.run.dir={data.parent / 'run'}", cwd=data.parent
        )
        return Case(proc, 2, expect, keep=[path], gone=[data.parent / "run" / "checkpoints"])

    return case


def cifar_wrong_size(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    batches = write_bin(folder / "cifar" / "cifar-10-batches-bin", fake_batches())
    batch = batches / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    proc = d.cli("train", "dataset=cifar10", f"dataset.root={folder / 'cifar'}", *FAST,
                 f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    return Case(proc, 2, "data_batch_2.bin", keep=[batch])


def cifar_pickle_exploit(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    batches = write_py(folder / "cifar" / "cifar-10-batches-py", fake_batches())
    marker = folder / "PWNED"
    (batches / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit(marker)}))
    proc = d.cli("train", "dataset=cifar10", f"dataset.root={folder / 'cifar'}", *FAST,
                 f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    return Case(proc, 2, "data_batch_1", keep=[batches / "data_batch_1"], gone=[marker])


def unreadable_folder(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    data = write_tiny_idx(folder / "idx")
    data.chmod(0)
    try:
        proc = d.cli("train", f"dataset.root={data}", *FAST, f"hydra.run.dir={folder / 'run'}", cwd=folder)
    finally:
        data.chmod(0o755)
    return Case(proc, 2, "cannot read")


def food11_wrong_root(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    (folder / "food" / "images").mkdir(parents=True)
    proc = d.cli("train", *FOOD, f"dataset.root={folder / 'food'}", *FAST, f"hydra.run.dir={folder / 'run'}",
                 cwd=folder)  # fmt: skip
    return Case(proc, 2, "train/")


def food11_course_layout(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    write_food11(folder / "food")
    (folder / "food" / "train" / "2_99.jpg").unlink()
    for old, new in (("train", "training"), ("valid", "validation"), ("test", "evaluation")):
        (folder / "food" / old).rename(folder / "food" / new)
    proc = d.cli("train", *FOOD, f"dataset.root={folder / 'food'}", *FAST, "trainer.max_epochs=1",
                 f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    return Case(proc, 0, "cnnlab predict run=", keep=[folder / "run" / "summary.json"])


def imagefolder_classes(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for label in ("cat", "dog"):
            for i in range(n):
                write(folder / "pets" / split / label / f"{i}.png", seed=i, shape=(12, 12))
    proc = d.cli("train", "dataset=imagefolder", f"dataset.root={folder / 'pets'}", "dataset.image_size=16",
                 "dataset.cache=false", "dataset.num_workers=0", *FAST, "trainer.max_epochs=1",
                 f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    return Case(proc, 0, "test acc", keep=[folder / "run" / "summary.json"])


def verify_bad_files(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    root = folder / "food"
    write_food11(root)  # with its truncated train/2_99.jpg
    proc = d.cli(
        "data", "verify", "dataset=food11", f"dataset.root={root}", "dataset.num_workers=0", cwd=folder
    )
    out = proc.stdout + proc.stderr
    once = out.count("2_99.jpg") == 1 and str(root) in out
    return Case(
        proc, 1, "2_99.jpg", keep=[root / "train" / "2_99.jpg"], ok=once, note="named once, folder named"
    )


def skip_warning(d: Drill, name: str) -> Case:
    case = food_with(truncated_jpeg, "skipping", 0, "dataset.on_bad_image=skip")(d, name)
    case.ok = "on_bad_image=skip" not in case.proc.stdout + case.proc.stderr
    return case


def stale_cache_temp(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    write_tree(folder / "tree")
    archive = zip_tree(folder / "tree", folder / "cifar10-jpg.zip")
    stale = folder / "cache" / ".cifar10-jpg-0123456789ab.x1y2z3.tmp"  # a killed unpack's folder
    (stale / "train").mkdir(parents=True)
    proc = d.cli("data", "verify", "dataset=cifar10", f"dataset.root={archive}", "dataset.num_workers=0",
                 f"dataset.cache_dir={folder / 'cache'}", cwd=folder)  # fmt: skip
    return Case(proc, 0, "", gone=[stale])


def gzip_bomb(raw: bytes) -> bytes:
    return raw + bytes(64 * 2**20)  # 64 MiB past what the header promises (64 KB of gzip)


def sweep_with_cfg(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    proc = d.cli("train", "-m", f"dataset.root={d.idx()}", "optimizer.lr=0.1,0.2", "--cfg", "job", cwd=folder)
    return Case(proc, 2, "Only one of --run, --multirun, --cfg", gone=[folder / "multirun"])


def no_arguments(d: Drill, name: str) -> Case:
    return Case(d.cli(cwd=d.folder(name)), 2, "usage: cnnlab <command>")
