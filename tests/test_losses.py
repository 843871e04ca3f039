"""The loss group: cross-entropy and focal, label smoothing, class weights, the deprecated trainer key,
and the class-balanced validation metrics."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cnnlab.engine.losses import FocalLoss, build_loss, check_loss, class_weights, loss_node, mixed_loss
from cnnlab.engine.metrics import MONITORS, add_confusion, class_balanced
from cnnlab.errors import ConfigError
from tests.conftest import run_cli


def node(name: str = "cross_entropy", **options):
    base = {"name": name, "label_smoothing": 0.0, "class_weights": None}
    return OmegaConf.create({**base, **({"gamma": 2.0} if name == "focal" else {}), **options})


def batch(n: int = 64, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3, torch.randint(0, k, (n,), generator=g)


LABELS = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)  # an imbalanced training split


def test_default_is_torchs_cross_entropy():
    logits, y = batch()
    loss = build_loss(node(), train_labels=LABELS, num_classes=5)
    assert torch.equal(loss(logits, y), F.cross_entropy(logits, y))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 3.0, 1.0]])
def test_focal_with_gamma_0_is_cross_entropy(smoothing, weights):
    logits, y = batch()
    w = None if weights is None else torch.tensor(weights)
    focal = FocalLoss(0.0, weight=w, label_smoothing=smoothing)
    expected = F.cross_entropy(logits, y, weight=w, label_smoothing=smoothing)
    assert focal(logits, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_down_weights_easy_examples():
    logits, y = batch()
    per_ce = F.cross_entropy(logits, y, reduction="none")
    p_true = torch.exp(-per_ce)
    by_hand = ((1 - p_true) ** 2 * per_ce).mean()
    assert FocalLoss(2.0)(logits, y).item() == pytest.approx(by_hand.item(), rel=1e-5)
    easy, hard, y0 = torch.tensor([[10.0, 0, 0]]), torch.tensor([[0.0, 3, 0]]), torch.tensor([0])
    assert FocalLoss(2.0)(easy, y0) < 1e-6 * F.cross_entropy(easy, y0)  # confident and right: ~nothing
    assert FocalLoss(2.0)(hard, y0) > 0.8 * F.cross_entropy(hard, y0)  # wrong: almost all of it


def test_focal_gradient_stays_finite_for_certain_examples():
    logits = torch.tensor([[40.0, 0.0, 0.0]], requires_grad=True)  # p = 1 in float32
    FocalLoss(0.5)(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all()


def test_label_smoothing_changes_the_loss_only():
    logits, y = batch()
    smooth = build_loss(node(label_smoothing=0.2), train_labels=LABELS, num_classes=5)
    assert smooth(logits, y).item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.2).item())
    assert smooth(logits, y) != F.cross_entropy(logits, y)


def test_auto_class_weights_are_inverse_frequency():
    w = class_weights("auto", LABELS, 3)
    assert torch.allclose(w, torch.tensor([100 / (3 * 80), 100 / (3 * 15), 100 / (3 * 5)]))
    balanced = torch.arange(30) % 3
    assert torch.allclose(class_weights("auto", balanced, 3), torch.ones(3))  # balanced: no change
    loss = build_loss(node(class_weights="auto"), train_labels=LABELS, num_classes=3)
    logits, y = batch(k=3)
    assert loss(logits, y).item() == pytest.approx(F.cross_entropy(logits, y, weight=w).item(), rel=1e-6)


def test_listed_class_weights_and_focal():
    loss = build_loss(node("focal", gamma=1.0, class_weights=[1, 2, 3]), train_labels=LABELS, num_classes=3)
    assert isinstance(loss, FocalLoss) and loss.gamma == 1.0
    assert torch.equal(loss.weight, torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize(("options", "message"), [
    ({"name": "focl"}, "Unknown loss 'focl'; choose one of: cross_entropy, focal."),
    ({"label_smoothing": 1.0}, "loss.label_smoothing must be in [0, 1), got 1.0."),
    ({"class_weights": "balanced"}, "loss.class_weights must be null, auto or a list of one weight >= 0 per "
                                    "class, got balanced."),
    ({"class_weights": [1, -1, 2]}, "loss.class_weights must be null, auto or a list"),
    ({"class_weights": [0, 0, 0]}, "loss.class_weights must be null, auto or a list"),
])  # fmt: skip
def test_bad_values(options, message):
    with pytest.raises(ConfigError) as err:
        check_loss(node(**options))
    assert str(err.value).startswith(message)


def test_bad_gamma_and_weights_that_need_the_data():
    with pytest.raises(ConfigError, match=r"loss\.gamma must be 0 or more, got -1\.0"):
        check_loss(node("focal", gamma=-1.0))
    with pytest.raises(ConfigError, match="has 2 weights for 3 classes"):
        build_loss(node(class_weights=[1, 2]), train_labels=LABELS, num_classes=3)
    with pytest.raises(ConfigError, match=r"class\(es\) 3 have no training images"):
        build_loss(node(class_weights="auto"), train_labels=LABELS, num_classes=4)


def test_mixup_combines_two_weighted_criterion_calls():
    logits, y_a = batch(k=3)
    y_b = y_a.roll(1)
    loss = build_loss(node("focal", class_weights="auto"), train_labels=LABELS, num_classes=3)
    mixed = mixed_loss(loss, logits, y_a, y_b, 0.7)
    assert mixed.item() == pytest.approx((0.7 * loss(logits, y_a) + 0.3 * loss(logits, y_b)).item())
    assert mixed_loss(loss, logits, y_a, y_b, 1.0) == loss(logits, y_a)


def test_trainer_label_smoothing_moves_into_the_loss_with_a_warning(make_cfg, caplog):
    cfg = make_cfg("trainer.label_smoothing=0.1")
    with caplog.at_level(logging.WARNING):
        assert loss_node(cfg, warn=True).label_smoothing == 0.1
    assert "trainer.label_smoothing is deprecated; use loss.label_smoothing=0.1" in caplog.text
    assert loss_node(make_cfg("loss.label_smoothing=0.2")).label_smoothing == 0.2
    assert (
        loss_node(make_cfg("trainer.label_smoothing=0.1", "loss.label_smoothing=0.1")).label_smoothing == 0.1
    )
    with pytest.raises(ConfigError, match=r"disagree; set only loss\.label_smoothing"):
        loss_node(make_cfg("trainer.label_smoothing=0.1", "loss.label_smoothing=0.2"))


def test_configs_saved_before_the_loss_group_mean_cross_entropy(make_cfg):
    cfg = OmegaConf.to_container(make_cfg("loss=focal"))
    del cfg["loss"]
    cfg["trainer"]["label_smoothing"] = 0.05
    loss = loss_node(OmegaConf.create(cfg))
    assert (loss.name, loss.label_smoothing, loss.class_weights) == ("cross_entropy", 0.05, None)


def test_loss_group_composes_and_unknown_names_list_the_choices(make_cfg, tmp_path):
    cfg = make_cfg("loss=focal", "loss.gamma=1.5", "loss.class_weights=auto")
    assert (cfg.loss.name, cfg.loss.gamma, cfg.loss.class_weights) == ("focal", 1.5, "auto")
    assert make_cfg("loss.class_weights=[1,2,3]").loss.class_weights == [1, 2, 3]
    proc = run_cli("train", "loss=focl", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Unknown loss 'focl'; choose one of: cross_entropy, focal." in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_balanced_metrics_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    g = torch.Generator().manual_seed(1)
    y = torch.cat([torch.zeros(50, dtype=torch.long), torch.randint(1, 4, (30,), generator=g)])
    pred = torch.where(torch.rand(80, generator=g) < 0.6, y, torch.randint(0, 5, (80,), generator=g))
    confusion = torch.zeros(5, 5, dtype=torch.long)
    for chunk in range(0, 80, 32):  # batch by batch, as evaluate adds them
        add_confusion(confusion, pred[chunk : chunk + 32], y[chunk : chunk + 32])
    got = class_balanced(confusion)
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert got["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert MONITORS["val_macro_f1"] == MONITORS["val_balanced_acc"] == "max"


def test_class_balanced_metrics_see_a_neglected_minority():
    y = torch.tensor([0] * 90 + [1] * 10)
    always_0 = torch.zeros(100, dtype=torch.long)
    confusion = torch.zeros(2, 2, dtype=torch.long)
    add_confusion(confusion, always_0, y)
    got = class_balanced(confusion)
    assert got["balanced_acc"] == pytest.approx(0.5)  # accuracy would say 0.9
    assert got["macro_f1"] == pytest.approx((2 * 0.9 / 1.9) / 2)
