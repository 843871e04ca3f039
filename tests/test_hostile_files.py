"""Hostile files in and around a run folder: every writer stays inside the run (no link followed at any
depth), readers never block on a FIFO, text from data never becomes markup (matplotlib's mathtext, HTML,
spreadsheet formulas), and tune's workers die with their command. Each case has a victim file that must
not change, or a marker that must not appear."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.errors import DataError
from cnnlab.io import atomic_write, confined, make_dirs, open_append, open_regular, write_text
from cnnlab.run import lock
from tests.conftest import cli_args, cli_env, run_cli, write_tiny_idx

FAST = ["trainer.device=cpu", "trainer.tensorboard=false", "trainer.progress=plain", "trainer.batch_size=32",
        "trainer.precision=32", "trainer.threads=1"]  # fmt: skip
MATH = "$\\foo$"  # mathtext that matplotlib cannot parse: a traceback if it is ever parsed


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def victim(tmp_path: Path) -> Path:
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "metrics.json").write_text("mine")
    return folder


def untouched(folder: Path) -> bool:
    return [p.name for p in folder.iterdir()] == ["metrics.json"] and (
        folder / "metrics.json"
    ).read_text() == "mine"


def within(seconds: float, call):
    """``call()``'s result, or a failure (not a hung suite) when it blocks longer than ``seconds``."""
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the test below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for over {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def png(path: Path, seed: int = 0, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


# ------------------------------------------------------------------------------ writers stay inside the run
@pytest.mark.parametrize(
    "linked", ["report", "report/evaluate_x", "checkpoints", "tb", "report/evaluate_x/deep"]
)
def test_no_write_goes_through_a_link_at_any_depth(tmp_path, linked):
    run, target = tmp_path / "run", victim(tmp_path)
    (run / linked).parent.mkdir(parents=True, exist_ok=True)
    (run / linked).symlink_to(target)
    with confined(run):
        for write in (
            lambda: write_text(run / linked / "metrics.json", "theirs"),
            lambda: write_text(run / linked / "sub" / "new.json", "theirs"),
            lambda: make_dirs(run / linked / "events"),
            lambda: open_append(run / linked / "metrics.json"),
        ):
            with pytest.raises(DataError, match="symbolic link") as err:
                write()
            assert str(run / linked) in str(err.value) and "\n" not in str(err.value)
    assert untouched(target)


def test_the_runs_own_path_may_pass_through_links_and_a_link_at_the_file_is_replaced(tmp_path):
    real = tmp_path / "disk" / "run"
    real.mkdir(parents=True)
    (tmp_path / "outputs").symlink_to(tmp_path / "disk")  # the user's choice: above the run folder
    target = victim(tmp_path)
    run = tmp_path / "outputs" / "run"
    (real / "summary.json").symlink_to(target / "metrics.json")
    with confined(run):
        write_text(run / "report" / "metrics.json", "ours")
        write_text(run / "summary.json", "ours")
    assert (real / "report" / "metrics.json").read_text() == "ours"
    assert not (real / "summary.json").is_symlink() and (real / "summary.json").read_text() == "ours"
    assert untouched(target)


def test_train_log_and_metrics_csv_are_not_appended_through_a_link(tmp_path):
    from cnnlab.run.layout import RunDir
    from cnnlab.run.log import setup_logging

    run, target = RunDir(tmp_path / "run"), victim(tmp_path)
    run.path.mkdir()
    run.log.symlink_to(target / "metrics.json")
    run.metrics.symlink_to(target / "metrics.json")
    with pytest.raises(DataError, match="symbolic link"):
        setup_logging(run.path, rich=False)
    with pytest.raises(DataError, match="symbolic link"):
        run.append_metrics(["epoch"], {"epoch": 1})
    assert untouched(target)


def test_the_lock_confines_the_folder_it_holds(tmp_path):
    run, target = tmp_path / "run", victim(tmp_path)
    run.mkdir()
    (run / "report").symlink_to(target)
    with lock.hold(run), pytest.raises(DataError, match="symbolic link"):
        atomic_write(run / "report" / "metrics.json", lambda f: f.write(b"theirs"))
    assert untouched(target)


@pytest.mark.slow  # trains a run and evaluates it through the CLI: over 4 s on 2 cores
def test_evaluate_does_not_write_into_a_linked_report_subfolder(tmp_path):
    data = write_tiny_idx(tmp_path / "data", n_train=200, n_test=50)
    proc = run_cli("train", f"dataset.root={data}", *FAST, "trainer.max_epochs=1", "hydra.run.dir=run",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run, target = tmp_path / "run", victim(tmp_path)
    precision = json.loads((run / "report" / "metrics.json").read_text())["precision"]
    (run / "report" / f"evaluate_best_precision-{precision}_tta-flip").symlink_to(target)
    proc = run_cli("evaluate", f"run={run}", "tta=flip", "tensorboard=false", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr  # after a line saying where
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("cnnlab: error: ") and "symbolic link" in message and "evaluate_best" in message
    assert untouched(target)


# ------------------------------------------------------------------- runs html never links through a link
def test_the_runs_page_does_not_link_a_page_behind_a_linked_report(tmp_path):
    from cnnlab.report.html import SweepTable, write_sweep_page

    root = tmp_path / "sweep"
    attacker = tmp_path / "attacker"
    (attacker).mkdir()
    (attacker / "index.html").write_text("<script>marker()</script>")
    for name in ("0", "1"):
        (root / name).mkdir(parents=True)
        (root / name / "summary.json").write_text("{}")
    (root / "0" / "report").symlink_to(attacker)
    (root / "1" / "report").mkdir()
    (root / "1" / "report" / "index.html").write_text("<p>ok</p>")
    rows = [["1", name, "x", "ok"] for name in ("0", "1")]
    table = SweepTable(["#", "run", "v", "status"], rows, [root / "0", root / "1"], ["ok", "ok"])
    page = write_sweep_page(root, table).read_text()
    assert 'href="1/report/index.html"' in page and "0/report/index.html" not in page
    assert "not linked" in page


# -------------------------------------------------------------------------------- readers never block
def test_open_regular_refuses_a_fifo_at_once(tmp_path):
    path = fifo(tmp_path / "b.png")
    with pytest.raises(DataError, match="FIFO"):
        within(10, lambda: open_regular(path))
    with pytest.raises(DataError, match="folder"):
        open_regular(tmp_path)
    with open_regular(Path(__file__)) as f:  # a regular file reads as usual, blocking mode restored
        assert f.read(3) == b'"""' and os.get_blocking(f.fileno())


def test_an_image_named_fifo_is_a_bad_image_not_a_hang(tmp_path):
    from cnnlab.data.images import open_image

    path = fifo(tmp_path / "b.png")
    with pytest.raises(DataError, match="FIFO, not a regular file"):
        within(10, lambda: open_image(path, size=8))


def test_run_folder_readers_do_not_block_on_a_fifo(tmp_path):
    from cnnlab.errors import CnnlabError
    from cnnlab.run.checkpoints import read_safetensors, read_state
    from cnnlab.run.layout import RunDir

    run = RunDir(tmp_path / "run")
    fifo(run.config_file)
    fifo(run.checkpoint("x.pt"))
    fifo(run.checkpoint("x.safetensors"))
    assert within(10, run.read_config) is None  # not a file: as if absent
    with pytest.raises(DataError, match="FIFO"):
        within(10, lambda: run._text(run.config_file))
    for read in (lambda: read_state(run.checkpoint("x.pt")),
                 lambda: read_safetensors(run.checkpoint("x.safetensors"))):  # fmt: skip
        with pytest.raises(CnnlabError, match=r"not a regular file|No checkpoint"):
            within(10, read)


def test_predict_refuses_a_fifo_in_its_input_folder(tmp_path):
    from cnnlab.commands.predict.inputs import folder_files

    png(tmp_path / "in" / "a.png")
    fifo(tmp_path / "in" / "b.png")
    with pytest.raises(DataError, match="not a regular file"):
        within(10, lambda: folder_files(tmp_path / "in"))


def test_data_verify_reports_a_fifo_instead_of_hanging(tmp_path):
    from cnnlab.data.verify import scan_images

    png(tmp_path / "d" / "train" / "cat" / "a.png")
    fifo(tmp_path / "d" / "train" / "cat" / "b.png")
    checked, problems = within(30, lambda: scan_images(tmp_path / "d", num_workers=0))
    assert checked == 2 and len(problems) == 1 and "b.png" in problems[0] and "FIFO" in problems[0]


@pytest.mark.slow  # three CLI commands: over 4 s on 2 cores
def test_the_commands_named_in_the_report_do_not_hang_on_a_fifo(tmp_path):
    data = write_tiny_idx(tmp_path / "data", n_train=200, n_test=50)
    proc = run_cli("train", f"dataset.root={data}", *FAST, "trainer.max_epochs=1", "hydra.run.dir=run",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    images = tmp_path / "in"
    png(images / "a.png")
    fifo(images / "b.png")
    folder = tmp_path / "d"
    png(folder / "train" / "cat" / "a.png")
    fifo(folder / "train" / "cat" / "b.png")
    commands = [
        ["predict", "run=run", f"input={images}"],
        ["data", "verify", "dataset=imagefolder", f"dataset.root={folder}", "dataset.num_workers=0"],
        ["train", f"dataset.root={data}", *FAST, "trainer.max_epochs=2", "trainer.pseudo_label.start_epoch=1",
         f"trainer.pseudo_label.data={images}", "hydra.run.dir=run2"],
    ]  # fmt: skip
    for args in commands:
        proc = subprocess.run([sys.executable, "-m", "cnnlab", *cli_args(tuple(args))], cwd=tmp_path,
                              env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode != 0 and "b.png" in proc.stderr + proc.stdout, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- text never becomes markup
def test_figures_show_dollar_signs_as_text(tmp_path):
    from cnnlab.report.evaluate import confusion_figure
    from cnnlab.report.figures import save_figure

    fig = confusion_figure(np.eye(2, dtype=int), [MATH, "=1+2"], f"Confusion matrix: {MATH}")
    save_figure(fig, tmp_path / "cm.png")  # mathtext would raise ValueError while drawing
    assert (tmp_path / "cm.png").stat().st_size > 0


def test_pages_escape_class_and_run_names(tmp_path):
    from cnnlab.report.html import write_run_page

    run = tmp_path / "<img src=x onerror=marker()>"
    (run / "report").mkdir(parents=True)
    metrics = {"n": 1, "accuracy": 1.0, "loss": 0.0, "ece": 0.0, "macro": {"f1": 1.0},
               "per_class": [{"class": "<script>marker()</script>", "precision": 1, "recall": 1, "f1": 1,
                              "support": 1}], "most_confused": []}  # fmt: skip
    (run / "report" / "metrics.json").write_text(json.dumps(metrics))
    page = write_run_page(run).read_text()
    assert "<script>marker" not in page and "<img src=x" not in page and "&lt;script&gt;marker" in page


@pytest.mark.slow  # trains on class folders and runs four commands: over 4 s on 2 cores
def test_dollar_names_pass_report_viz_evaluate_and_runs_html(tmp_path):
    folder = tmp_path / "d"
    for k, name in enumerate((MATH, "=1+2")):
        for i in range(6):
            png(folder / "train" / name / f"{i}.png", seed=10 * k + i)
            png(folder / "test" / name / f"{i}.png", seed=100 + 10 * k + i)
    run = tmp_path / "runs" / MATH
    proc = run_cli("train", "dataset=imagefolder", f"dataset.root={folder}", "dataset.image_size=8",
                   "dataset.num_workers=0", *FAST, "model=mlp", "trainer.max_epochs=1",
                   f"hydra.run.dir={run}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert not (run / "status.json").exists() and (run / "report" / "confusion_matrix.png").is_file()
    for args in (["viz", "predictions", f"run={run}"], ["evaluate", f"run={run}", "tta=flip"],
                 ["runs", str(tmp_path / "runs"), "html=true"], ["predict", f"run={run}"]):  # fmt: skip
        proc = run_cli(*args, cwd=tmp_path)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
    labels = {row[1] for row in csv.reader(io.StringIO((run / "submission.csv").read_text()))}
    assert "'=1+2" in labels and "=1+2" not in labels


def test_a_report_failure_leaves_summary_and_status_agreeing(tmp_path):
    from cnnlab.commands.train import record_failure
    from cnnlab.run.layout import RunDir

    folder = RunDir(tmp_path)
    folder.write_summary({"status": "finished", "test_acc": 0.5})
    record_failure(tmp_path, ValueError("drawing failed"), seconds=1.0)
    summary, status = folder.read_summary(), folder.read_status()
    assert summary["status"] == status["status"] == "failed" and summary["test_acc"] == 0.5
    assert summary["stage"] == "report" and "drawing failed" in summary["error"]


# ------------------------------------------------------------------------- spreadsheet formulas in a CSV
@pytest.mark.parametrize(
    ("cell", "written"),
    [("=1+2", "'=1+2"), ("+A1", "'+A1"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
     ("cat", "cat"), ("-1", "-1"), ("+2.5e3", "+2.5e3"), ("0.25", "0.25")],
)  # fmt: skip
def test_submission_cells_that_start_a_formula_get_a_quote(tmp_path, cell, written):
    from cnnlab.commands.predict.submission import write_csv

    write_csv(tmp_path / "s.csv", ["id", cell], [[cell, cell]])
    with open(tmp_path / "s.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["id", written], [written, written]]


def test_a_submission_cell_with_a_carriage_return_is_refused(tmp_path):
    from cnnlab.commands.predict.submission import write_csv

    with pytest.raises(DataError, match="carriage return"):
        write_csv(tmp_path / "s.csv", ["id", "label"], [["1", "\r=1+2"]])
    assert not (tmp_path / "s.csv").exists()


# ----------------------------------------------------------------------------- workers die with the study
def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow  # a real two-worker study: over 4 s on 2 cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_tune_stops_its_workers_and_the_folder_stays_locked_while_they_live(tmp_path):
    data = write_tiny_idx(tmp_path / "data", n_train=400, n_test=50)
    study = tmp_path / "study"
    args = ["tune", f"dataset.root={data}", *[a for a in FAST if "threads" not in a], "trainer.max_epochs=30",
            f"tune.dir={study}", "optimizer.lr=choice(0.004, 0.005)", "tune.n_trials=4", "tune.n_jobs=2",
            "tune.pruner=none"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *cli_args(tuple(args))], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not ((study / "0" / "metrics.csv").exists() or (study / "1" / "metrics.csv").exists()):
            assert time.time() < deadline and proc.poll() is None, "the study did not start training"
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while True:  # the lock first: a worker alive after the lock was seen free held no lock then
            locked = lock.is_locked(study)
            alive = any(_alive(w) for w in workers)
            assert locked or not alive, "a worker still writes the study, but its folder is not locked"
            if not alive:
                break
            assert time.time() < deadline, "the workers outlived their study's command"
            time.sleep(0.05)
        assert not lock.is_locked(study)
    finally:
        if proc.poll() is None:
            proc.kill()
        for worker in _children(proc.pid):
            os.kill(worker, signal.SIGKILL)
