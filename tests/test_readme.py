"""Every command in the code blocks of README.md and of every docs/*.md page runs, so the examples
cannot rot.

Each ``cnnlab ...``, ``python -m cnnlab ...`` and ``torchrun ... -m cnnlab ...`` line is taken from the
fenced ``bash`` blocks (indented blocks, the measurement commands above the tables, are not run),
shrunk (tiny data the test writes, one epoch of two batches, sweeps of at most two values and one Optuna
trial) and run; placeholders (``<run dir>``, ``outputs/2026-11-22/12-00-00``, ``run=...``) become a run
this test trained. Commands that need what a test machine lacks (COMPOSE_ONLY names each marker and
why) compose their config with ``--cfg job`` instead, so a misspelt option still fails; no command is
skipped silently. All of them run in one Python process, one after another, to pay torch's start-up
once.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from tests.conftest import cli_env, write_tiny_idx
from tests.test_data_cifar import zip_tree
from tests.test_data_folders import write, write_food11
from tests.test_predict import write_digit_csv

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHRINK = {
    "trainer.max_epochs": "1",
    "trainer.limit_train_batches": "2",
    "trainer.limit_eval_batches": "1",
    "trainer.tensorboard": "false",
    "trainer.progress": "plain",
    "trainer.report": "false",
    "trainer.threads": "1",
}
# A command holding one of these only composes its config (``--cfg job``): what it needs is not on a test
# machine, or it is run for real by another test.
COMPOSE_ONLY = {
    "torchrun": "several GPUs or nodes; 2 CPU processes under torchrun run in tests/test_distributed.py",
    "hydra/launcher=slurm": "a SLURM cluster",
    "hydra/launcher=submitit_local": "run for real (a 2-job sweep) in tests/test_distributed.py",
    "tracking_uri=http": "an MLflow tracking server",
}
TRACKERS = ("mlflow", "wandb")  # optional extras: without one, its commands must say how to install it
EPOCH_OPTIONS = ("swa_start", "pseudo_label", "freeze_epochs")  # these need the command's own epochs
SHRUNK_TOOLS = {"train": {}, "tune": {"tune.n_trials": "2"}, "lr_find": {"lr_find.steps": "10"}}
PLACEHOLDERS = [  # (pattern, replacement), in this order
    (r"\[<runA>,<runB>\]", "[run,run2]"),
    (r"resume=<run dir>", "resume=resumable"),  # a one-epoch run; each resume asks for one more epoch
    (r"<run dir>|<run>|<dir>|<a colleague's run>|outputs/2026-11-2\d/\d\d-\d\d-\d\d", "run"),
    (r"\.\.\./checkpoints/", "run/checkpoints/"),
    (r"run=\.\.\.", "run=run"),
    (r"multirun/2026-11-22/12-00-00-123456", "multirun"),  # every sweep so far: a folder of runs too
    (r"/data/food-11", "food"),
    (r"/data/unlabeled/", "path/to/images"),
    (r",\.\.\.\]", "]"),  # run=[a,b,...]
    (r"multirun/<date>/<time>", "@LATEST@"),  # the newest sweep or study, found when the command runs
]

# Runs each command of argv[1] (a JSON list of argument lists) through cnnlab.cli.main as a fresh
# process would (Hydra's global state cleared, no logging handlers left), printing "@@@ <i> <exit code>"
# after each, on stdout and stderr.
DRIVER = """
import json, logging, sys
from hydra.core.global_hydra import GlobalHydra
from cnnlab.cli import main
from pathlib import Path
def latest():  # sweep and study folders are named multirun/<date>/<time>: the newest sorts last
    return str(max((p for p in Path("multirun").glob("*/*") if p.is_dir()), default="multirun"))
