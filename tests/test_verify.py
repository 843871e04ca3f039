"""cnnlab data verify: every unusable file is listed by name; a clean dataset passes."""

from __future__ import annotations

from tests.conftest import run_cli
from tests.test_data_folders import write, write_food11


def test_verify_lists_each_broken_file_and_exits_1(tmp_path):
    root = tmp_path / "food"
    broken = write_food11(root)
    (root / "train" / "0_50.jpg").write_bytes(b"")
    (root / "valid" / "1_9.png").write_bytes(b"this is text, not a PNG")
    (root / "test" / "notes.txt").write_text("hello")
    proc = run_cli("data", "verify", "dataset=food11", f"dataset.root={root}", "dataset.num_workers=0",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    out = " ".join(proc.stdout.split())  # rich wraps long cells
    for name in (broken.name, "0_50.jpg", "1_9.png", "notes.txt"):
        assert name in out
    assert "not an image file (.txt)" in out and f"16 file(s) checked in {root}, 4 unusable" in out
    for line in proc.stdout.splitlines()[:-1]:  # each bad file once, with what is wrong, no advice
        assert line.count(str(root)) == 1 and "on_bad_image" not in line


def test_verify_passes_a_clean_image_folder(tmp_path):
    for i, name in enumerate(("a", "b")):
        write(tmp_path / "d" / "train" / name / f"{i}.png", seed=i)
    proc = run_cli("data", "verify", "dataset=imagefolder", f"dataset.root={tmp_path / 'd'}",
                   "dataset.num_classes=2", "dataset.num_workers=0", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"2 file(s) checked in {tmp_path / 'd'}, 0 unusable" in proc.stdout


def test_verify_reports_a_corrupt_idx_file(tiny_idx, tmp_path):
    (tiny_idx / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken gzip")
    proc = run_cli("data", "verify", f"dataset.root={tiny_idx}", cwd=tmp_path)
    assert proc.returncode == 1 and f"in {tiny_idx}, 1 unusable" in proc.stdout
    (line,) = proc.stdout.splitlines()[:-1]
    assert line.count("t10k-images-idx3-ubyte.gz") == 1


def test_unknown_action_lists_the_actions(tmp_path):
    proc = run_cli("data", "check", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Unknown data action 'check'; choose one of: verify, stats." in proc.stderr
