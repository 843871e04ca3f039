"""Odd values and odd commands end with one line and exit code 2, before any data is read."""

from __future__ import annotations

import logging
import resource
import signal
import subprocess
import sys

import pytest

from cnnlab.build import check
from cnnlab.cli import main
from cnnlab.errors import ConfigError, did_you_mean
from tests.conftest import cli_args, cli_env


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer=sgd", "optimizer.momentum=2"], r"optimizer\.momentum must be in \[0, 1\], got 2\.0\."),
        (["optimizer=sgd", "optimizer.momentum=-0.1"], r"optimizer\.momentum must be in \[0, 1\]"),
        (["optimizer=sgd", "optimizer.dampening=1.5"], r"optimizer\.dampening must be in \[0, 1\]"),
        (["optimizer=rmsprop", "optimizer.alpha=1"], r"optimizer\.alpha must be in \[0, 1\)"),
        (["optimizer=rmsprop", "optimizer.momentum=3"], r"optimizer\.momentum must be in \[0, 1\]"),
        (["optimizer.eps=0"], r"optimizer\.eps must be greater than 0, got 0\.0\."),
        (["optimizer=adagrad", "optimizer.eps=-1e-10"], r"optimizer\.eps must be greater than 0"),
        (["optimizer.weight_decay=-1"], r"optimizer\.weight_decay must be 0 or more, got -1\.0\."),
        (["optimizer=adagrad", "optimizer.lr_decay=-0.1"], r"optimizer\.lr_decay must be 0 or more"),
        (["optimizer.betas=[0.9,1.0]"], r"optimizer\.betas must be two numbers in \[0, 1\), got \[0\.9, 1"),
        (["optimizer.betas=[0.9]"], r"optimizer\.betas must be two numbers in \[0, 1\)"),
        (["optimizer.lr=nan"], r"optimizer\.lr=nan is not a finite number"),
        (["optimizer.lr=inf"], r"optimizer\.lr=inf is not a finite number"),
        (["optimizer=sgd", "optimizer.momentum=1.0001"], r"optimizer\.momentum must be in \[0, 1\]"),
        (["seed=99999999999999999999"], r"seed=99999999999999999999 is too large; whole numbers must lie"),
        (["trainer.max_epochs=" + "9" * 30], r"trainer\.max_epochs=9{24}\.\.\. is too large"),
        (["dataset.root=${oc.env:CNNLAB_TEST_UNSET}"],
         r"dataset\.root could not be resolved \(Environment variable 'CNNLAB_TEST_UNSET' not found\)"),
        (["dataset.root=${no.such.key}"], r"dataset\.root could not be resolved \(Interpolation key"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_by_check(make_cfg, monkeypatch, overrides, message):
    monkeypatch.delenv("CNNLAB_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=message):
        check(make_cfg(*overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=sgd", "optimizer.momentum=1", "optimizer.dampening=1", "optimizer.weight_decay=0"],
        ["optimizer=sgd", "optimizer.momentum=0", "optimizer.dampening=0"],
        ["optimizer=rmsprop", "optimizer.alpha=0", "optimizer.momentum=0.9"],
        ["optimizer=adamw", "optimizer.betas=[0,0.999]", "optimizer.eps=1e-12"],
        ["optimizer=adagrad", "optimizer.lr_decay=0"],
        ["seed=9223372036854775807"],
        ["seed=-9223372036854775808"],
    ],
)
def test_values_at_the_edges_of_their_ranges_pass(make_cfg, overrides):
    """``check`` accepts them, and so does what they configure: the optimizer and the seeding."""
    import torch

    from cnnlab.build import build_optimizer, seed_everything

    cfg = make_cfg(*overrides)
    check(cfg)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg.optimizer)
    assert type(optimizer).__name__.lower() == str(cfg.optimizer._target_).rsplit(".", 1)[-1].lower()
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    seed_everything(cfg.seed)
    assert torch.initial_seed() == cfg.seed % 2**64


def test_an_environment_variable_that_is_set_resolves(make_cfg, monkeypatch, tiny_idx):
    monkeypatch.setenv("CNNLAB_TEST_ROOT", str(tiny_idx))
    cfg = make_cfg("dataset.root=${oc.env:CNNLAB_TEST_ROOT}")
    check(cfg)
    assert cfg.dataset.root == str(tiny_idx)


def test_did_you_mean_knows_spelling_and_abbreviations():
    assert did_you_mean("learning_rate", ["name", "lr", "weight_decay"]) == " Did you mean 'lr'?"
    assert did_you_mean("wd", ["lr", "weight_decay"]) == " Did you mean 'weight_decay'?"
    assert did_you_mean("lenett", ["lenet", "mlp"]) == " Did you mean 'lenet'?"
    assert did_you_mean("colour", ["lr", "weight_decay"]) == ""
    assert did_you_mean("x_y", ["lr"]) == ""


def run_main(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``cnnlab <args>`` in this process (no torch start-up): the exit code and stderr."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # main sets it; monkeypatch puts it back
    monkeypatch.setattr(sys, "argv", ["cnnlab", *args])
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in a fresh process (pytest adds its own)
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "optimizer.learning_rate=1"], "key 'optimizer.learning_rate'. Did you mean 'lr'?"),
        (["train", "+optimiser=sgd"], "Unknown config key 'optimiser'. Did you mean 'optimizer'?"),
        (["train", "+trainer.max_epoch=3"], "key 'trainer.max_epoch'. Did you mean 'max_epochs'?"),
        (["train", "experiment=fast_mnist"],
         "Could not override 'experiment': no experiment is in the defaults list to replace; add one with "
         "+experiment=<name> instead of experiment=<name>."),
        (["train", "trainer.max_epochs=" + "9" * 5000],
         "trainer.max_epochs is a number of 5,000 digits; no option takes one that large."),
        (["predict", "batch_size=" + "1" * 4301], "batch_size is a number of 4,301 digits"),
        (["train", "-m", "optimizer.lr=0.1,0.2", "--cfg", "job"], "Only one of --run, --multirun, --cfg"),
        (["train", "optimizer=sgd", "optimizer.momentum=2"], "optimizer.momentum must be in [0, 1], got 2.0"),
    ],
)  # fmt: skip
def test_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(args, monkeypatch, capsys)
    assert code == 2 and err.startswith("cnnlab: error: ") and err.count("\n") == 1 and expected in err
    assert not (tmp_path / "outputs").exists()


def test_no_command_prints_the_usage_as_an_error(monkeypatch, capsys):
    code, err = run_main([], monkeypatch, capsys)
    assert code == 2 and err.startswith("usage: cnnlab <command>")
    main(["--help"])  # asked for: on stdout, exit 0
    assert capsys.readouterr().out.startswith("usage: cnnlab <command>")


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_a_full_disk_inside_the_job_is_one_line_without_hydras(tiny_idx, tmp_path):
    """A file-size limit makes the first checkpoint write fail (EFBIG) as a full disk would (ENOSPC)."""

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    args = cli_args(("train", f"dataset.root={tiny_idx}", "trainer.tensorboard=false", "hydra.run.dir=run",
                     "trainer.max_epochs=1", "trainer.evaluate=false"))  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "cnnlab", *args], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=small_files)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cnnlab: error: cannot use {tmp_path / 'run' / 'checkpoints'}")
    assert "(File too large)" in last
    assert "Error executing job" not in proc.stderr and "Traceback" not in proc.stderr
    assert not list((tmp_path / "run").rglob("*.tmp"))
