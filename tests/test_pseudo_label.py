"""Pseudo-labelling: rounds, what joins the training split, and what never enters validation."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.build import check
from cnnlab.errors import ConfigError
from cnnlab.train import Callback, train

FAST = ("model=lenet", "trainer.precision=32", "trainer.threads=1", "trainer.report=false",
        "trainer.max_epochs=3")  # fmt: skip
PSEUDO = ("trainer.pseudo_label.data=test", "trainer.pseudo_label.start_epoch=1",
          "trainer.pseudo_label.rounds=2", "trainer.pseudo_label.threshold=0.5")  # fmt: skip


class Watch(Callback):
    """Records the training and validation images after every epoch."""

    def __init__(self):
        self.train, self.val = [], []

    def on_epoch_end(self, run, row, value):
        self.train.append((run.data.train.x.clone(), run.data.train.y.clone(), len(run.data.train)))
        self.val.append((run.data.val.x.clone(), run.data.val.y.clone()))
        self.pool = run.parts["pseudo"].pseudo.pool if "pseudo" in run.parts else None


def test_rounds_add_confident_pool_images_to_training_only(make_cfg, tmp_path):
    watch, plain = Watch(), Watch()
    train(make_cfg(*FAST, *PSEUDO), tmp_path / "run", callbacks=(watch,))
    train(make_cfg(*FAST), tmp_path / "plain", callbacks=(plain,))
    with (tmp_path / "run" / "pseudo_labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2] and [int(r["epoch"]) for r in rows] == [1, 2]
    classes = list(rows[0])[4:]
    for row, (x, _, batches) in zip(rows, watch.train[:2], strict=True):
        added = int(row["added"])
        assert sum(int(row[c]) for c in classes) == added and int(row["pool"]) == 100
        assert len(x) == 360 + added  # 400 training images less the 10% validation split
        assert batches == plain.train[0][2]  # an epoch keeps its number of batches
    pool = {bytes(x.numpy()) for x in watch.pool}
    for (val_x, val_y), (plain_x, plain_y) in zip(watch.val, plain.val, strict=True):
        assert torch.equal(val_x, plain_x) and torch.equal(val_y, plain_y)  # validation never changes
        assert not pool & {bytes(x.numpy()) for x in val_x}  # and holds no pool image
    assert "pseudo-labels round 2 after epoch 2" in (tmp_path / "run" / "train.log").read_text()


def test_pseudo_labels_resume_exactly(make_cfg, tmp_path):
    from tests.test_resume import KillAfterEpoch, Killed, assert_same_run

    recipe = (*FAST, *PSEUDO, "model=simplecnn", "trainer.swa_start=2", "augmentation.adversarial.method=pgd",
              "augmentation.adversarial.steps=2")  # fmt: skip
    train(make_cfg(*recipe), tmp_path / "whole")
    with pytest.raises(Killed):
        train(make_cfg(*recipe), tmp_path / "killed", callbacks=(KillAfterEpoch(2),))
    train(make_cfg(*recipe, f"resume={tmp_path / 'killed'}"), tmp_path / "killed")
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    assert (tmp_path / "whole" / "pseudo_labels.csv").read_text() == (
        tmp_path / "killed" / "pseudo_labels.csv"
    ).read_text()


def test_a_folder_of_images_as_the_pool(make_cfg, tmp_path):
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / f"{i}.png")
    watch = Watch()
    train(make_cfg(*FAST, *PSEUDO[1:], f"trainer.pseudo_label.data={folder}"), tmp_path / "run",
          callbacks=(watch,))  # fmt: skip
    assert watch.pool.shape == (12, 1, 28, 28) and watch.pool.dtype == torch.uint8


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("threshold=0", "a confidence in"),
        ("rounds=0", "at least 1"),
        ("start_epoch=3", "must lie in 1 to 2"),
        ("start_epoch=0", "must lie in 1 to 2"),
    ],
)
def test_bad_options_are_one_line_errors(make_cfg, option, message):
    with pytest.raises(ConfigError, match=message):
        check(make_cfg(*FAST, *PSEUDO, f"trainer.pseudo_label.{option}"))


def test_a_missing_pool_is_a_data_error(make_cfg, tmp_path):
    from cnnlab.errors import DataError

    with pytest.raises(DataError, match="neither 'test' nor a folder"):
        train(
            make_cfg(*FAST, *PSEUDO[1:], f"trainer.pseudo_label.data={tmp_path / 'nowhere'}"), tmp_path / "r"
        )
