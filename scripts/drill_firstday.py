"""Fault drill cases of a newcomer's first day: layouts, folder names and output that must just work, and
messages that must say what to do."""

from __future__ import annotations

import csv
from pathlib import Path

from drill_kit import FAST, Case, Drill

from tests.conftest import write_tiny_idx
from tests.test_data_folders import write

PETS = ["dataset=imagefolder", "dataset.image_size=16", "dataset.cache=false", "dataset.num_workers=0"]
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}  # refused at once


def pets(root: Path, splits: tuple[str, ...] = ("",), n: int = 6) -> Path:
    """Two classes of small PNGs: ``root/<class>/`` (split "") or ``root/<split>/<class>/``."""
    for split in splits:
        for label in ("cat", "dog"):
            for i in range(n):
                write(root / split / label / f"{split or 'img'}_{label}_{i}.png", seed=i, shape=(12, 12))
    return root


def flat_image_folder(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    proc = d.cli("train", *PETS, f"dataset.root={pets(folder / 'pets')}", *FAST, "trainer.max_epochs=1",
                 f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    return Case(proc, 0, "no test split", keep=[folder / "run" / "summary.json"])


def root_without_a_dataset(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    (folder / "mine" / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "mine" / "notes.txt").write_text("not images")
    proc = d.cli("train", *PETS, f"dataset.root={folder / 'mine'}", *FAST, f"hydra.run.dir={folder / 'run'}",
                 cwd=folder)  # fmt: skip
    return Case(proc, 2, "cnnlab: error: dataset.root=", ok="it holds notes.txt" in proc.stderr,
                note="names what it holds")  # fmt: skip


def idx_without_images(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    data = write_tiny_idx(folder / "idx", n_train=0)
    proc = d.cli("train", f"dataset.root={data}", *FAST, f"hydra.run.dir={folder / 'run'}", cwd=folder)
    return Case(proc, 2, "holds no images", gone=[folder / "run" / "checkpoints"])


def non_ascii_run_dir(d: Drill, name: str) -> Case:
    run, proc = d.train(f"{name}/rün 數據 r①", "trainer.max_epochs=1")
    return Case(proc, 0, "test acc", keep=[run / "summary.json"])


def offline_download(d: Drill, name: str) -> Case:
    folder = d.folder(name)
    proc = d.cli("train", "dataset=mnist", "dataset.system_dirs=[]", f"dataset.cache_dir={folder / 'cache'}",
                 *FAST, f"hydra.run.dir={folder / 'run'}", cwd=folder,
                 env={**OFFLINE, "CNNLAB_DATA": ""})  # fmt: skip
    # the run's own log line naming its thread count comes first; torchvision's download noise must not
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("threads: ")]
    return Case(proc, 2, "torchvision's download failed", ok=len(lines) == 1, note=f"{len(lines)} line(s)")


def unwrapped_output(d: Drill, name: str) -> Case:
    """A long run folder's path printed whole into a file (rich wrapped at 80 columns)."""
    run, proc = d.train(f"{name}/{'long-folder-name-' * 6}", "trainer.max_epochs=1")
    return Case(proc, 0, str(run), keep=[run / "summary.json"], ok=str(run) in proc.stdout + proc.stderr)


def help_without_schema(d: Drill, name: str) -> Case:
    proc = d.cli("train", "--help", cwd=d.folder(name))
    return Case(proc, 0, "model: lenet", ok="schema/" not in proc.stdout, note="no schema/ groups")


def labeled_test_ids(d: Drill, name: str) -> Case:
    """A submission of a labeled image-folder test split: ids are the file names, not 1..N."""
    folder = d.folder(name)
    root = pets(folder / "pets", ("train", "test"), n=5)
    run = folder / "run"
    trained = d.cli("train", *PETS, f"dataset.root={root}", *FAST, "trainer.max_epochs=1",
                    "dataset.val_split=0.2", "trainer.report=false", f"hydra.run.dir={run}",
                    cwd=folder)  # fmt: skip
    if trained.returncode != 0:
        return Case(trained, 0, "", ok=False, note="training failed")
    proc = d.cli("predict", f"run={run}", f"out={folder / 'sub.csv'}", cwd=folder)
    sub = folder / "sub.csv"
    ids = [row[0] for row in csv.reader(sub.open())][1:] if sub.is_file() else []
    return Case(proc, 0, "", keep=[folder / "sub.csv"], ok="test_cat_0" in ids, note=f"ids {ids[:2]}")


def page_shows_precision(d: Drill, name: str) -> Case:
    run = d.copy_run(name)
    proc = d.cli("viz", "page", f"run={run}", cwd=run.parent)
    page = run / "report" / "index.html"
    html = page.read_text() if page.is_file() else ""
    return Case(proc, 0, "", keep=[page], ok="Ran with" in html and ">precision<" in html, note="Ran with")
