"""Trainer options of issue 4 wired end to end: accumulation, EMA, decay on biases/norms, per-step LR."""

from __future__ import annotations

import pytest
import torch

from cnnlab.build import build_optimizer
from cnnlab.engine.loop import group_sizes
from cnnlab.errors import ConfigError
from cnnlab.run.checkpoints import read_state
from cnnlab.train import train
from tests.test_train import read_metrics


def final_weights(run_dir):
    return read_state(run_dir / "checkpoints" / "last.pt")["model"]


def test_accumulating_two_half_batches_equals_one_full_batch(make_cfg, tmp_path):
    # 360 training images: batch 32 ends with a batch of 8, batch 16 with a lone group of 8.
    # fp32: in bf16 the two halves and the whole batch round differently (4e-4 apart, not 1e-5).
    common = ("optimizer=sgd", "optimizer.lr=0.05", "trainer.max_epochs=1", "trainer.channels_last=false",
              "trainer.precision=32")  # fmt: skip
    train(make_cfg(*common, "trainer.batch_size=32"), tmp_path / "full")
    train(make_cfg(*common, "trainer.batch_size=16", "trainer.accumulate=2"), tmp_path / "acc")
    full, acc = final_weights(tmp_path / "full"), final_weights(tmp_path / "acc")
    for key in full:
        torch.testing.assert_close(acc[key], full[key], rtol=1e-4, atol=1e-5)
    train(make_cfg(*common, "trainer.batch_size=16"), tmp_path / "half")  # the control: no accumulation
    half = final_weights(tmp_path / "half")
    assert not all(torch.allclose(half[k], full[k], rtol=1e-4, atol=1e-5) for k in full)


class FakeLoader:
    batch_size, num_samples = 10, 47

    def __len__(self):
        return 5


def test_group_sizes_cover_every_sample_once():
    assert group_sizes(FakeLoader(), 2) == [20, 20, 7]
    assert group_sizes(FakeLoader(), 1) == [10, 10, 10, 10, 7]
    assert group_sizes(FakeLoader(), 8) == [47]


def test_ema_is_evaluated_checkpointed_and_used_when_better(make_cfg, tmp_path):
    run = tmp_path / "ema"
    summary = train(make_cfg("trainer.ema=0.9", "trainer.max_epochs=3"), run)
    rows = read_metrics(run)
    assert all(r["ema_val_acc"] and r["weights"] in ("raw", "ema") for r in rows)
    best = read_state(run / "checkpoints" / "best.pt")
    assert set(best["ema"]) == {"module", "updates"} and best["ema"]["updates"] == best["epoch"] * 12
    row = rows[best["epoch"] - 1]
    chosen = float(row["ema_val_acc"] if row["weights"] == "ema" else row["val_acc"])
    assert summary["best_value"] == pytest.approx(chosen, abs=1e-6)
    assert summary["best_weights"] == best["weights"] == row["weights"]
    from cnnlab.run.checkpoints import scored_weights
    from cnnlab.run.load import load_run

    loaded = load_run(run).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in scored_weights(best).items())


def test_ema_decay_out_of_range_is_one_clear_error(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.ema is a decay in \(0, 1\)"):
        train(make_cfg("trainer.ema=1.5"), tmp_path / "r")


def test_weight_decay_on_biases_and_norms_is_an_option(make_cfg):
    from cnnlab.build import build_model

    cfg = make_cfg("model=simplecnn", "optimizer.weight_decay=0.1")
    model = build_model(cfg.model, in_channels=1, num_classes=10, image_size=28)
    groups = build_optimizer(model, cfg.optimizer).param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p.ndim <= 1 for p in groups[1]["params"])
    cfg = make_cfg("model=simplecnn", "optimizer.weight_decay=0.1", "optimizer.decay_bias_norm=true")
    groups = build_optimizer(model, cfg.optimizer).param_groups
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


def test_learning_rate_goes_to_tensorboard_every_step(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    cfg = make_cfg("scheduler=cosine", "trainer.tensorboard=true", "trainer.accumulate=3")
    train(cfg, run)
    events = EventAccumulator(str(run / "tb")).Reload()
    steps = events.Scalars("lr/step")
    assert [s.step for s in steps] == list(range(1, 2 * 4 + 1))  # 12 batches / 3 per step, 2 epochs
    lrs = [s.value for s in steps]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
