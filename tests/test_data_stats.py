"""cnnlab data stats: class counts per split, sizes, mean/std, warnings; and the imbalanced-copy script."""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.data.registry import build_data
from cnnlab.data.stats import dataset_stats, format_stats
from scripts.imbalance_idx import main as imbalance
from tests.conftest import make_images, run_cli, write_idx
from tests.test_data_folders import write


def test_stats_count_the_splits_training_sees(make_cfg):
    cfg = make_cfg("dataset.mean=auto", "dataset.std=auto")
    stats = dataset_stats(cfg.dataset)
    data = build_data(cfg.dataset, device=torch.device("cpu"), batch_size=8, eval_batch_size=8, seed=0)
    assert stats.counts["train"] == torch.bincount(data.train.y, minlength=10).tolist()
    assert sum(stats.counts["val"]) == len(data.val.y) and sum(stats.counts["test"]) == 100
    assert stats.shape == (1, 28, 28) and stats.mean == data.mean and stats.std == data.std
    lines = format_stats(stats)
    assert lines[0].endswith("10 classes, images 1x28x28 (uint8)") and not any("warning" in x for x in lines)


def test_imbalanced_copy_and_the_tiny_class_warning(tiny_idx, tmp_path):
    imbalance([str(tiny_idx), str(tmp_path / "imb"), "--classes", "0", "1", "2", "--keep", "0.1"])
    proc = run_cli("data", "stats", f"dataset.root={tmp_path / 'imb'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[2:12]}
    assert rows["T-shirt/top"][0] == "4" and rows["Dress"][0] == "36"  # 10% of 40 kept, 90% in train
    assert rows["T-shirt/top"][2] == "10"  # the test split is copied unchanged
    assert (
        "warning: 3 tiny class(es), under 20% of the largest class (36 training images): T-shirt/top (4)"
        in proc.stdout
    )
    assert "consider dataset.sampler=balanced" in proc.stdout


def test_a_class_without_training_images_is_named(make_cfg, tiny_idx):
    _, y = make_images(400, 0)
    write_idx(tiny_idx / "train-labels-idx1-ubyte", np.where(y == 9, 8, y))
    lines = format_stats(dataset_stats(make_cfg("dataset=mnist", f"dataset.root={tiny_idx}").dataset))
    assert "warning: no training images for class 9; the model cannot learn it." in lines


def test_stats_of_image_files_report_their_sizes(make_cfg, tmp_path):
    for i, shape in enumerate([(10, 12), (10, 12), (20, 16)]):
        write(tmp_path / "d" / "train" / ("a" if i else "b") / f"{i}.png", seed=i, shape=shape)
    write(tmp_path / "d" / "test" / "x.png", shape=(10, 12))
    places = (f"dataset.root={tmp_path / 'd'}", f"dataset.cache_dir={tmp_path / 'cache'}")
    cfg = make_cfg("dataset=imagefolder", *places, "dataset.image_size=8", "dataset.num_workers=0",
                   "dataset.val_split=0.5")  # fmt: skip
    lines = format_stats(dataset_stats(cfg.dataset))
    assert "image files: 4, most common sizes 12x10 (3), 16x20 (1); widths 12-16, heights 10-20 px" in lines
    assert "test: 1 unlabeled images" in lines and lines[0].endswith("2 classes, images 3x8x8 (uint8)")
