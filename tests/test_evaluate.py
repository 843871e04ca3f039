"""cnnlab evaluate: metric functions against a hand computation, the report files, user errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from cnnlab.report.metrics import (
    calibration,
    classification_report,
    confusion_matrix,
    most_confused,
    per_class,
)
from tests.conftest import run_cli

# Six samples, three classes. Predictions (argmax): 0, 0, 1, 1, 2, 0; labels: 0, 0, 1, 2, 2, 1.
PROBS = np.array(
    [
        [0.90, 0.05, 0.05],  # conf 0.90, right
        [0.60, 0.30, 0.10],  # conf 0.60, right
        [0.20, 0.70, 0.10],  # conf 0.70, right
        [0.10, 0.50, 0.40],  # conf 0.50, wrong (true 2)
        [0.05, 0.15, 0.80],  # conf 0.80, right
        [0.95, 0.03, 0.02],  # conf 0.95, wrong (true 1)
    ]
)
LABELS = np.array([0, 0, 1, 2, 2, 1])


def test_confusion_matrix_and_per_class_match_hand_counts():
    cm = confusion_matrix(PROBS.argmax(1), LABELS, 3)
    # rows true, columns predicted
    assert cm.tolist() == [[2, 0, 0], [1, 1, 0], [0, 1, 1]]
    pc = per_class(cm)
    # precision = diag / column sums (3, 2, 1); recall = diag / row sums (2, 2, 2)
    np.testing.assert_allclose(pc["precision"], [2 / 3, 1 / 2, 1 / 1])
    np.testing.assert_allclose(pc["recall"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(pc["f1"], [2 * (2 / 3) / (2 / 3 + 1), 0.5, 2 * 0.5 / 1.5])
    assert pc["support"].tolist() == [2, 2, 2]
    assert most_confused(cm, 5) == [(1, 0, 1), (2, 1, 1)]


def test_ece_matches_hand_computation_with_15_bins():
    cal = calibration(PROBS, LABELS, bins=15)
    # bin width 1/15: 0.90 -> bin 13 (0.8667, 0.9333]; 0.60 -> bin 8 (0.5333, 0.6]; 0.70 -> bin 10;
    # 0.50 -> bin 7 (0.4667, 0.5333]; 0.80 -> bin 11 (0.7333, 0.8]; 0.95 -> bin 14.
    # Each bin holds one sample: ECE = mean |correct - conf|.
    hand = (0.10 + 0.40 + 0.30 + 0.50 + 0.20 + 0.95) / 6
    assert cal["ece"] == pytest.approx(hand)
    counts = [b["count"] for b in cal["bins"]]
    assert counts == [0] * 7 + [1, 1, 0, 1, 1, 0, 1, 1]
    assert cal["bins"][7]["accuracy"] == 0.0 and cal["bins"][7]["confidence"] == pytest.approx(0.5)


def test_ece_bin_edges_are_upper_inclusive_and_shared_bins_average():
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [1.0, 0.0], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])
    cal = calibration(probs, labels, bins=5)  # bins (0, .2], ..., (.4, .6], (.6, .8], (.8, 1]
    # (.4, .6]: conf 0.6, 0.6, 0.55 -> mean 0.5833, accuracy 2/3; (.8, 1]: conf 1.0, accuracy 1.
    assert [b["count"] for b in cal["bins"]] == [0, 0, 3, 0, 1]
    assert cal["ece"] == pytest.approx(3 / 4 * abs(2 / 3 - (0.6 + 0.6 + 0.55) / 3))


def test_classification_report_accuracy_and_loss():
    m = classification_report(PROBS, LABELS, ["a", "b", "c"], bins=15, pairs=10)
    assert m["accuracy"] == pytest.approx(4 / 6)
    hand_nll = -np.mean(np.log([0.90, 0.60, 0.70, 0.40, 0.80, 0.03]))
    assert m["loss"] == pytest.approx(hand_nll)
    assert m["most_confused"][0] == {"true": "b", "predicted": "a", "count": 1, "share_of_true": 0.5}
    assert m["per_class"][1]["accuracy"] == m["per_class"][1]["recall"] == 0.5


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_evaluate_writes_the_report(trained_run, tmp_path):
    result = run_cli("evaluate", f"run={trained_run}", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = trained_run / "report"
    m = json.loads((report / "metrics.json").read_text())
    assert m["n"] == 100 and m["ece_bins"] == 15
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == 100 and np.trace(cm) / 100 == pytest.approx(m["accuracy"])
    with (report / "confusion_matrix.csv").open() as f:
        rows = list(csv.reader(f))
    classes = [r["class"] for r in m["per_class"]]
    assert classes[0] == "T-shirt/top" and rows[0][1:] == classes and [r[0] for r in rows[1:]] == classes
    with (report / "per_class.csv").open() as f:
        assert sum(int(r["support"]) for r in csv.DictReader(f)) == 100
    for name, size in (("confusion_matrix.png", (1000, 900)), ("reliability.png", (700, 800))):
        assert Image.open(report / name).size == size
    assert "accuracy" in result.stdout and "most confused pairs" in result.stdout


@pytest.mark.slow
def test_train_writes_the_report_at_the_end(trained_run):
    report = trained_run / "report"
    assert (report / "curves.png").stat().st_size > 0
    summary = json.loads((trained_run / "summary.json").read_text())
    m = json.loads((report / "metrics.json").read_text())
    assert m["accuracy"] == pytest.approx(summary["test_acc"], abs=0.011)  # bf16 autocast may flip one


def test_train_without_evaluate_writes_no_report(make_cfg, tmp_path):
    from cnnlab.train import train

    train(make_cfg("trainer.evaluate=false", "trainer.max_epochs=1"), tmp_path / "run")
    assert not (tmp_path / "run" / "report").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run=nowhere"], "does not exist"),
        ([], "No run given"),
        (["run={run}", "bins=0"], "bins must be an integer of at least 1"),
    ],
)
def test_evaluate_user_errors_are_one_line(trained_run, tmp_path, args, message):
    result = run_cli("evaluate", *[a.format(run=trained_run) for a in args], cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_evaluate_refuses_an_unlabeled_test_split(make_cfg, tmp_path):
    from cnnlab.train import train
    from tests.test_data_folders import write_food11

    write_food11(tmp_path / "food")
    (tmp_path / "food" / "train" / "2_99.jpg").unlink()  # the deliberately broken file
    cfg = make_cfg("dataset=food11", f"dataset.root={tmp_path / 'food'}", "dataset.image_size=16",
                   "dataset.num_workers=0", "dataset.cache=false", "trainer.max_epochs=1")  # fmt: skip
    train(cfg, tmp_path / "run")  # the end-of-train report draws the curves and skips the scoring
    assert (tmp_path / "run" / "report" / "curves.png").is_file()
    assert not (tmp_path / "run" / "report" / "metrics.json").exists()
    result = run_cli("evaluate", f"run={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "needs a labeled test split" in result.stderr and len(result.stderr.strip().splitlines()) == 1
