"""The rules features share: one idea of "better" (the monitored value of one scored result), one owner
of checkpoint files (best.pt's EMA weights are what ``model.weights=`` loads) and one scorer at the end
of training (the run's memory format, the model's own left alone)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cnnlab.engine.tracker import MetricTracker, monitored
from cnnlab.run.checkpoints import read_state, write_state
from cnnlab.train import train
from tests.test_train import read_metrics

FAST = ("model=lenet", "trainer.precision=32", "trainer.threads=1", "trainer.report=false",
        "trainer.limit_train_batches=4", "trainer.max_epochs=3")  # fmt: skip


def test_the_monitored_value_is_read_off_one_scored_result():
    scored = {"loss": torch.tensor(0.5), "acc": torch.tensor(0.75), "macro_f1": 0.25, "balanced_acc": 0.4}
    assert monitored(scored, "val_acc") == 0.75 and monitored(scored, "val_loss") == 0.5
    assert monitored(scored, "val_macro_f1") == 0.25 and monitored(scored, "val_balanced_acc") == 0.4
    tracker = MetricTracker("val_loss", "min")
    assert tracker.pick({"raw": {"loss": 0.3}, "ema": {"loss": 0.2}}) == ("ema", 0.2)
    assert tracker.pick({"raw": {"loss": 0.2}, "ema": {"loss": 0.2}}) == ("raw", 0.2)  # a tie: raw
    assert tracker.pick({"raw": {"loss": math.nan}, "ema": {"loss": 9.0}}) == ("ema", 9.0)
    f1 = MetricTracker("val_macro_f1", "max")
    assert f1.pick({"raw": {"acc": 0.9, "macro_f1": 0.1}, "ema": {"acc": 0.1, "macro_f1": 0.2}})[0] == "ema"


@pytest.mark.parametrize(("swa_acc", "swa_f1", "kept"), [(1.0, 0.0, False), (0.0, 1.0, True)])
def test_swa_is_compared_on_the_monitored_metric(make_cfg, tmp_path, monkeypatch, swa_acc, swa_f1, kept):
    """With trainer.monitor=val_macro_f1 the SWA average is kept as best.pt when its macro F1 beats the
    best epoch's, whatever its accuracy says."""
    from cnnlab.engine.infer import Scorer
    from cnnlab.engine.swa import WeightAverage

    real_score = Scorer.score

    def score(self, model, loader):  # the average's validation, with the two metrics apart
        out = real_score(self, model, loader)
        if not isinstance(model, WeightAverage) and any(model is a.averaged.module for a in averages):
            out = {**out, "acc": torch.tensor(swa_acc), "macro_f1": swa_f1}
        return out

    averages = []
    real_init = WeightAverage.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        averages.append(self)

    monkeypatch.setattr(Scorer, "score", score)
    monkeypatch.setattr(WeightAverage, "__init__", init)
    run = tmp_path / "run"
    summary = train(make_cfg(*FAST, "trainer.swa_start=2", "trainer.monitor=val_macro_f1"), run)
    rows = read_metrics(run)
    best_epoch_f1 = max(float(r["val_macro_f1"]) for r in rows)
    assert best_epoch_f1 < 1.0  # else the case below would be a tie
    assert len(averages) == 1 and summary["swa_value"] == swa_f1
    assert (summary["best_weights"] == "swa") is kept
    assert summary["best_value"] == (swa_f1 if kept else pytest.approx(best_epoch_f1, abs=1e-6))
    assert (read_state(run / "checkpoints" / "best.pt")["weights"] == "swa") is kept


def test_model_weights_of_an_ema_best_run_loads_the_ema_weights(tmp_path):
    """A run's best.pt whose EMA weights scored best: ``model.weights=`` starts from the EMA's, as
    evaluate and predict score with them."""
    from cnnlab.models.lenet import LeNet

    raw = LeNet(in_channels=1, num_classes=10, image_size=28).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    best = tmp_path / "best.pt"
    write_state({"weights": "ema", "model": raw, "ema": {"module": ema, "updates": 7}}, best)
    started = LeNet(in_channels=1, num_classes=10, image_size=28, weights=str(best)).state_dict()
    assert all(torch.equal(started[k], v) for k, v in ema.items())
    write_state({"weights": "raw", "model": raw, "ema": {"module": ema, "updates": 7}}, best)
    started = LeNet(in_channels=1, num_classes=10, image_size=28, weights=str(best)).state_dict()
    assert all(torch.equal(started[k], v) for k, v in raw.items())


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_end_of_training_scorer_uses_the_runs_memory_format(make_cfg, tmp_path, monkeypatch,
                                                               channels_last):  # fmt: skip
    """The test split is scored in the memory format the run trained in (trainer.channels_last), and
    scoring leaves the live model's format as it was."""
    from cnnlab.report.evaluate import Scored

    seen = []
    original = Scored.score.__func__

    def spy(cls, predictor, *args, **kwargs):
        # a convolution over several channels (one channel is contiguous in either format)
        conv = next(p for p in predictor.model.parameters() if p.ndim == 4 and p.shape[1] > 1)
        before = conv.is_contiguous(memory_format=torch.channels_last)
        out = original(cls, predictor, *args, **kwargs)
        seen.append((predictor.channels_last, before, conv.is_contiguous(memory_format=torch.channels_last)))
        return out

    monkeypatch.setattr(Scored, "score", classmethod(spy))
    cfg = make_cfg(*FAST, "trainer.max_epochs=1", f"trainer.channels_last={str(channels_last).lower()}")
    summary = train(cfg, tmp_path / "run")
    assert summary["test_acc"] is not None
    assert seen == [(channels_last, channels_last, channels_last)]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test_acc"] == summary["test_acc"]
