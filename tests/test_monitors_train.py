"""``trainer.monitor=val_macro_f1 | val_balanced_acc`` through ``train()``: the columns, scikit-learn's values
on the same predictions, and the metric driving best.pt and early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnnlab.run.checkpoints import read_state
from cnnlab.train import Callback, train
from tests.conftest import make_images, write_idx, write_tiny_idx
from tests.test_train import read_metrics

COLUMNS = ("val_macro_f1", "val_balanced_acc")


@pytest.fixture
def imbalanced(tmp_path):
    """The tiny data with classes 0, 1 and 2 cut to a quarter of their training images (10 of 40)."""
    root = write_tiny_idx(tmp_path / "imbalanced")
    x, y = make_images(400, 0)
    keep = np.concatenate([np.flatnonzero(y == k)[: 10 if k < 3 else None] for k in range(10)])
    keep.sort()
    write_idx(root / "train-images-idx3-ubyte", x[keep])
    write_idx(root / "train-labels-idx1-ubyte", y[keep])
    return root


class ScoreWithScikitLearn(Callback):
    """After each epoch, the validation predictions of the epoch's weights scored by scikit-learn."""

    def __init__(self):
        self.rows: list[dict] = []

    @torch.no_grad()
    def on_epoch_end(self, run, row, value):
        from sklearn.metrics import balanced_accuracy_score, f1_score

        run.model.eval()
        pairs = [(run.model(run.ctx.pipeline(x, train=False)).argmax(1), y) for x, y in run.data.val]
        pred, y = (torch.cat(t).numpy() for t in zip(*pairs, strict=True))
        self.rows.append({
            "row": dict(row), "value": value,
            "val_macro_f1": f1_score(y, pred, average="macro"),
            "val_balanced_acc": balanced_accuracy_score(y, pred),
        })  # fmt: skip


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("monitor", COLUMNS)
def test_balanced_monitor_scores_as_scikit_learn_and_drives_the_run(make_cfg, imbalanced, tmp_path, monitor):
    sk = ScoreWithScikitLearn()
    run = tmp_path / "run"
    cfg = make_cfg(f"dataset.root={imbalanced}", f"trainer.monitor={monitor}", "trainer.max_epochs=4",
                   "trainer.patience=1", "optimizer.lr=0.002", "trainer.limit_train_batches=4",
                   "trainer.precision=32", "trainer.report=false")  # fmt: skip
    summary = train(cfg, run, callbacks=(sk,))
    assert len({e["row"][monitor] for e in sk.rows}) > 1, "the metric should move between epochs"
    assert any(e["row"][monitor] != e["row"]["val_acc"] for e in sk.rows), "and differ from accuracy"
    for epoch in sk.rows:
        for column in COLUMNS:
            assert epoch["row"][column] == pytest.approx(epoch[column], abs=1e-12)
        assert epoch["value"] == epoch["row"][monitor]  # what the tracker was handed
    rows = read_metrics(run)
    assert set(COLUMNS) <= set(rows[0])
    values = [float(r[monitor]) for r in rows]
    best_epoch = 1 + values.index(max(values))
    assert summary["monitor"] == monitor and summary["best_epoch"] == best_epoch
    assert summary["best_value"] == sk.rows[best_epoch - 1]["value"]
    assert read_state(run / "checkpoints" / "best.pt")["epoch"] == best_epoch
    stopped_early = summary["stop_reason"] == "early_stop"
    assert summary["epochs_run"] == (best_epoch + 1 if stopped_early else 4)
    assert json.loads((run / "summary.json").read_text())["best_value"] == summary["best_value"]


def test_the_columns_appear_only_with_a_balanced_monitor(make_cfg, tmp_path):
    train(make_cfg("trainer.max_epochs=1", "trainer.report=false"), tmp_path / "acc")
    assert not set(COLUMNS) & set(read_metrics(tmp_path / "acc")[0])
