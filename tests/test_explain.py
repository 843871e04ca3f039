"""Grad-CAM and saliency: maps where the evidence is known, the default layer of any model, hooks left
behind, and the viz commands with their one-line errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hydra import compose
from PIL import Image
from torch import nn

from cnnlab.commands import viz
from cnnlab.report import attribution
from cnnlab.report.figures import DPI
from cnnlab.report.layers import model_input
from cnnlab.run.load import load_run
from tests.conftest import make_images, run_cli, write_tiny_idx
from tests.test_viz import hydra_config

CPU = torch.device("cpu")


def train_tiny(tmp, *overrides: str):
    """A LeNet on the tiny data (class k lights a 6x5 patch at a place of its own), fp32, 1 thread."""
    from cnnlab.train import train

    data = write_tiny_idx(tmp / "data")
    with hydra_config():
        cfg = compose("train", overrides=[
            f"dataset.root={data}", "trainer.device=cpu", "trainer.tensorboard=false", "model=lenet",
            "trainer.batch_size=32", "trainer.max_epochs=2", "trainer.progress=plain",
            "trainer.evaluate=false", "trainer.precision=32", "trainer.threads=1", *overrides,
        ])  # fmt: skip
        train(cfg, tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("explain"))


def patch_box(k: int) -> tuple[int, int]:
    """Top-left corner of class k's bright 6x5 patch (tests/conftest.py make_images)."""
    return 2 + (k // 5) * 12, 2 + (k % 5) * 5


def test_gradcam_of_the_tiny_run_peaks_on_the_class_patch(tiny_run):
    run = load_run(tiny_run)
    x, y = make_images(100, 1)  # the tiny test split
    inputs = model_input(run, torch.as_tensor(x)[:, None], CPU)
    layer = attribution.choose_layer(run.model, inputs)
    cams, _ = attribution.gradcam(run.model, inputs, layer, torch.as_tensor(y).long())
    assert layer == "features.3" and cams.shape == (100, 28, 28)
    assert float(cams.min()) >= 0 and float(cams.amax((1, 2)).min()) == pytest.approx(1)
    hits = 0
    for cam, k in zip(cams, y, strict=True):
        r, c = patch_box(int(k))
        pr, pc = divmod(int(cam.flatten().argmax()), 28)
        hits += r - 2 <= pr < r + 8 and c - 2 <= pc < c + 7  # within 2 pixels of the 6x5 patch
    assert hits >= 80, hits  # 92 of 100 when written
    inside = sum(float(cam[r : r + 6, c : c + 5].sum() / cam.sum()) for cam, (r, c) in
                 zip(cams, map(patch_box, y.tolist()), strict=True)) / 100  # fmt: skip
    assert inside > 3 * 30 / 784  # the patch holds far more of the map than its share of the image


@pytest.mark.parametrize(("row", "col"), [(6, 8), (13, 9), (10, 16), (20, 18), (8, 20)])
def test_gradcam_places_each_cell_on_its_receptive_field(row, col):
    """LeNet's shape (padded conv, 2x2 pool, unpadded 5x5 conv: 28 -> 14 -> 10) with identity kernels:
    the map must peak on the one lit pixel and fall away from it. A plain resize of the 10 cells onto 28
    pixels puts the peak up to 4 pixels off."""
    delta3, delta5 = nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.Conv2d(1, 1, 5, bias=False)
    with torch.no_grad():
        for conv in (delta3, delta5):
            conv.weight.zero_()
            conv.weight[0, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1
    model = nn.Sequential(delta3, nn.MaxPool2d(2), delta5, nn.Flatten(), nn.Linear(100, 2))
    nn.init.constant_(model[4].weight, 1.0)
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, row, col] = 1
    cam, _ = attribution.gradcam(model, x, attribution.choose_layer(model, x), torch.tensor([0]))
    # a pooled cell covers two pixels and is centred between them: 0.75 on each side of its centre
    assert (
        float(cam[0, row, col]) >= 0.75 and float(cam[0, row - 1 : row + 2, col - 1 : col + 2].max()) > 0.99
    )
    far = torch.ones(28, 28, dtype=torch.bool)
    far[max(row - 4, 0) : row + 5, max(col - 4, 0) : col + 5] = False
    assert float(cam[0][far].max()) < 0.5


def test_saliency_of_a_linear_model_is_its_weights_with_or_without_smoothgrad():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(2, 2, 4, 4)
    weights = model[1].weight.detach().view(3, 2, 4, 4)
    targets = torch.tensor([2, 0])
    expected = torch.stack([weights[t].abs().amax(0) for t in targets])
    expected = expected / expected.amax((1, 2), keepdim=True)
    plain, p = attribution.saliency(model, x, targets=targets)
    smooth, _ = attribution.saliency(model, x, targets=targets, samples=5, noise=0.5)
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(smooth, expected)  # a linear model's gradient does not depend on the input
    assert p.shape == (2, 3) and all(param.grad is None for param in model.parameters())


def test_smoothgrad_changes_the_map_of_a_network_and_is_seeded(tiny_run):
    run = load_run(tiny_run)
    inputs = model_input(run, torch.as_tensor(make_images(4, 1)[0])[:, None], CPU)
    plain, _ = attribution.saliency(run.model, inputs)
    smooth, _ = attribution.saliency(run.model, inputs, samples=8, seed=3)
    again, _ = attribution.saliency(run.model, inputs, samples=8, seed=3)
    assert not torch.allclose(plain, smooth, atol=1e-3)
    torch.testing.assert_close(smooth, again)


@pytest.mark.parametrize(("size", "layer"), [(32, "layer3.1.conv2"), (64, "layer4.1.conv2")])
def test_default_layer_of_torchvision_resnet_is_the_last_spatial_conv(size, layer):
    """At 32 pixels torchvision's ResNet-18 ends layer4 at 1x1: Grad-CAM must look one stage earlier."""
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    assert attribution.choose_layer(model, x) == layer
    cams, p = attribution.gradcam(model, x, layer)
    assert cams.shape == (2, size, size) and p.shape == (2, 10)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    with pytest.raises(Exception, match="outputs 1x1 maps"):
        attribution.choose_layer(model, torch.randn(1, 3, 32, 32), "layer4")


def test_gradcam_of_an_in_place_relu_network_uses_the_conv_output():
    """ReLU(inplace=True) after the explained conv must not change the activation Grad-CAM weighs."""
    conv = nn.Conv2d(1, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(2 * 8 * 8, 2))
    x = torch.randn(3, 1, 8, 8)
    cams, _ = attribution.gradcam(model, x, "0", torch.tensor([0, 1, 0]))
    act = conv(x).detach()
    w = model[3].weight.detach().view(2, 2, 8, 8)
    mask = act > 0  # the gradient reaching the conv output passes the ReLU only where it is positive
    expected = []
    for i, t in enumerate([0, 1, 0]):
        alpha = (w[t] * mask[i]).mean((1, 2))
        expected.append(torch.relu((alpha.view(2, 1, 1) * act[i]).sum(0)))
    expected = torch.stack(expected)
    torch.testing.assert_close(cams, expected / expected.amax((1, 2), keepdim=True))


def draw(*overrides: str):
    with hydra_config():
        cfg = compose("viz", overrides=["device=cpu", "tensorboard=false", *overrides])
    return viz.main(cfg)


def test_viz_gradcam_and_saliency_write_their_figures(tiny_run):
    path = draw("what=gradcam", f"run={tiny_run}", "count=4")
    assert path == tiny_run / "report" / "gradcam.png"
    # 4 image/overlay pairs in one row of 1.8-inch panels; 2 title lines of 0.2 in; 0.5 in for the title
    assert Image.open(path).size == (8 * 1.8 * DPI, round((1.8 + 0.4 + 0.5) * DPI))
    path = draw("what=saliency", f"run={tiny_run}", "image=[0,5,7]", "smoothgrad=4")
    assert path.name == "saliency.png" and Image.open(path).size[0] == 6 * 1.8 * DPI
    path = draw("what=gradcam", f"run={tiny_run}", "only=wrong", "layer=features.0")
    assert path is None or path.name == "gradcam_wrong.png"  # the tiny run may make no mistake


def test_viz_embeddings_augment_embeds_both_views(tmp_path):
    run = train_tiny(tmp_path, "augmentation=basic", "trainer.max_epochs=1")
    path = draw("what=embeddings", f"run={run}", "augment=true", "n=30", "perplexity=5")
    assert path == run / "report" / "embeddings_augment.png"
    assert Image.open(path).size == (1100, 800)
    assert not (run / "report" / "embeddings.png").exists()  # augment=true writes a figure of its own


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gradcam", "run={run}", "layer=features.9"], "Unknown layer 'features.9'"),
        (["gradcam", "run={run}", "layer=classifier.0"], "choose one of: features.0, features.1"),
        (["gradcam", "run={run}", "image=[1,100]"], "image=100 is outside the test split (0 to 99)"),
        (["saliency", "run={run}", "image=missing.png"], "neither an index into the test split"),
        (["saliency", "run={run}", "smoothgrad=-1"], "smoothgrad must be 0"),
        (["saliency", "run={run}", "noise=0"], "noise above 0"),
        (["gradcam", "run={run}", "only=some"], "choose one of: all, wrong"),
        (["feature_maps", "run={run}", "image=[1,2]"], "draws one image"),
    ],
)
def test_explain_user_errors_are_one_line(tiny_run, tmp_path, args, message):
    result = run_cli("viz", *[a.format(run=tiny_run) for a in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_embeddings_augment_of_a_run_without_augmentation_is_a_one_line_error(tiny_run, tmp_path):
    result = run_cli("viz", "embeddings", f"run={tiny_run}", "augment=true", "n=20", cwd=tmp_path)
    assert result.returncode == 2
    assert "trained without image augmentation (augmentation 'none')" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
