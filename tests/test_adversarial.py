"""Adversarial examples, adversarial training and cnnlab evaluate attack=..."""

import json

import pytest
import torch
from torch import nn

from cnnlab.engine.adversarial import Adversary, robust_accuracy
from cnnlab.errors import ConfigError
from cnnlab.run.load import load_run
from cnnlab.train import train
from tests.conftest import run_cli

FAST = ("model=lenet", "trainer.precision=32", "trainer.threads=1", "trainer.report=false",
        "trainer.limit_train_batches=4")  # fmt: skip
MEAN, STD = torch.tensor([0.5]).view(1, 1, 1, 1), torch.tensor([0.25]).view(1, 1, 1, 1)


def linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_examples_stay_in_the_budget_and_in_the_image_range(method):
    x = (torch.rand(8, 1, 4, 4) - MEAN) / STD
    y = torch.arange(8) % 3
    adversary = Adversary(method, 0.05, MEAN, STD, steps=5)
    adv = adversary.attack(linear_model(), x, y, precision="32", generator=torch.Generator().manual_seed(0))
    pixels, adv_pixels = x * STD + MEAN, adv * STD + MEAN
    assert (adv_pixels - pixels).abs().max() <= 0.05 + 1e-6
    assert adv_pixels.min() >= -1e-6 and adv_pixels.max() <= 1 + 1e-6
    assert (adv_pixels - pixels).abs().max() > 0.04  # the budget is used


def test_fgsm_on_a_linear_model_moves_each_pixel_against_the_true_class():
    model = linear_model()
    x, y = torch.full((1, 1, 4, 4), 0.0), torch.tensor([1])  # mid-grey: no pixel is clipped
    adv = Adversary("fgsm", 0.1, MEAN, STD).attack(model, x, y, precision="32")
    with torch.no_grad():
        p = model(x).softmax(1)[0]
        weight = model[1].weight
        gradient = p @ weight - weight[1]  # d(-log p_y)/dx of a linear model: sum_k p_k w_k - w_y
    assert torch.allclose((adv - x).flatten() * STD.flatten(), 0.1 * gradient.sign())


def test_bad_options_are_one_line_errors(make_cfg):
    with pytest.raises(ConfigError, match="choose one of: none, fgsm, pgd"):
        Adversary("fgms", 0.1, MEAN, STD)
    from cnnlab.build import check

    for option, message in (("eps=0", "pixel units"), ("eps=2", "pixel units"), ("steps=0", "at least 1"),
                            ("fraction=0", "share of a batch"), ("step_size=-1", "step_size")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            check(make_cfg("augmentation.adversarial.method=pgd", f"augmentation.adversarial.{option}"))


def test_adversarial_training_changes_the_weights_and_repeats_exactly(make_cfg, tmp_path):
    """Same seed: plain and adversarial runs differ; two adversarial runs are identical (the PGD start
    comes from the pipeline's seeded generator)."""
    weights = {}
    for name, extra in (("plain", ()), ("adv1", ("augmentation.adversarial.method=pgd",)),
                        ("adv2", ("augmentation.adversarial.method=pgd",))):  # fmt: skip
        train(make_cfg(*FAST, "trainer.max_epochs=1", *extra), tmp_path / name)
        weights[name] = load_run(tmp_path / name).model.state_dict()
    assert any(not torch.equal(weights["plain"][k], weights["adv1"][k]) for k in weights["plain"])
    assert all(torch.equal(weights["adv1"][k], weights["adv2"][k]) for k in weights["adv1"])


def test_robust_accuracy_is_below_clean_accuracy(make_cfg, tmp_path):
    train(make_cfg(*FAST, "trainer.max_epochs=2", "trainer.limit_train_batches=null"), tmp_path / "run")
    run = load_run(tmp_path / "run")
    from cnnlab.run.load import Predictor, labeled_test, run_data

    predictor = Predictor.of(run, torch.device("cpu"), tta=None, precision="32", batch_size=50)
    x, y = labeled_test(run_data(run.cfg, torch.device("cpu")), run.run_dir, "test")
    adversary = Adversary("pgd", 0.3, predictor.pipeline.mean, predictor.pipeline.std, steps=5)
    clean, robust = robust_accuracy(run.model, x, y, adversary, predictor.scorer)
    assert clean > 0.5 and robust < clean - 0.2


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_evaluate_attack_writes_robustness_json(make_cfg, tmp_path):
    train(make_cfg(*FAST, "trainer.max_epochs=1"), tmp_path / "run")
    proc = run_cli("evaluate", f"run={tmp_path / 'run'}", "attack=fgsm", "eps=[0.05,0.2]", "device=cpu",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    entries = json.loads((tmp_path / "run" / "report" / "robustness.json").read_text())["entries"]
    assert [(e["attack"], e["eps"], e["steps"]) for e in entries] == [("fgsm", 0.05, 1), ("fgsm", 0.2, 1)]
    assert (
        entries[0]["clean_acc"]
        == entries[1]["clean_acc"]
        >= entries[0]["robust_acc"]
        >= entries[1]["robust_acc"]
    )
    proc = run_cli("evaluate", f"run={tmp_path / 'run'}", "attack=pgd", "eps=0.05", "steps=2", cwd=tmp_path)
    entries = json.loads((tmp_path / "run" / "report" / "robustness.json").read_text())["entries"]
    assert len(entries) == 3 and entries[2]["steps"] == 2  # earlier entries kept
    from omegaconf import OmegaConf

    from cnnlab.commands.robust import robustness

    bad = {"attack": "cw", "eps": 0.1, "steps": 10, "step_size": None, "run": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match=r"Unknown attack 'cw'; choose one of: fgsm, pgd\."):
        robustness(OmegaConf.create(bad))
    with pytest.raises(ConfigError, match="a list of them"):
        robustness(OmegaConf.create({**bad, "attack": "pgd", "eps": "big"}))
