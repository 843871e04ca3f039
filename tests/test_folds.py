"""k-fold cross-validation: folds, their use in training, their summary in cnnlab runs."""

import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.data.folds import check_folds, fold_of
from cnnlab.errors import ConfigError
from cnnlab.report.folds import describe, fold_groups
from cnnlab.train import train
from tests.conftest import run_cli

FAST = ("trainer.max_epochs=1", "trainer.precision=32", "trainer.threads=1", "trainer.evaluate=false")


def test_folds_are_disjoint_cover_the_pool_and_are_stratified():
    labels = torch.arange(103) % 4  # classes of 26, 26, 26, 25
    folds = fold_of(labels, 5, seed=3, stratified=True)
    assert sorted(folds.unique().tolist()) == [0, 1, 2, 3, 4]  # every sample in exactly one fold
    sizes = torch.bincount(folds)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 103
    for c in range(4):  # each class spread evenly: at most one more in a fold than in another
        per_fold = torch.bincount(folds[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    assert torch.equal(folds, fold_of(labels, 5, seed=3, stratified=True))  # seeded
    assert not torch.equal(folds, fold_of(labels, 5, seed=4, stratified=True))
    plain = fold_of(labels, 5, seed=3, stratified=False)
    assert torch.bincount(plain).max() - torch.bincount(plain).min() <= 1


@pytest.mark.parametrize(
    ("folds", "fold", "message"),
    [(1, 0, "at least 2"), (5, 5, "0 to 4"), (5, -1, "0 to 4"), (None, 2, "needs dataset.folds")],
)
def test_bad_fold_options_are_one_line_errors(folds, fold, message):
    with pytest.raises(ConfigError, match=message):
        check_folds(OmegaConf.create({"folds": folds, "fold": fold}))


def test_a_fold_run_validates_on_its_fold_only(make_cfg, tmp_path):
    """The tiny data has 400 training images: fold 1 of 4 validates on 100 and trains on 300, and the
    folds of two runs never share a validation image."""
    seen = []
    for fold in (0, 1):
        cfg = make_cfg(*FAST, "dataset.folds=4", f"dataset.fold={fold}")
        run = tmp_path / f"fold{fold}"
        train(cfg, run)
        lines = (run / "train.log").read_text()
        assert "train 300, val 100" in lines
        seen.append(lines)
    from cnnlab.data.registry import build_data

    cfg = make_cfg("dataset.folds=4", "dataset.fold=0")
    val0 = build_data(
        cfg.dataset, device=torch.device("cpu"), batch_size=32, eval_batch_size=100, seed=0
    ).val.x
    cfg = make_cfg("dataset.folds=4", "dataset.fold=1")
    val1 = build_data(
        cfg.dataset, device=torch.device("cpu"), batch_size=32, eval_batch_size=100, seed=0
    ).val.x
    flat0, flat1 = {bytes(x.numpy()) for x in val0}, {bytes(x.numpy()) for x in val1}
    assert not flat0 & flat1


def test_runs_reports_mean_and_std_over_folds():
    rows = [
        {"status": "ok", "run": str(k), "overrides": ["dataset.folds=3", f"dataset.fold={k}"],
         "best_val_acc": acc, "test_acc": acc - 0.1}
        for k, acc in enumerate((0.8, 0.9, 0.7))
    ]  # fmt: skip
    rows.append({"status": "ok", "run": "x", "overrides": ["seed=1"], "best_val_acc": 0.1, "test_acc": 0.1})
    (group,) = fold_groups(rows)
    assert group["folds"] == 3 and group["overrides"] == ["dataset.folds=3"]
    assert group["best_val_acc"] == pytest.approx((0.8, 0.1))  # sample std of 0.7, 0.8, 0.9
    assert "3 folds (dataset.folds=3): val acc 0.8000 ± 0.1000, test acc 0.7000 ± 0.1000" in describe(group)


@pytest.mark.slow  # over 4 s on 2 cores: CI runs it (CNNLAB_DATA set)
def test_fold_sweep_through_the_cli(tiny_idx, tmp_path):
    sweep = tmp_path / "sweep"
    base = (
        f"dataset.root={tiny_idx}",
        "trainer.device=cpu",
        "trainer.tensorboard=false",
        "trainer.report=false",
    )
    proc = run_cli("train", "-m", *base, *FAST[:3], "dataset.folds=2", "dataset.fold=0,1",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("runs", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0 and "2 folds (dataset.folds=2" in proc.stdout
    proc = run_cli("train", f"dataset.root={tiny_idx}", "dataset.folds=3", "dataset.fold=3", cwd=tmp_path)
    assert (
        proc.returncode == 2
        and "dataset.fold must be 0 to 2" in proc.stderr
        and "Traceback" not in proc.stderr
    )
