"""Every broken or unreadable input of the data layer ends in one line naming the file and what to do."""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import zipfile

import pytest

from cnnlab.data.cifar import read_cifar10
from cnnlab.data.folders import read_food11, read_image_folder
from cnnlab.data.registry import read_splits
from cnnlab.data.verify import verify
from cnnlab.errors import DataError
from tests.conftest import run_cli
from tests.test_data_cifar import fake_batches, write_bin, write_py, write_tree, zip_tree
from tests.test_data_folders import write, write_food11

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def deny(monkeypatch, blocked: pathlib.Path) -> None:
    """Make listing ``blocked`` fail as a folder without read permission does (root ignores chmod)."""
    real_iterdir, real_scandir = pathlib.Path.iterdir, os.scandir

    def iterdir(self):
        if self == blocked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    def scandir(path="."):
        if pathlib.Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(pathlib.Path, "iterdir", iterdir)
    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_folder_is_a_data_error_naming_it(tmp_path, make_cfg, monkeypatch):
    root = tmp_path / "food"
    write_food11(root)
    deny(monkeypatch, root / "train")
    cfg = make_cfg("dataset=food11", f"dataset.root={root}", "dataset.num_workers=0", "dataset.cache=false")
    with pytest.raises(
        DataError, match=r"cannot read .*train \(Permission denied\); make the dataset readable"
    ):
        read_splits(cfg.dataset)


def test_verify_lists_an_unreadable_folder(tmp_path, make_cfg, monkeypatch):
    root = tmp_path / "food"
    write_food11(root)
    deny(monkeypatch, root / "valid")
    cfg = make_cfg("dataset=food11", f"dataset.root={root}", "dataset.num_workers=0")
    checked = verify(cfg.dataset)
    assert f"{root / 'valid'}: cannot read this folder (Permission denied)" in checked.problems


def without_root_powers() -> list[str] | None:
    """A command prefix under which permissions apply: none needed for a normal user; for root,
    util-linux's setpriv dropping the capabilities that bypass them (None when unavailable)."""
    if not IS_ROOT:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"] if setpriv else None


@pytest.mark.skipif(without_root_powers() is None, reason="root without setpriv reads any folder")
def test_cli_unreadable_data_folder(tmp_path):
    root = tmp_path / "food"
    write_food11(root)
    (root / "train").chmod(0)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = [
        "train",
        "dataset=food11",
        f"dataset.root={root}",
        "trainer.device=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    try:
        proc = subprocess.run(
            [*without_root_powers(), sys.executable, "-m", "cnnlab", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        (root / "train").chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        f"cannot read {root / 'train'} (Permission denied)" in proc.stderr and "disk space" not in proc.stderr
    )


def cifar_case(make):
    def run(tmp_path):
        return read_cifar10(make(tmp_path), cache_dir=tmp_path / "cache")

    return run


def bin_with(change):
    def make(tmp_path):
        folder = write_bin(tmp_path / "cifar-10-batches-bin", fake_batches())
        change(folder)
        return tmp_path

    return make


def py_meta(names):
    def make(tmp_path):
        folder = write_py(tmp_path / "cifar-10-batches-py", fake_batches())
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=3))
        return tmp_path

    return make


def zip_with(damage):
    def make(tmp_path):
        write_tree(tmp_path / "tree")
        archive = zip_tree(tmp_path / "tree", tmp_path / "c.zip")
        archive.write_bytes(damage(archive.read_bytes()))
        return archive

    return make


def zip_entries(*names):
    def make(tmp_path):
        with zipfile.ZipFile(tmp_path / "e.zip", "w") as zf:
            for name in names:
                zf.writestr(name, b"x")
        return tmp_path / "e.zip"

    return make


def folder_case(layout, reader=read_image_folder, **kwargs):
    def run(tmp_path):
        for rel, content in layout.items():
            path = tmp_path / "d" / rel
            if content is None:
                path.mkdir(parents=True, exist_ok=True)
            elif content == "png":
                write(path)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
        args = dict(size=8, num_workers=0, on_bad_image="error", cache_dir=None)
        return reader(tmp_path / "d", **args, **kwargs)

    return run


def crc_damage(blob: bytes) -> bytes:
    damaged = bytearray(blob)
    damaged[200:260] = bytes(60)  # inside the first member's compressed data
    return bytes(damaged)


def meta_txt(content: bytes):
    return cifar_case(bin_with(lambda folder: (folder / "batches.meta.txt").write_bytes(content)))


PNG = "png"
CASES = {
    "cifar-bin-meta-not-text": (meta_txt(b"\xff\xfe\x80"), r"batches\.meta\.txt is not a text file"),
    "cifar-bin-meta-5-names": (meta_txt(b"a\nb\nc\nd\ne\n"), r"batches\.meta\.txt names 5 classes"),
    "cifar-bin-empty-batch": (cifar_case(bin_with(lambda f: (f / "data_batch_2.bin").write_bytes(b""))),
                              r"data_batch_2\.bin is 0 bytes"),
    "cifar-py-meta-3-names": (cifar_case(py_meta([b"a", b"b", b"c"])), r"batches\.meta names 3 classes"),
    "zip-truncated": (cifar_case(zip_with(lambda b: b[: len(b) // 2])), r"c\.zip is not a readable zip file"),
    "zip-garbage": (cifar_case(zip_with(lambda b: b"garbage" * 50)), r"c\.zip is not a readable zip file"),
    "zip-bad-member": (cifar_case(zip_with(crc_damage)), r"c\.zip is not a readable zip file"),
    "zip-parent-path": (cifar_case(zip_entries("train/cat/a.png", "../x")), r"unsafe path '\.\./x'"),
    "zip-absolute-path": (cifar_case(zip_entries("/etc/x", "train/cat/a.png")), r"unsafe path '/etc/x'"),
    "zip-windows-drive": (cifar_case(zip_entries("C:/x", "train/cat/a.png")), r"unsafe path 'C:/x'"),
    "folder-empty-class": (folder_case({"train/cat/a.png": PNG, "train/dog": None}, channels=3),
                           r"train/dog is a class folder without image files"),
    "folder-no-images": (folder_case({"train/cat/notes.txt": b"x"}, channels=3),
                         r"train/cat is a class folder without image files"),
    "folder-garbage-image": (folder_case({"train/cat/a.png": PNG, "train/cat/b.jpg": b"\xff?"}, channels=3),
                             r"b\.jpg: not a readable image"),
    "folder-empty-test": (folder_case({"train/cat/a.png": PNG, "test": None}, channels=3),
                          r"test holds no image files"),
    "food11-empty-valid": (folder_case({"train/0_1.jpg": PNG, "valid": None}, read_food11, classes=["a"]),
                           r"valid holds no image files"),
    "food11-bad-name": (folder_case({"train/cake.jpg": PNG}, read_food11, classes=["a"]),
                        r"cake\.jpg is not named <label>_<n>\.jpg"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_broken_input_fails_with_one_line(tmp_path, case):
    run, message = case
    with pytest.raises(DataError, match=message) as info:
        run(tmp_path)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_cli_truncated_zip_is_one_line(tmp_path):
    archive = zip_with(lambda b: b[: len(b) // 2])(tmp_path)
    places = (
        f"dataset.root={archive}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path}/run",
    )
    proc = run_cli("train", "dataset=cifar10", "trainer.device=cpu", *places, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{archive} is not a readable zip file" in proc.stderr
