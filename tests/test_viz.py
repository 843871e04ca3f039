"""cnnlab viz: every picture from a tiny LeNet run, at its known pixel size; kernels and hooks by hand."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from cnnlab.commands import viz
from cnnlab.config import register_configs
from cnnlab.report import layers
from cnnlab.report.figures import DPI
from cnnlab.run.load import load_run
from tests.conftest import run_cli, write_tiny_idx


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """``trained_run``'s run (2-epoch LeNet on the tiny 28x28 IDX data), trained once for the module."""
    from cnnlab.train import train

    tmp = tmp_path_factory.mktemp("viz")
    data = write_tiny_idx(tmp / "data")
    with hydra_config():
        cfg = compose("train", overrides=[
            f"dataset.root={data}", "trainer.device=cpu", "trainer.tensorboard=false", "model=lenet",
            "trainer.batch_size=32", "trainer.max_epochs=2", "trainer.progress=plain",
            "trainer.evaluate=false",
        ])  # fmt: skip
        train(cfg, tmp / "run")
    return tmp / "run"


class hydra_config:
    def __enter__(self):
        register_configs()
        GlobalHydra.instance().clear()
        initialize_config_module("cnnlab.conf", version_base="1.3")

    def __exit__(self, *exc):
        GlobalHydra.instance().clear()


def draw(*overrides: str):
    with hydra_config():
        cfg = compose("viz", overrides=["device=cpu", "tensorboard=false", *overrides])
    return viz.main(cfg)


def png_size(path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    return Image.open(path).size


@pytest.mark.parametrize(
    ("what", "size"),
    [
        ("curves", (1500, 450)),
        ("filters", (1200, 550)),
        ("kernels", (1300, 850)),
        ("predictions", (1080, 1260)),  # 36 images, 6 columns of 1.8 in, 2.0 in per row + 0.6 title
        ("embeddings", (1100, 800)),
    ],
)
def test_viz_writes_a_png_of_known_size(lenet_run, what, size):
    path = draw(f"what={what}", f"run={lenet_run}", "n=60")
    assert path == lenet_run / "report" / f"{what}.png"
    assert png_size(path) == size


def test_feature_maps_show_every_channel_of_every_conv_stage(lenet_run):
    run = load_run(lenet_run)
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    stages, probs = layers.capture_feature_maps(run, image, torch.device("cpu"))
    assert [(name, kind, len(maps)) for name, kind, maps in stages] == [
        ("features.0", "Conv2d", 6), ("features.1", "ReLU", 6), ("features.2", "MaxPool2d", 6),
        ("features.3", "Conv2d", 16), ("features.4", "ReLU", 16), ("features.5", "MaxPool2d", 16),
    ]  # fmt: skip
    assert [tuple(maps.shape[1:]) for _, _, maps in stages] == [(28, 28)] * 2 + [
        (14, 14),
        (10, 10),
        (10, 10),
        (5, 5),
    ]
    assert probs.shape == (10,)
    path = draw("what=feature_maps", f"run={lenet_run}", "image=3")
    rows = layers.feature_map_rows(stages)  # input + one mosaic row per stage (16 maps fit one row)
    height = (layers.MAP_ROW_IN * sum(rows) + layers.TITLE_IN) * DPI
    assert png_size(path) == (layers.FEATURE_WIDTH_IN * DPI, round(height))


def test_feature_maps_of_an_image_file(lenet_run, tmp_path):
    Image.fromarray((torch.rand(40, 30) * 255).to(torch.uint8).numpy()).save(tmp_path / "x.png")
    path = draw("what=feature_maps", f"run={lenet_run}", f"image={tmp_path / 'x.png'}")
    assert path.is_file()


def test_sobel_matches_a_hand_convolution():
    image = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 2, 2], [3, 3, 3, 3]], dtype=torch.float32)
    kernel = torch.tensor(layers.KERNELS["Sobel x"][0], dtype=torch.float32)
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))
    hand = torch.zeros_like(image)
    for i in range(4):
        for j in range(4):
            hand[i, j] = sum(kernel[a, b] * padded[i + a, j + b] for a in range(3) for b in range(3))
    assert torch.equal(layers.apply_kernel(image, kernel), hand)
    assert hand[0, 1] == 3  # 2*1 + 1*1 on the right, nothing on the left: a rising vertical edge