resumes = 0
for i, argv in enumerate(json.loads(sys.argv[1])):
    argv = [a.replace("@LATEST@", latest()) for a in argv]
    if "trainer.max_epochs=@MORE_EPOCHS@" in argv:  # the one-epoch run "resumable", one epoch more each time
        resumes += 1
        argv = [a.replace("@MORE_EPOCHS@", str(1 + resumes)) for a in argv]
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        import traceback
        traceback.print_exc()
        code = 99
    GlobalHydra.instance().clear()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for stream in (sys.stdout, sys.stderr):
        print(f"@@@ {i} {code}", file=stream, flush=True)
"""


def doc_commands() -> list[tuple[str, str, str]]:
    """(``file:line``, command, comment) of every cnnlab command in the bash blocks of README.md and
    docs/*.md, continuation lines joined. A comment ``# cnnlab: error: ...`` shows the error the command
    is meant to give."""
    return [
        (f"{page.relative_to(ROOT)}:{line}", *rest) for page in DOCS for line, *rest in page_commands(page)
    ]


def page_commands(page: Path) -> list[tuple[int, str, str]]:
    """(line number, command, comment) of every cnnlab command in one page's bash blocks."""
    commands, block, joined, start = [], False, "", 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if not block or line.lstrip().startswith("#"):
            continue
        text, _, comment = line.partition(" #")
        start = start if joined else number
        joined = f"{joined} {text.strip().rstrip(chr(92)).strip()}".strip()
        if text.strip().endswith("\\"):
            continue
        if re.match(r"(cnnlab|python -m cnnlab|torchrun)\b", joined):
            commands.append((start, joined, comment.strip()))
        joined = ""
    return commands


def to_argv(command: str) -> tuple[list[str], bool]:
    """The arguments for ``cnnlab.cli.main`` and whether the command only composes its config."""
    for pattern, replacement in PLACEHOLDERS:
        command = re.sub(pattern, replacement, command)
    words = [w for w in shlex.split(command) if w != "..."]
    compose_only = any(marker in word for marker in COMPOSE_ONLY for word in words)
    if words[0] == "torchrun":
        words = words[words.index("-m") + 1 :]
    words = words[words.index("cnnlab") + 1 :] if words[0] != "cnnlab" else words[1:]
    if words[0] not in SHRUNK_TOOLS or {"--cfg", "--help"} & set(words):
        return words, False
    if "resume=resumable" in words:  # a resumed run keeps its own (shrunk) settings
        return [*words, "trainer.max_epochs=@MORE_EPOCHS@"], False
    if compose_only:  # one job of the sweep, composed and printed
        words = [first_of_sweep(w) for w in words if w not in ("-m", "--multirun")]
        return [*words, "--cfg", "job"], True
    return shrink(words), False


def first_of_sweep(word: str) -> str:
    key, sep, value = word.partition("=")
    return f"{key}={value.split(',')[0]}" if sep and "," in value and "[" not in value else word


def shrink(words: list[str]) -> list[str]:
    """Tiny versions of a train, tune or lr_find command's settings (replacing the command's own): one
    epoch (unless an option needs the command's epochs), two batches, two trials, ten range-test steps."""
    keep_epochs = any(option in word.partition("=")[0] for option in EPOCH_OPTIONS for word in words)
    tiny = {**SHRINK, **SHRUNK_TOOLS[words[0]]}
    if keep_epochs:
        del tiny["trainer.max_epochs"]
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if sep and "," in value and not {"[", "("} & set(value):  # a sweep: two values are enough
            word = f"{key}={','.join(value.split(',')[:2])}"
        if sep and key.lstrip("+") in tiny:
            continue
        out.append(word)
    return [*out, *(f"{k}={v}" for k, v in tiny.items())]


def write_data(root: Path) -> None:
    """What the documented commands read: $CNNLAB_DATA with tiny MNIST, Fashion-MNIST and a CIFAR-10
    zip; a Food-11 folder; the input images, test.csv and cat.jpg of the predict and viz examples; an
    image folder ``photos`` (train/<class>/) and a flat one, ``pets`` (<class>/)."""
    write_tiny_idx(root / "datasets" / "fashion_mnist", 200, 50)
    write_tiny_idx(root / "datasets" / "mnist", 200, 50)
    for split, n in (("train", 10), ("test", 2)):  # CIFAR-10's ten classes, a few 32x32 images each
        for k in range(10):
            for i in range(n):
                write(root / "cifar-tree" / split / f"class{k}" / f"{i}.png", seed=k * 10 + i, shape=(32, 32))
    zip_tree(root / "cifar-tree", root / "datasets" / "cifar10-jpg.zip")
    for food in (root / "food", root / "datasets" / "food11"):  # dataset.root=/data/food-11, and $CNNLAB_DATA
        write_food11(food)
        (food / "train" / "2_99.jpg").unlink()  # its deliberately truncated file
    for i in range(3):
        write(root / "path" / "to" / "images" / f"{i}.png", seed=i, shape=(28, 28))
    write_digit_csv(root / "path" / "to" / "test.csv")
    write(root / "cat.jpg", seed=9, shape=(28, 28))
    for arch in ("resnet18", "mobilenet_v3_small"):  # torchvision's files, as the model.weights examples name
        torch.save(getattr(torchvision.models, arch)().state_dict(), root / f"{arch}.pth")
    for label in ("cat", "dog"):  # image folders, enough for a validation split
        for i in range(10):
            write(root / "pets" / label / f"{i}.png", seed=i, shape=(16, 16))
        for i in range(10):
            write(root / "photos" / "train" / label / f"{i}.png", seed=i, shape=(16, 16))


def missing_tracker(command: str) -> str | None:
    """The tracker a command logs to whose optional extra is not installed here (CI installs both); a
    command that only composes its config never imports it."""
    if any(marker in command for marker in COMPOSE_ONLY):
        return None
    logger = re.search(r"logger=\[([^\]]*)\]", command)
    names = logger.group(1).split(",") if logger else []
    return next((n for n in TRACKERS if n in names and importlib.util.find_spec(n) is None), None)


def holds(code: int, err: str, comment: str, command: str = "") -> bool:
    """A command meant to fail (its comment is the error line) exits 2 with that line; one that logs to a
    tracker whose extra is missing exits 2 saying which package to install; others exit 0."""
    if comment.startswith("cnnlab: error:"):
        return code == 2 and comment in err
    if tracker := missing_tracker(command):
        return code == 2 and f"needs the {tracker} package, which is not installed" in err
    return code == 0


@pytest.mark.slow  # about a minute on 2 idle cores, measured with 104 of the commands: CI runs it
def test_every_documented_command_runs(tmp_path):
    commands = doc_commands()
    assert len(commands) > 100, "the code blocks of README.md and docs/ were not found"
    write_data(tmp_path)
    # The runs the placeholders name: one with augmentation (viz augment, embeddings augment=true), a report,
    # and ten epochs with SWA and epoch checkpoints (evaluate ckpt=...swa.safetensors, export average=).
    run = shrink(
        [
            "train",
            "hydra.run.dir=run",
            "augmentation=basic",
            "trainer.max_epochs=10",
            "trainer.swa_start=8",
            "trainer.epoch_checkpoints=true",
            "trainer.patience=null",
        ]
    )
    setup = [
        [w if w != "trainer.report=false" else "trainer.report=true" for w in run],
        shrink(["train", "hydra.run.dir=run2"]),
        shrink(["train", "hydra.run.dir=resumable"]),
    ]
    argvs = [to_argv(command)[0] for _, command, _ in commands]
    env = cli_env({"CNNLAB_DATA": str(tmp_path / "datasets"), "CNNLAB_CACHE": str(tmp_path / "cache")})
    # The limit leaves room for a machine shared with other jobs (15 min were too few at a load of 12).
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([*setup, *argvs])], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    outputs = re.split(r"^@@@ \d+ -?\d+\n", proc.stderr, flags=re.M)
    codes = [int(c) for c in re.findall(r"^@@@ \d+ (-?\d+)$", proc.stdout, flags=re.M)]
    assert len(codes) == len(setup) + len(commands), proc.stderr[-3000:]
    assert codes[: len(setup)] == [0] * len(setup), outputs[0][-3000:]
    failed = [
        f"{where}: {command}\n  ran: {' '.join(argv)}\n  exit {code}: {err.strip()[-1500:]}"
        for (where, command, comment), argv, code, err in zip(
            commands, argvs, codes[len(setup) :], outputs[len(setup) :], strict=False
        )
        if not holds(code, err, comment, command)
    ]
    assert not failed, "\n".join(failed)


def test_commands_are_extracted_and_shrunk():
    commands = {command: comment for _, command, comment in doc_commands()}
    assert "cnnlab train" in commands and "cnnlab runs outputs" in commands
    pages = {where.split(":")[0] for where, _, _ in doc_commands()}
    assert {"README.md", "docs/train.md", "docs/predict.md", "docs/distributed.md"} <= pages
    assert commands["cnnlab train optimizer=sgd optimizer.momentum=2"].startswith("cnnlab: error: ")
    slurm = next(c for c in commands if "hydra/launcher=slurm" in c)
    assert "\\" not in slurm and slurm.endswith("optimizer.lr=0.05,0.1,0.2")  # continuation lines joined
    argv, compose_only = to_argv(slurm)
    assert compose_only and argv[-2:] == ["--cfg", "job"] and "optimizer.lr=0.05" in argv and "-m" not in argv
    argv, compose_only = to_argv("cnnlab train trainer.max_epochs=3 optimizer.lr=0.01")
    assert not compose_only and argv.count("trainer.max_epochs=1") == 1 and "trainer.max_epochs=3" not in argv
    assert to_argv("cnnlab predict run=[<runA>,<runB>] out=e.csv")[0] == [
        "predict",
        "run=[run,run2]",
        "out=e.csv",
    ]
    assert to_argv("python -m cnnlab train ...")[0][0] == "train"
    assert to_argv("cnnlab train resume=<run dir> trust_config=true")[0] == [
        "train", "resume=resumable", "trust_config=true", "trainer.max_epochs=@MORE_EPOCHS@",
    ]  # fmt: skip
    assert to_argv("cnnlab predict run=<a colleague's run> trust_config=true")[0] == [
        "predict",
        "run=run",
        "trust_config=true",
    ]


def test_a_tracker_command_without_its_extra_must_say_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # neither extra installed
    assert missing_tracker("cnnlab train 'logger=[csv,wandb]'") == "wandb"
    assert (
        missing_tracker("cnnlab train 'logger=[csv,mlflow]' logger.mlflow.tracking_uri=http://x:5000") is None
    )
    assert missing_tracker("cnnlab train trainer.max_epochs=1") is None
    error = "cnnlab: error: logger wandb needs the wandb package, which is not installed: pip install ..."
    assert holds(2, error, "", "cnnlab train 'logger=[csv,wandb]'")
    assert not holds(0, "", "", "cnnlab train 'logger=[csv,wandb]'")
    assert to_argv("torchrun --nproc_per_node=4 -m cnnlab train +experiment=x")[0] == [
        "train", "+experiment=x", "--cfg", "job",
    ]  # fmt: skip


def test_readme_is_a_first_screen_and_no_page_speaks_of_how_it_was_built():
    readme = DOCS[0].read_text()
    assert len(readme.splitlines()) <= 250
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in first_block.splitlines()] == ["make train", "make test"]
    history = re.compile(
        # issue numbers, the development machine's paths, and commit hashes (not the hex in a file or
        # package name such as torchvision's resnet18-f37072fd.pth)
        r"\bissues? \d+|\.\./shared|/work/|gpu-kit"
        r"|(?<![-.])\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b"
    )
    found = [f"{page.name}: {m.group()}" for page in DOCS for m in history.finditer(page.read_text())]
    assert not found, found
