"""The patch-whitening first layer (model.whiten), more convs per stage, and test-time augmentation
in training's validation and test (trainer.tta)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.engine.infer import view_log_probs
from cnnlab.engine.tta import tta_views
from cnnlab.errors import ConfigError
from cnnlab.models.simplecnn import SimpleCNN
from cnnlab.models.whiten import PatchWhitening, fit_to_data
from cnnlab.train import train


def correlated_images(n: int = 300) -> torch.Tensor:
    """3-channel images whose channels and neighbouring pixels are strongly correlated."""
    g = torch.Generator().manual_seed(0)
    base = F.avg_pool2d(torch.randn(n, 1, 18, 18, generator=g), 3, 1)  # smooth: neighbours correlate
    mix = torch.tensor([1.0, 0.8, 0.5]).view(1, 3, 1, 1)
    return base * mix + 0.1 * torch.randn(n, 3, 16, 16, generator=g)


def second_moment(layer: PatchWhitening, x: torch.Tensor, n: int) -> torch.Tensor:
    y = F.conv2d(x, layer.weight[:n])
    flat = y.permute(1, 0, 2, 3).reshape(n, -1)
    return flat @ flat.T / flat.shape[1]


def test_fitted_filters_whiten_the_patches_and_come_in_signed_pairs():
    x = correlated_images()
    layer = PatchWhitening(3, 2, eps=1e-9)  # the default eps damps the weakest directions a little
    n = 3 * 2 * 2
    before = F.unfold(x, 2).transpose(1, 2).reshape(-1, n)
    assert (before.T @ before / len(before) - torch.eye(n)).abs().max() > 0.5  # far from white
    layer.fit(x)
    assert layer.weight.shape == (2 * n, 3, 2, 2) and layer.out_channels == 2 * n
    assert torch.allclose(second_moment(layer, x, n), torch.eye(n), atol=0.02)
    assert torch.equal(layer.weight[n:], -layer.weight[:n])
    assert "weight" in layer.state_dict() and not any(p is layer.weight for p in layer.parameters())


def test_fit_to_data_normalises_first_and_skips_models_without_the_layer():
    calls = []

    def normalize(images):
        calls.append(images.dtype)
        return images.float() / 255

    plain = SimpleCNN(in_channels=3, num_classes=4, image_size=16, channels=[4])
    fit_to_data(plain, torch.zeros(2, 3, 16, 16, dtype=torch.uint8), normalize)
    assert calls == []  # nothing to fit: the images are not even normalised
    model = SimpleCNN(in_channels=3, num_classes=4, image_size=16, channels=[4], whiten=2)
    images = (correlated_images(50) * 40 + 128).clamp(0, 255).to(torch.uint8)
    fit_to_data(model, images, normalize)
    assert calls == [torch.uint8] and model.features[0].weight.abs().sum() > 0


def test_simplecnn_with_whitening_and_two_convs_per_stage():
    model = SimpleCNN(in_channels=3, num_classes=10, image_size=32, channels=[8, 16, 32], convs=2, whiten=2)
    kinds = [type(m) for m in model.features]
    assert kinds[:2] == [PatchWhitening, nn.ReLU]
    stage = [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert kinds[2:9] == stage
    assert model.features[2].in_channels == 24 and sum(k is nn.Conv2d for k in kinds) == 6
    assert model.classifier.in_features == 32 * 3 * 3  # 32 -> 31 (2x2 valid) -> 15 -> 7 -> 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "overrides,message",
    [({"convs": 0}, "positive convs"), ({"whiten": -1}, "model.whiten"), ({"whiten": 32}, "1 to 31")],
)
def test_simplecnn_rejects_bad_convs_and_whiten(overrides, message):
    kwargs = {"in_channels": 3, "num_classes": 10, "image_size": 32} | overrides
    with pytest.raises(ConfigError, match=message):
        SimpleCNN(**kwargs)


def test_one_view_is_the_log_softmax_and_several_average_probabilities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    xb = torch.randint(0, 256, (6, 3, 2, 2), dtype=torch.uint8)

    def pipeline(x, train):
        return x.float() / 255

    kw = {"pipeline": pipeline, "device": torch.device("cpu"), "precision": "32"}
    logits = model(xb.float() / 255)
    assert torch.allclose(view_log_probs(model, xb, **kw), logits.log_softmax(1))
    views = tta_views("flip", 2)
    mean = (logits.softmax(1) + model(xb.flip(-1).float() / 255).softmax(1)) / 2
    assert torch.allclose(view_log_probs(model, xb, views=views, **kw).exp(), mean, atol=1e-6)


def test_training_fits_whitening_and_scores_with_tta_everywhere(make_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = make_cfg("model=simplecnn", "model.channels=[8,16]", "model.convs=2", "model.whiten=2",
                   "trainer.tta=flip", "trainer.max_epochs=1")  # fmt: skip
    summary = train(cfg, run)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    weight = best["model"]["features.0.weight"]
    assert weight.shape == (8, 1, 2, 2) and weight.abs().sum() > 0
    report = json.loads((run / "report" / "metrics.json").read_text())
    assert report["tta"] == "flip"
    assert report["accuracy"] == pytest.approx(summary["test_acc"], abs=1e-6)
    assert report["loss"] == pytest.approx(summary["test_loss"], rel=1e-4)
    # predict scores as the run did unless told otherwise
    from cnnlab.commands.predict import predict

    as_run = predict(run, out=str(tmp_path / "as_run.csv"), device="cpu")
    assert as_run.tta == ["flip"] and as_run.accuracy == pytest.approx(summary["test_acc"], abs=1e-6)
    plain_views = predict(run, out=str(tmp_path / "none.csv"), device="cpu", tta=None)
    assert plain_views.tta == [None] and not torch.allclose(plain_views.probs, as_run.probs)
    # without TTA the same weights score differently: the report really used the flip
    plain = train(make_cfg("model=simplecnn", "model.channels=[8,16]", "model.convs=2", "model.whiten=2",
                           "trainer.max_epochs=1"), tmp_path / "plain")  # fmt: skip
    assert not math.isclose(plain["test_loss"], summary["test_loss"], rel_tol=1e-6)


def test_unknown_tta_is_one_clear_error(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="Unknown tta 'mirror'; choose one of: null, flip"):
        train(make_cfg("trainer.tta=mirror"), tmp_path / "r")
