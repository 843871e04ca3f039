"""What a newcomer meets on the first day: every path leads somewhere, every odd value is refused before
any work with one line that names the option, what it takes and the way out."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from hydra import compose
from omegaconf import OmegaConf

from cnnlab.build import check
from cnnlab.cli import hydra_error_message, main, quote_letters
from cnnlab.config import check_all_numbers, override_quoted
from cnnlab.data import lookup
from cnnlab.data.folders import file_ids, has_image_folder, read_image_folder
from cnnlab.data.registry import read_splits
from cnnlab.errors import ConfigError, DataError
from cnnlab.report.html import summary_section
from cnnlab.report.htmlparts import number
from cnnlab.run.log import PlainFormatter, make_console
from tests.conftest import run_cli, write_tiny_idx
from tests.test_data_folders import folder_args, write


# ------------------------------------------------------------------ values refused before any work
@pytest.mark.parametrize(
    "override",
    [
        "trainer.min_delta=nan",
        "optimizer.lr=inf",
        "augmentation.rotation=-inf",
        "trainer.lookahead.alpha=nan",
    ],
)
def test_non_finite_numbers_are_refused_with_the_option(make_cfg, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}=.* is not a finite number.*give {key} a finite value"):
        check(make_cfg(override))


def test_scheduler_options_are_checked_before_training(make_cfg):
    with pytest.raises(ConfigError, match=r"scheduler\.options\.gamma=nan is not a finite number"):
        check(make_cfg("scheduler=step", "scheduler.options.gamma=nan"))
    with pytest.raises(ConfigError, match=r"gamma must be a finite number greater than 0, got -1.*gamma=0.1"):
        check(make_cfg("scheduler=step", "scheduler.options.gamma=-1"))


def test_every_commands_config_is_checked_for_non_finite_numbers(make_cfg):
    make_cfg()  # Hydra initialised with cnnlab's configs
    with pytest.raises(ConfigError, match=r"lr_find\.end_lr=nan is not a finite number"):
        check_all_numbers(compose("lr_find", overrides=["lr_find.end_lr=nan"]))


def test_image_size_is_bounded(make_cfg):
    with pytest.raises(
        ConfigError, match=r"dataset\.image_size must be between 1 and 4096 pixels, got 100000"
    ):
        check(make_cfg("dataset.image_size=100000"))


def test_image_size_that_does_not_fit_in_memory_is_one_line(make_cfg, monkeypatch):
    monkeypatch.setattr("cnnlab.data.mmap.host_available", lambda: 10**6)
    with pytest.raises(
        DataError,
        match=r"image_size=64 would need 2.0 MB of memory but 1.0 MB is available; lower dataset.image_size",
    ):
        read_splits(make_cfg("dataset.image_size=64").dataset)
    monkeypatch.setattr("cnnlab.build.host_available", lambda: 10**8)
    with pytest.raises(ConfigError, match=r"model lenet at dataset.image_size=600 has [\d,]+ parameters"):
        check(make_cfg("dataset.image_size=600"))


def test_idx_without_images_is_one_line(make_cfg, tmp_path):
    root = write_tiny_idx(tmp_path / "empty", n_train=0)
    with pytest.raises(DataError, match="holds no images"):
        read_splits(make_cfg(f"dataset.root={root}").dataset)


# ------------------------------------------------------------------------- paths that lead somewhere
def flat_folder(root, n=4):
    for label in ("cat", "dog"):
        for i in range(n):
            write(root / label / f"{i}.png", seed=i)
    return root


def test_image_folder_of_class_folders_without_train(tmp_path, caplog):
    root = flat_folder(tmp_path / "pets")
    (root / "dog" / "4.webp").write_bytes((root / "dog" / "0.png").read_bytes())  # any image suffix
    assert has_image_folder(root)
    with caplog.at_level(logging.INFO):
        splits = read_image_folder(root, **folder_args(tmp_path))
    assert splits.classes == ["cat", "dog"] and splits.train_y.tolist() == [0] * 4 + [1] * 5
    assert splits.val_x is None and splits.test_x is None  # carved later with dataset.val_split
    assert "no test split" in caplog.text


def test_dataset_root_that_holds_no_dataset_says_what_it_holds(make_cfg, tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("x")
    cfg = make_cfg("dataset=imagefolder", f"dataset.root={root}")
    with pytest.raises(DataError) as info:
        read_splits(cfg.dataset)
    message = str(info.value)
    assert f"dataset.root={root} does not hold the dataset imagefolder: it holds notes.txt" in message
    assert "<class>/*.{bmp,gif,jpeg,jpg,png,webp}" in message and "train/<class>/" in message


def test_failed_download_is_one_clause_and_prints_nothing(monkeypatch, capsys, tmp_path):
    import torchvision.datasets

    def offline(**kwargs):
        print("Downloading https://...\nFailed to download (trying next):")
        raise RuntimeError("Error downloading x.gz:\n<urlopen error no network>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    cfg = OmegaConf.create({"root": None, "name": "mnist", "dirnames": [], "system_dirs": [],
                            "download": True, "torchvision_name": "MNIST", "cache_dir": str(tmp_path),
                            "apt_package": None})  # fmt: skip
    with pytest.raises(DataError, match=r"\(torchvision's download failed: <urlopen error no network>\)$"):
        lookup.find_root(cfg, lambda p: False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("path", ["rün", "數據/x", "r①", "a b", "it's", "x\\", "a\\b", "${x}", "q'\\"])
def test_quoted_values_read_back_exactly(make_cfg, path):
    make_cfg()
    cfg = compose("train", overrides=[f"hydra.run.dir={override_quoted(path)}"], return_hydra_config=True)
    assert cfg.hydra.run.dir == path


def test_plain_values_with_other_letters_are_quoted_for_hydra():
    assert quote_letters("hydra.run.dir=/tmp/rün") == "hydra.run.dir='/tmp/rün'"
    assert quote_letters("optimizer.lr=0.1") == "optimizer.lr=0.1"
    assert quote_letters("model=[a,ü]") == "model=[a,ü]"  # grammar of its own: left to Hydra


def test_train_in_a_folder_with_a_non_ascii_name(tmp_path, tiny_idx):
    res = run_cli("train", f"dataset.root={tiny_idx}", "debug=fast", "trainer.max_epochs=1",
                  f"hydra.run.dir={tmp_path / 'rün 數據 r①'}", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "rün 數據 r①" / "summary.json").is_file()


# ------------------------------------------------------------------------------------------- messages
def composition_error(monkeypatch, override: str) -> str:
    monkeypatch.setattr(sys, "argv", ["cnnlab train", override])
    with pytest.raises(Exception) as info:
        compose("train", overrides=[override])
    return hydra_error_message(info.value)


def test_a_key_another_model_has(make_cfg, monkeypatch):
    make_cfg()
    message = composition_error(monkeypatch, "model.dropout=0.1")
    assert (
        message
        == "model lenet has no option 'dropout'; mlp and simplecnn have it: model=mlp model.dropout=0.1."
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs=abc is not a whole number; give trainer.max_epochs a "
         "whole number, e.g. trainer.max_epochs=10."),
        ("trainer.deterministic=maybe", "is not true or false; give trainer.deterministic true or false, "
         "e.g. trainer.deterministic=false."),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_says_what_the_option_takes(make_cfg, monkeypatch, override, expected):
    make_cfg()
    assert expected in composition_error(monkeypatch, override)


def test_misspelt_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evalute"])
    assert info.value.code == 2
    assert "cnnlab: error: unknown command 'evalute'" in capsys.readouterr().err


def test_misspelt_viz_and_help_without_internal_groups(tmp_path):
    res = run_cli("viz", "gradcm", "run=x", cwd=tmp_path)
    assert res.returncode == 2 and "Did you mean 'gradcam'?" in res.stderr
    res = run_cli("train", "--help", cwd=tmp_path)
    assert res.returncode == 0 and "  model: lenet, mlp" in res.stdout and "schema/" not in res.stdout


def test_errors_logged_during_a_run_keep_the_prefix():
    record = logging.LogRecord("cnnlab", logging.ERROR, "", 0, "bad %s", ("thing",), None)
    assert PlainFormatter().format(record) == "cnnlab: error: bad thing"


def test_output_to_a_file_is_not_wrapped(capsys):
    path = "/a/very/long/folder/" + "x" * 200 + "/report/curves.png"
    make_console().print(f"cnnlab viz curves: wrote {path}")
    assert capsys.readouterr().out == f"cnnlab viz curves: wrote {path}\n"


# --------------------------------------------------------------------------- predictions and the page
def test_test_ids_are_file_names_and_unique():
    assert file_ids([Path("t/cat/0001.png"), Path("t/dog/0002.png")]) == ["0001", "0002"]
    assert file_ids([Path("t/cat/1.png"), Path("t/dog/1.png")]) == ["cat/1", "dog/1"]


def test_labeled_test_split_of_an_image_folder_has_its_file_names(tmp_path):
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            write(tmp_path / split / label / f"{split}_{label}_1.png")
            write(tmp_path / split / label / f"{split}_{label}_2.png", seed=1)
    splits = read_image_folder(tmp_path, **folder_args(tmp_path))
    assert splits.test_y.tolist() == [0, 0, 1, 1]
    assert splits.test_ids == ["test_cat_1", "test_cat_2", "test_dog_1", "test_dog_2"]


def test_run_page_shows_the_resolved_settings_and_even_decimals(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"best_val_acc": 0.25, "seconds": 5.50652}))
    (tmp_path / "provenance.json").write_text(
        json.dumps({"device": "cpu", "precision": "bf16", "threads": 2})
    )
    html = summary_section(tmp_path)
    assert "Ran with" in html and ">bf16<" in html and ">2<" in html
    assert ">0.2500<" in html and ">5.5065<" in html
    assert [number(v) for v in (0.9011, 1e-5, 0.0, 3)] == ["0.9011", "1.000e-05", "0.0000", "3"]


def test_no_improving_epoch_is_said_as_it_is(make_cfg, tmp_path, monkeypatch, caplog):
    """When no epoch beats the start (a metric that is NaN throughout), the last weights are tested and
    the log says so, not "the best weights (epoch 0)"."""
    from cnnlab.train import train

    monkeypatch.setattr("cnnlab.engine.tracker.is_better", lambda *args, **kwargs: False)
    with caplog.at_level(logging.INFO):
        train(make_cfg("trainer.max_epochs=1", "trainer.report=false", "trainer.threads=1"), tmp_path / "run")
    assert "with the last weights (epoch 1): no epoch improved val_acc, so there is no best.pt" in caplog.text
    assert "(epoch 0)" not in caplog.text