def test_kernels_with_a_custom_kernel_and_a_bad_one(lenet_run):
    path = draw("what=kernels", f"run={lenet_run}", "kernels.custom=[[0,1,0],[1,-4,1],[0,1,0]]")
    assert png_size(path) == (1300, 850)
    with pytest.raises(Exception, match="3x3 or 5x5"):
        draw("what=kernels", f"run={lenet_run}", "kernels.custom=[[1,2],[3,4]]")


def test_filters_before_training_are_the_seeded_initialisation(make_cfg, tmp_path):
    """With a learning rate of 1e-12 the trained weights stay the initial ones: the rebuild must match."""
    from cnnlab.train import train

    train(make_cfg("optimizer.lr=1e-12", "trainer.max_epochs=1", "trainer.evaluate=false"), tmp_path / "run")
    run = load_run(tmp_path / "run")
    _, initial = layers.first_conv(layers.initial_model(run))
    _, trained = layers.first_conv(run.model)
    torch.testing.assert_close(initial.weight, trained.weight, atol=1e-6, rtol=0)


def fixed_predictions(monkeypatch, run_dir, wrong: int) -> None:
    """The run's Predictor made to get exactly ``wrong`` test images wrong (the first ones)."""
    from cnnlab.run.load import Predictor, labeled_test, run_data

    run = load_run(run_dir)
    _, y = labeled_test(run_data(run.cfg, torch.device("cpu")), run_dir, "test")
    predicted = y.cpu().clone()
    predicted[:wrong] = (predicted[:wrong] + 1) % len(run.classes)
    probs = torch.nn.functional.one_hot(predicted, len(run.classes)).float()
    monkeypatch.setattr(Predictor, "probs", lambda self, x: probs)


def test_predictions_only_wrong(lenet_run, monkeypatch):
    """The mistakes alone, six to a row (the tiny run itself may make none: they are fixed here)."""
    fixed_predictions(monkeypatch, lenet_run, wrong=8)
    path = draw("what=predictions", f"run={lenet_run}", "only=wrong", "count=12")
    assert path.name == "predictions_wrong.png"
    width, height = png_size(path)
    assert width == 6 * 1.8 * DPI
    fixed_predictions(monkeypatch, lenet_run, wrong=3)  # one row instead of two: a shorter figure
    assert png_size(draw("what=predictions", f"run={lenet_run}", "only=wrong", "count=12"))[1] < height


def test_predictions_only_wrong_without_mistakes_draws_nothing(lenet_run, monkeypatch):
    fixed_predictions(monkeypatch, lenet_run, wrong=0)
    (lenet_run / "report" / "predictions_wrong.png").unlink(missing_ok=True)
    assert draw("what=predictions", f"run={lenet_run}", "only=wrong", "count=12") is None
    assert not (lenet_run / "report" / "predictions_wrong.png").exists()


def test_augment_from_a_run_and_without_one(lenet_run, tmp_path):
    # two 4x4 grids of 1.6-inch cells, 0.25 in per row for titles, 1.3 in for the headings
    assert png_size(draw("what=augment", f"run={lenet_run}")) == (1320, 870)
    data = lenet_run.parent / "data"
    out = tmp_path / "aug.png"
    path = draw("what=augment", f"dataset.root={data}", "augmentation=strong", "count=8", f"out={out}")
    assert path == out and png_size(out)[0] > 0


def test_viz_writes_tensorboard_images(lenet_run):
    with hydra_config():
        cfg = compose("viz", overrides=["device=cpu", "what=curves", f"run={lenet_run}"])
    viz.main(cfg)
    assert any((lenet_run / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus", "run={run}"], "Unknown viz 'bogus'"),
        (["filters", "run=nowhere"], "does not exist"),
        (["filters"], "needs run="),
        (["predictions", "run={run}", "only=some"], "choose one of: all, wrong"),
        (["feature_maps", "run={run}", "image=100000"], "outside the test split"),
        (["augment", "run={run}", "augmentation=strong"], "the run's own dataset and augmentation"),
    ],
)
@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_viz_user_errors_are_one_line(lenet_run, tmp_path, args, message):
    result = run_cli("viz", *[a.format(run=lenet_run) for a in args], cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
