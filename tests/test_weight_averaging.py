"""SWA (trainer.swa_start) and checkpoint averaging (cnnlab export average=[...])."""

import json

import pytest
import torch

from cnnlab.build import check
from cnnlab.engine.swa import average_states
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.run.checkpoints import read_safetensors
from cnnlab.train import train
from tests.conftest import run_cli

FAST = ("model=lenet", "trainer.precision=32", "trainer.threads=1", "trainer.report=false",
        "trainer.limit_train_batches=4", "trainer.max_epochs=3",
        "trainer.epoch_checkpoints=true")  # fmt: skip


def epoch_weights(run, epoch):
    return read_safetensors(run / "checkpoints" / f"epoch_{epoch:03d}.safetensors")[0]


def test_swa_is_the_mean_of_the_epochs_from_swa_start(make_cfg, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(*FAST, "trainer.swa_start=2"), run)
    swa, metadata = read_safetensors(run / "checkpoints" / "swa.safetensors")
    expected = average_states([epoch_weights(run, 2), epoch_weights(run, 3)])
    for key, value in expected.items():
        torch.testing.assert_close(swa[key], value)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["swa_epochs"] == 2 and 0 <= summary["swa_val_acc"] <= 1
    assert json.loads(metadata["weights"]) == "swa"
    assert summary["best_weights"] in ("raw", "swa")


def test_swa_with_batchnorm_recomputes_the_statistics(make_cfg, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(*FAST, "model=simplecnn", "trainer.swa_start=2"), run)
    swa = read_safetensors(run / "checkpoints" / "swa.safetensors")[0]
    mean_of_epochs = average_states([epoch_weights(run, 2), epoch_weights(run, 3)])
    key = next(k for k in swa if k.endswith("running_mean"))
    assert not torch.allclose(swa[key], mean_of_epochs[key])  # not averaged: recomputed by update_bn
    assert not torch.allclose(swa[key], torch.zeros_like(swa[key]))


def test_without_swa_start_nothing_changes(make_cfg, tmp_path):
    train(make_cfg(*FAST), tmp_path / "a")
    assert not (tmp_path / "a" / "checkpoints" / "swa.safetensors").exists()
    assert "swa_epochs" not in json.loads((tmp_path / "a" / "summary.json").read_text())


@pytest.mark.parametrize("value", [0, 4])
def test_bad_swa_start_is_a_one_line_error(make_cfg, value):
    with pytest.raises(ConfigError, match=r"trainer.swa_start is the first epoch averaged, 1 to"):
        check(make_cfg(*FAST, f"trainer.swa_start={value}"))


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_export_average_of_epoch_checkpoints(make_cfg, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(*FAST), run)
    proc = run_cli(
        "export", f"run={run}", "average=[epoch_002.safetensors,epoch_003.safetensors]", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    averaged = read_safetensors(run / "export" / "average.safetensors")[0]
    for key, value in average_states([epoch_weights(run, 2), epoch_weights(run, 3)]).items():
        torch.testing.assert_close(averaged[key], value)
    proc = run_cli("predict", f"run={run}", f"ckpt={run / 'export' / 'average.safetensors'}",
                   f"out={tmp_path / 'sub.csv'}", "device=cpu", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0 and "accuracy" in proc.stdout, proc.stderr
    cases = (
        (["average=[epoch_002.safetensors]"], "two or more checkpoints"),
        (["average=[a.pt,b.pt]"], "No checkpoint a.pt"),
        (["average=[epoch_002.safetensors,b.pt]", "format=onnx"], "writes safetensors"),
    )
    for args, message in cases:
        proc = run_cli("export", f"run={run}", *args, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_average_refuses_checkpoints_of_other_models(make_cfg, tmp_path):
    from cnnlab.commands.average import average

    train(make_cfg(*FAST), tmp_path / "a")
    train(make_cfg(*FAST, "model=mlp"), tmp_path / "b")
    other = tmp_path / "b" / "checkpoints" / "epoch_003.safetensors"
    with pytest.raises(CheckpointError, match="holds another model"):
        average(tmp_path / "a", ["epoch_003.safetensors", str(other)])


def test_the_test_split_is_scored_with_the_average_when_it_is_kept_as_best(make_cfg, tmp_path, monkeypatch):
    """SWA kept as best.pt at the last epoch: finish must score the average, not the last epoch's
    weights that are still in the model."""
    from cnnlab.engine.tracker import MetricTracker
    from cnnlab.report.evaluate import Scored

    monkeypatch.setattr(MetricTracker, "beats_best", lambda self, value: True)  # the average wins
    scored = []
    original = Scored.score.__func__

    def spy(cls, predictor, *args, **kwargs):
        scored.append({k: v.clone() for k, v in predictor.model.state_dict().items()})
        return original(cls, predictor, *args, **kwargs)

    monkeypatch.setattr(Scored, "score", classmethod(spy))
    run = tmp_path / "run"
    summary = train(make_cfg(*FAST, "trainer.swa_start=2"), run)
    assert summary["best_weights"] == "swa" and len(scored) == 1
    swa, _ = read_safetensors(run / "checkpoints" / "swa.safetensors")
    for key, value in swa.items():
        torch.testing.assert_close(scored[0][key], value)
