"""cnnlab compress: pruning, int8 quantisation and distillation, each a run folder of its own."""

import csv

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnlab.config import CompressConfig
from cnnlab.engine.prune import copy_channels, magnitude_masks, sparsity
from cnnlab.errors import ConfigError
from cnnlab.models.lenet import LeNet
from cnnlab.run.load import load_run
from cnnlab.train import train
from tests.conftest import run_cli

FAST = ("model=lenet", "trainer.precision=32", "trainer.threads=1", "trainer.report=false",
        "trainer.max_epochs=2")  # fmt: skip


@pytest.fixture
def teacher(make_cfg, tmp_path):
    train(make_cfg(*FAST), tmp_path / "teacher")
    return tmp_path / "teacher"


def options(run, **kwargs):
    cfg = OmegaConf.structured(CompressConfig)
    cfg.run, cfg.repeats = str(run), 3
    for key, value in kwargs.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_global_magnitude_masks_prune_the_stated_share():
    torch.manual_seed(0)
    model = LeNet(in_channels=1, num_classes=10, image_size=28)
    magnitude_masks(model, 0.7)
    assert sparsity(model) == pytest.approx(0.7, abs=1e-4)
    assert not hasattr(model.features[0], "weight_orig")  # plain parameters again


def test_copy_channels_drops_a_dead_filter_without_changing_outputs():
    torch.manual_seed(0)
    wide = LeNet(in_channels=1, num_classes=10, image_size=28, channels=[6, 16]).eval()
    with torch.no_grad():
        wide.features[0].weight[2] = 0
        wide.features[0].bias[2] = 0  # filter 2 outputs zeros: ReLU and pooling keep them zero
    narrow = LeNet(in_channels=1, num_classes=10, image_size=28, channels=[5, 16]).eval()
    copy_channels(wide, narrow, [torch.tensor([0, 1, 3, 4, 5]), torch.arange(16)])
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(narrow(x), wide(x))


def test_prune_writes_a_run_whose_weights_are_sparse(teacher):
    from cnnlab.commands.compress import compress

    rows = compress(options(teacher, method="prune", amount=0.6, finetune_epochs=1))
    made = teacher.parent / "teacher-prune"
    assert sparsity(load_run(made).model) == pytest.approx(0.6, abs=1e-3)  # zeros kept through fine-tuning
    assert rows[1]["nonzero"] < 0.5 * rows[0]["nonzero"] and rows[1]["gzip_kb"] < rows[0]["gzip_kb"]
    with (made / "compression.csv").open() as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["original", "prune"]
    assert (made / "summary.json").is_file() and (made / ".hydra" / "config.yaml").is_file()


def test_structured_pruning_narrows_the_model(teacher):
    from cnnlab.commands.compress import compress

    compress(options(teacher, method="prune", amount=0.5, structured=True, finetune_epochs=0))
    made = load_run(teacher.parent / "teacher-prune")
    assert list(made.cfg.model.channels) == [3, 8]
    assert made.model.features[0].weight.shape[0] == 3


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_quantize_agrees_with_the_float_model_and_predict_runs_it(teacher, tmp_path):
    pytest.importorskip("torchao")
    from cnnlab.commands.compress import compress

    rows = compress(options(teacher, method="quantize", calibration=64))
    assert (
        abs(rows[1]["accuracy"] - rows[0]["accuracy"]) < 0.05
        and rows[1]["file_kb"] < 0.5 * rows[0]["file_kb"]
    )
    made = teacher.parent / "teacher-quantize"
    proc = run_cli("predict", f"run={made}", f"out={tmp_path / 'q.csv'}", "device=cpu", cwd=tmp_path)
    assert proc.returncode == 0 and "accuracy" in proc.stdout, proc.stderr
    from cnnlab.run.load import Predictor, run_data

    float_run = load_run(teacher)
    images = run_data(float_run.cfg, torch.device("cpu")).test.x  # the 100 test images
    expected = Predictor.of(float_run, torch.device("cpu")).probs(images).argmax(1)
    with (tmp_path / "q.csv").open() as f:
        int8 = torch.tensor([int(r["Label"]) for r in csv.DictReader(f)])
    assert (int8 == expected).float().mean() >= 0.95


def test_distillation_changes_the_student_and_alpha_0_is_plain_training(teacher, make_cfg, tmp_path):
    from cnnlab.commands.compress import compress

    student = {"model": "mlp", "options": {"hidden": [32]}}
    compress(options(teacher, method="distill", student=student, alpha=0.0, out=str(tmp_path / "ce")))
    compress(options(teacher, method="distill", student=student, alpha=0.9, out=str(tmp_path / "kd")))
    train(make_cfg(*FAST, "model=mlp", "model.hidden=[32]"), tmp_path / "plain")
    plain, ce, kd = (load_run(tmp_path / n).model.state_dict() for n in ("plain", "ce", "kd"))
    assert all(torch.equal(plain[k], ce[k]) for k in plain)  # the loss is the plain cross-entropy
    assert any(not torch.equal(plain[k], kd[k]) for k in plain)


BAD = [
    ({"method": "zip"}, "choose one of: prune, quantize, distill"),
    ({"method": "prune", "amount": 1}, "in (0, 1)"),
    ({"method": "distill", "alpha": 2}, "alpha in"),
    ({"method": "distill", "student": {"model": "vgg"}}, "Unknown student.model 'vgg'"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_bad_options_are_one_line_errors(teacher, kwargs, message):
    from cnnlab.commands.compress import compress

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compress(options(teacher, **kwargs))


def test_structured_pruning_refuses_models_it_cannot_narrow(make_cfg, tmp_path):
    train(
        make_cfg(*FAST, "model=mlp", "trainer.max_epochs=1", "trainer.limit_train_batches=2"),
        tmp_path / "mlp",
    )
    proc = run_cli("compress", f"run={tmp_path / 'mlp'}", "method=prune", "structured=true", cwd=tmp_path)
    assert (
        proc.returncode == 2
        and "narrows lenet and simplecnn" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_quantized_model_class_is_in_the_model_registry():
    from cnnlab.models.registry import own_models

    assert own_models()["quantized"] == "cnnlab.models.quantized.QuantizedModel"
    assert nn.Module in type.mro(__import__("cnnlab.models.quantized", fromlist=["x"]).QuantizedModel)


def test_a_failing_compile_is_a_one_line_error(monkeypatch):
    from cnnlab.commands.compress import measure

    def broken(model):
        def run(x):
            raise RuntimeError("ImportError: main.so: file too short\nmore lines")

        return run

    monkeypatch.setattr(measure.torch, "compile", broken)
    model = LeNet(in_channels=1, num_classes=10, image_size=28).eval()
    with pytest.raises(ConfigError, match=r"torch.compile failed \(ImportError: main.so: file too short\)"):
        measure.latencies([model], torch.zeros(1, 1, 28, 28), repeats=1, compile=True)
    assert len(measure.latencies([model], torch.zeros(1, 1, 28, 28), repeats=1, compile=False)) == 1
