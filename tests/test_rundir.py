"""Rebuilding a finished run: model, weights and metadata from the checkpoint; refusals for bad input."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.run.checkpoints import read_state, write_state
from cnnlab.run.load import load_run
from cnnlab.run.trust import untrusted_entries


@pytest.mark.parametrize("source", ["best.safetensors", "best.pt"])
def test_load_run_restores_the_best_weights(trained_run, source):
    if source == "best.pt":
        (trained_run / "checkpoints" / "best.safetensors").unlink()
    run = load_run(trained_run)
    assert run.checkpoint_path.name == source
    saved = read_state(trained_run / "checkpoints" / "best.pt")
    assert run.classes == saved["classes"] and len(run.classes) == 10
    assert (run.in_channels, run.image_size) == (1, 28)
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key
    assert not run.model.training
    assert run.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_missing_run_dir_and_checkpoint_are_named(tmp_path):
    for target, fragment in ((tmp_path / "nope", "does not exist"), (tmp_path, "no checkpoints/best.pt")):
        try:
            load_run(target)
        except CheckpointError as exc:
            assert fragment in str(exc) and str(target) in str(exc)
        else:
            raise AssertionError("expected CheckpointError")


def test_weights_of_another_model_name_the_mismatched_keys(trained_run, tmp_path):
    state = read_state(trained_run / "checkpoints" / "best.pt")
    state["model"]["extra.weight"] = torch.zeros(1)
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(3)
    bad = tmp_path / "bad.pt"
    write_state(state, bad)
    try:
        load_run(trained_run, ckpt=bad)
    except CheckpointError as exc:
        assert "extra.weight" in str(exc) and f"{first} has shape (3,)" in str(exc)
    else:
        raise AssertionError("expected CheckpointError")


def test_foreign_target_in_saved_config_is_refused_unless_trusted(trained_run, tmp_path):
    state = read_state(trained_run / "checkpoints" / "best.pt")
    cfg = OmegaConf.create(state["config"])
    cfg.model._target_ = "os.system"
    state["config"] = OmegaConf.to_yaml(cfg)
    bad = tmp_path / "evil.pt"
    write_state(state, bad)
    try:
        load_run(trained_run, ckpt=bad)
    except ConfigError as exc:
        assert "model._target_=os.system" in str(exc) and "trust_config=true" in str(exc)
    else:
        raise AssertionError("expected ConfigError")


def test_untrusted_targets_walks_nested_lists():
    # An allowed class is named exactly, where cnnlab instantiates (model, optimizer); not by a prefix.
    node = {"model": {"_target_": "cnnlab.models.lenet.LeNet"}, "b": [{"_target_": "evil.Thing"}]}
    assert untrusted_entries(node) == ["b[0]._target_=evil.Thing"]


def test_infer_probs_are_softmax_of_the_model_in_input_order(trained_run):
    from cnnlab.run.load import Predictor

    run = load_run(trained_run)
    x = torch.randint(0, 256, (7, 1, 28, 28), dtype=torch.uint8)
    predictor = Predictor.of(run, torch.device("cpu"), precision="32", batch_size=4)  # two batches
    pipeline = predictor.pipeline
    probs = predictor.probs(x)
    assert probs.shape == (7, 10) and torch.allclose(probs.sum(1), torch.ones(7))
    expected = run.model(pipeline(x, train=False)).softmax(1)
    assert torch.allclose(probs, expected, atol=1e-5)


def test_safetensors_holds_the_best_weights_and_their_metadata(trained_run):
    from cnnlab.run.load import read_checkpoint

    best = read_state(trained_run / "checkpoints" / "best.pt")
    weights, record = read_checkpoint(trained_run / "checkpoints" / "best.safetensors")
    shared = {**record.to_state(), "model": weights}
    assert shared["classes"] == best["classes"] and shared["image_size"] == 28
    assert shared["mean"] == best["mean"] and shared["model_name"] == "lenet"
    assert all(torch.equal(shared["model"][k], v) for k, v in best["model"].items())


def test_a_foreign_safetensors_file_is_refused(trained_run, tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match="not a cnnlab safetensors file"):
        load_run(trained_run, ckpt=bad)
