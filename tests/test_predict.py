"""cnnlab predict: submission formats, TTA, ensembles, input readers, bad input, atomic writes."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

import cnnlab.commands.predict as command
from cnnlab.commands.predict import predict
from cnnlab.commands.predict.submission import write_csv
from cnnlab.config import register_configs
from cnnlab.run.checkpoints import read_state, write_state
from tests.conftest import make_images, run_cli, write_tiny_idx

COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]  # one class per colour, learnable in an epoch


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def save_image(path, colour, seed=0, shape=(8, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(-20, 20, (*shape, 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """Like conftest's ``trained_run`` (2-epoch LeNet on tiny Fashion-MNIST-format data), trained once
    for the module; tests must not write into it (they pass out= or take a copy with :func:`own_run`)."""
    from cnnlab.train import train

    base = tmp_path_factory.mktemp("digits")
    data = write_tiny_idx(base / "data")
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("cnnlab.conf", version_base="1.3"):
        overrides = [f"dataset.root={data}", "trainer.device=cpu", "trainer.max_epochs=2",
                     "trainer.tensorboard=false", "trainer.batch_size=32"]  # fmt: skip
        cfg = compose("train", overrides=overrides)
    train(cfg, base / "run")
    return base / "run"


def own_run(shared_run, tmp_path):
    return shutil.copytree(shared_run, tmp_path / "run")


@pytest.fixture
def food_run(make_cfg, tmp_path):
    """A 1-epoch MLP run on a tiny Food-11 tree: 3 colour classes, 8x8 JPEGs, test/0001.jpg ... 0012.jpg."""
    from cnnlab.train import train

    root = tmp_path / "food"
    for split, n in (("train", 12), ("valid", 3)):
        for i in range(n * 3):
            save_image(root / split / f"{i % 3}_{i}.jpg", COLOURS[i % 3], seed=i)
    for i in range(12):
        save_image(root / "test" / f"{i + 1:04d}.jpg", COLOURS[i % 3], seed=100 + i)
    run_dir = tmp_path / "food_run"
    cfg = make_cfg("dataset=food11", f"dataset.root={root}", "dataset.image_size=8", "dataset.num_classes=3",
                   "dataset.classes=[red,green,blue]", "dataset.cache=false", "dataset.num_workers=0",
                   "model=mlp", "trainer.max_epochs=1")  # fmt: skip
    train(cfg, run_dir)
    return run_dir


def write_digit_csv(path, n=5, *, columns=784, labels=None):
    images, _ = make_images(n, seed=3)
    header = ([] if labels is None else ["label"]) + [f"pixel{i}" for i in range(columns)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, image in enumerate(images):
            row = image.reshape(-1)[:columns].tolist()
            writer.writerow(row if labels is None else [labels[i], *row])
    return path


def test_digit_format_ids_and_accuracy(trained_run):
    result = predict(trained_run, device="cpu")
    header, rows = read_csv(trained_run / "submission.csv")
    assert result.out == trained_run / "submission.csv"
    assert header == ["ImageId", "Label"] and len(rows) == 100
    assert [r[0] for r in rows] == [str(i) for i in range(1, 101)]
    assert all(0 <= int(r[1]) <= 9 for r in rows)
    assert result.accuracy is not None and 0 <= result.accuracy <= 1


def test_food11_ids_from_file_names(food_run, tmp_path):
    result = predict(food_run, device="cpu")
    header, rows = read_csv(food_run / "submission.csv")
    assert header == ["Id", "Category"] and len(rows) == 12
    assert [r[0] for r in rows] == [f"{i:04d}" for i in range(1, 13)]
    assert all(r[1] in ("0", "1", "2") for r in rows)
    assert result.accuracy is None  # food11 test/ is unlabeled


def test_input_folder_of_arbitrary_images_is_resized(food_run, tmp_path):
    folder = tmp_path / "mine"
    save_image(folder / "10.png", COLOURS[0], shape=(20, 13), mode="RGBA")
    save_image(folder / "2.jpg", COLOURS[1], shape=(40, 40), mode="L")
    out = tmp_path / "sub" / "mine.csv"
    predict(food_run, input=str(folder), out=str(out), device="cpu", submission={"label_as": "name"})
    header, rows = read_csv(out)
    assert header == ["Id", "Category"]
    assert [r[0] for r in rows] == ["2", "10"]  # natural file-name order
    assert all(r[1] in ("red", "green", "blue") for r in rows)


def test_probs_columns_sum_to_one(shared_run, tmp_path):
    out = tmp_path / "probs.csv"
    result = predict(shared_run, probs=True, out=str(out), device="cpu")
    header, rows = read_csv(out)
    assert header == ["ImageId", *result.classes] and len(rows) == 100
    sums = np.array([[float(v) for v in r[1:]] for r in rows]).sum(1)
    assert np.allclose(sums, 1, atol=1e-4)


@pytest.mark.parametrize("tta", ["flip", 5, 9])
def test_tta_keeps_the_format(shared_run, tmp_path, tta):
    plain = predict(shared_run, out=str(tmp_path / "plain.csv"), device="cpu")
    augmented = predict(shared_run, out=str(tmp_path / "tta.csv"), device="cpu", tta=tta)
    header, rows = read_csv(tmp_path / "tta.csv")
    assert header == plain.header and [r[0] for r in rows] == plain.ids
    assert torch.allclose(augmented.probs.sum(1), torch.ones(100), atol=1e-5)
    assert not torch.allclose(augmented.probs, plain.probs)  # the views did change the inputs


def test_ensemble_averages_member_probabilities(shared_run, make_cfg, tmp_path):
    from cnnlab.train import train

    second = tmp_path / "second"
    train(make_cfg("model=mlp", "trainer.max_epochs=1"), second)
    a = predict(shared_run, out=str(tmp_path / "a.csv"), device="cpu")
    b = predict(second, out=str(tmp_path / "b.csv"), device="cpu")
    both = predict([str(shared_run), str(second)], probs=True, out=str(tmp_path / "ab.csv"), device="cpu")
    assert torch.allclose(both.probs, (a.probs + b.probs) / 2, atol=1e-6)
    _, rows = read_csv(tmp_path / "ab.csv")
    written = torch.tensor([[float(v) for v in r[1:]] for r in rows])
    assert torch.allclose(written, both.probs, atol=1e-5)


def test_digit_csv_input(shared_run, tmp_path):
    test_csv = write_digit_csv(tmp_path / "test.csv")
    result = predict(shared_run, input=str(test_csv), out=str(tmp_path / "s.csv"), device="cpu")
    header, rows = read_csv(tmp_path / "s.csv")
    assert header == ["ImageId", "Label"] and [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert result.accuracy is None
    _, labels = make_images(5, seed=3)
    train_csv = write_digit_csv(tmp_path / "train.csv", labels=labels.tolist())
    labeled = predict(shared_run, input=str(train_csv), out=str(tmp_path / "t.csv"), device="cpu")
    assert labeled.accuracy is not None


@pytest.mark.slow
def test_cli_prints_destination_rows_and_accuracy(shared_run, tmp_path):
    trained_run = own_run(shared_run, tmp_path)
    res = run_cli("predict", f"run={trained_run}", "tta=flip", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"wrote 100 rows (ImageId,Label) for the fashion_mnist test split to {trained_run}" in res.stdout
    assert "accuracy" in res.stdout and (trained_run / "submission.csv").is_file()


def _mismatched_checkpoint(trained_run, tmp_path):
    state = read_state(trained_run / "checkpoints" / "best.pt")
    state["model"]["extra.weight"] = torch.zeros(1)
    path = tmp_path / "other.pt"
    write_state(state, path)
    return path


def _folder(tmp_path, *names):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        if name.endswith(".jpg") and not name.startswith("broken"):
            save_image(folder / name, COLOURS[0])
        else:
            (folder / name).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


BAD_INPUTS = {
    "no checkpoint": (lambda run, tmp: [f"run={tmp}"], "has no checkpoints/best.pt"),
    "mismatched checkpoint": (lambda run, tmp: [f"ckpt={_mismatched_checkpoint(run, tmp)}"], "extra.weight"),
    "unreadable image": (lambda run, tmp: [f"input={_folder(tmp, 'a.jpg', 'broken.jpg')}"], "broken.jpg"),
    "empty folder": (lambda run, tmp: [f"input={_folder(tmp)}"], "holds no image files"),
    "non-image file": (lambda run, tmp: [f"input={_folder(tmp, 'a.jpg', 'notes.txt')}"], "notes.txt is not"),
    "csv columns": (lambda run, tmp: [f"input={write_digit_csv(tmp / 't.csv', columns=783)}"], "783 columns"),
    "unknown tta": (lambda run, tmp: ["tta=mirror"], "Unknown tta 'mirror'; choose one of: run (each"),
    "csv label out of range": (
        lambda run, tmp: [f"input={write_digit_csv(tmp / 't.csv', n=2, labels=[3, 11])}"],
        "has label 11 but the run has 10 classes",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_bad_input_is_one_message_and_writes_nothing(shared_run, tmp_path, case):
    make_args, message = BAD_INPUTS[case]
    args = make_args(shared_run, tmp_path)
    if not any(a.startswith("run=") for a in args):
        args = [f"run={shared_run}", *args]
    res = run_cli("predict", *args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not list(shared_run.glob("*submission*")) and not list(tmp_path.glob("*submission*"))


def test_ensemble_of_runs_with_other_classes_is_refused(shared_run, food_run, tmp_path):
    res = run_cli("predict", f"run=[{shared_run},{food_run}]", cwd=tmp_path)
    assert res.returncode == 2
    assert "Ensemble members must agree on classes" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "submission.csv").exists()


def test_failure_while_writing_keeps_the_previous_submission(shared_run, tmp_path, monkeypatch):
    trained_run = own_run(shared_run, tmp_path)
    previous = trained_run / "submission.csv"
    previous.write_text("ImageId,Label\n1,7\n")
    real_make_rows = command.make_rows

    def rows_then_crash(*args, **kwargs):
        header, rows = real_make_rows(*args, **kwargs)

        def crash():
            yield from rows[:10]
            raise OSError("disk full")

        return header, crash()

    monkeypatch.setattr(command, "make_rows", rows_then_crash)
    with pytest.raises(OSError, match="disk full"):
        predict(trained_run, device="cpu")
    assert previous.read_text() == "ImageId,Label\n1,7\n"
    assert [p.name for p in trained_run.iterdir() if "submission" in p.name] == ["submission.csv"]


def test_write_csv_quotes_class_names_with_commas(tmp_path):
    write_csv(tmp_path / "s.csv", ["id", "label"], [["1", "Noodles, Pasta"]])
    assert read_csv(tmp_path / "s.csv") == (["id", "label"], [["1", "Noodles, Pasta"]])
