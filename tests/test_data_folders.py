"""Folder datasets: a generic class-folder tree and Food-11, including bad files and the cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.folders import read_food11, read_image_folder
from cnnlab.errors import DataError

FOOD = [f"food{i}" for i in range(11)]


def write(path, seed=0, shape=(10, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    return path


def folder_args(tmp_path, **overrides):
    args = dict(size=8, channels=3, num_workers=0, on_bad_image="error", cache_dir=tmp_path / "cache")
    return {**args, **overrides}


def test_image_folder_with_val_and_labeled_test(tmp_path):
    for split, n in (("train", 2), ("valid", 1), ("test", 1)):
        for name in ("zebra", "ant"):
            for i in range(n):
                write(tmp_path / "d" / split / name / f"{i}.jpg", seed=i)
    splits = read_image_folder(tmp_path / "d", **folder_args(tmp_path))
    assert splits.classes == ["ant", "zebra"]
    assert splits.train_x.shape == (4, 3, 8, 8) and splits.train_x.dtype == torch.uint8
    assert splits.train_y.tolist() == [0, 0, 1, 1]
    assert splits.val_y.tolist() == [0, 1] and splits.val_x.shape == (2, 3, 8, 8)
    assert splits.test_y.tolist() == [0, 1] and splits.test_ids == ["ant/0", "zebra/0"]  # stems repeat
    assert len(splits.files) == 8


def test_image_folder_gray_with_unlabeled_test(tmp_path):
    write(tmp_path / "train" / "a" / "x.png")
    write(tmp_path / "train" / "b" / "y.png", seed=1)
    write(tmp_path / "test" / "0002.png")
    write(tmp_path / "test" / "0001.png")
    splits = read_image_folder(tmp_path, **folder_args(tmp_path, channels=1, size=None, cache_dir=None))
    assert splits.train_x.shape == (2, 1, 10, 12) and splits.val_x is None
    assert splits.test_y is None and splits.test_ids == ["0001", "0002"]


def test_image_folder_val_class_unknown_to_train(tmp_path):
    write(tmp_path / "train" / "cat" / "a.jpg")
    write(tmp_path / "val" / "dog" / "a.jpg")
    with pytest.raises(DataError, match="dog"):
        read_image_folder(tmp_path, **folder_args(tmp_path))


def write_food11(root):
    for i in range(6):
        write(root / "train" / f"{i % 3}_{i}.jpg", seed=i, shape=(20, 16))
    for i in range(3):
        write(root / "valid" / f"{10 - i}_{i}.jpg", seed=10 + i)
    for name in ("0003.jpg", "0001.jpg", "0002.jpg"):
        write(root / "test" / name, seed=20)
    broken = root / "train" / "2_99.jpg"
    broken.write_bytes((root / "train" / "0_0.jpg").read_bytes()[:200])
    return broken


def food_args(tmp_path, on_bad_image):
    return dict(size=8, num_workers=0, on_bad_image=on_bad_image, cache_dir=tmp_path / "cache", classes=FOOD)


def test_food11_truncated_jpeg_error_names_file(tmp_path):
    broken = write_food11(tmp_path / "food")
    with pytest.raises(DataError, match=r"not a readable image") as info:
        read_food11(tmp_path / "food", **food_args(tmp_path, "error"))
    assert str(broken) in str(info.value)


def test_food11_skip_drops_truncated_jpeg(tmp_path, caplog):
    broken = write_food11(tmp_path / "food")
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.images"):
        splits = read_food11(tmp_path / "food", **food_args(tmp_path, "skip"))
    assert str(broken) in caplog.text and "on_bad_image" not in caplog.text  # no advice to set it again
    assert splits.train_x.shape == (6, 3, 8, 8)  # 7 files, the broken one dropped
    assert splits.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert broken not in splits.files and len(splits.files) == 6 + 3 + 3
    assert splits.val_y.tolist() == [10, 8, 9]  # sorted by name: 10_0, 8_2, 9_1
    assert splits.test_y is None and splits.test_ids == ["0001", "0002", "0003"]
    assert splits.test_x.shape == (3, 3, 8, 8) and splits.classes == FOOD


def test_food11_label_out_of_range_names_file(tmp_path):
    write(tmp_path / "train" / "11_0.jpg")
    with pytest.raises(DataError, match=r"11_0\.jpg has label 11"):
        read_food11(tmp_path, **food_args(tmp_path, "error"))


def test_unlabeled_test_split_is_loaded_for_predict_but_not_scored(tmp_path, make_cfg):
    from cnnlab.data.registry import build_data

    write_food11(tmp_path / "food")
    (tmp_path / "food" / "train" / "2_99.jpg").unlink()
    cfg = make_cfg("dataset=food11", f"dataset.root={tmp_path / 'food'}", "dataset.image_size=8",
                   "dataset.num_workers=0", "dataset.cache=false")  # fmt: skip
    data = build_data(cfg.dataset, device=torch.device("cpu"), batch_size=4, eval_batch_size=2, seed=0)
    assert not data.test_labeled and data.test_ids == ["0001", "0002", "0003"]
    assert data.test.y.tolist() == [-1, -1, -1] and data.test.x.shape == (3, 3, 8, 8)


def test_food11_original_layout_with_labeled_evaluation(tmp_path):
    """The original Food-11: training/, validation/, evaluation/, all named <label>_<n>.jpg."""
    for split, n in (("training", 4), ("validation", 2), ("evaluation", 3)):
        for i in range(n):
            write(tmp_path / split / f"{i % 2}_{i}.jpg", seed=i)
    splits = read_food11(tmp_path, **food_args(tmp_path, "error"))
    assert splits.train_y.tolist() == [0, 0, 1, 1] and splits.val_y.tolist() == [0, 1]  # by file name
    assert splits.test_y.tolist() == [0, 0, 1] and splits.test_ids == ["0_0", "0_2", "1_1"]


def test_food11_testing_folder_is_unlabeled(tmp_path):
    write(tmp_path / "training" / "0_0.jpg")
    write(tmp_path / "testing" / "0001.jpg")
    splits = read_food11(tmp_path, **food_args(tmp_path, "error"))
    assert splits.test_y is None and splits.test_ids == ["0001"] and splits.val_x is None


def test_image_folder_course_layout(tmp_path):
    for split in ("training", "validation", "evaluation"):
        for name in ("b", "a"):
            write(tmp_path / split / name / "0.png")
    splits = read_image_folder(tmp_path, **folder_args(tmp_path))
    assert (
        splits.classes == ["a", "b"] and splits.val_y.tolist() == [0, 1] and splits.test_y.tolist() == [0, 1]
    )


def test_food11_wrong_root_names_the_expected_folders(tmp_path, make_cfg):
    from cnnlab.data.registry import read_splits

    (tmp_path / "photos").mkdir()
    cfg = make_cfg("dataset=food11", f"dataset.root={tmp_path / 'photos'}")
    with pytest.raises(DataError) as info:
        read_splits(cfg.dataset)
    message = str(info.value)
    assert f"dataset.root={tmp_path / 'photos'} does not hold the dataset food11: it is empty" in message
    assert "\n" not in message
    for name in ("train/", "valid/", "test/", "training/", "validation/", "evaluation/"):
        assert name in message


def three_class_folder(root):
    for name in ("cat", "ant", "bee"):
        for i in range(2):
            write(root / "train" / name / f"{i}.png", seed=i)
    return root


def no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded before the classes were checked")

    monkeypatch.setattr("cnnlab.data.folders.decode_all", refuse)


def test_imagefolder_classes_come_from_the_folders(tmp_path, make_cfg):
    from cnnlab.data.registry import read_splits

    root = three_class_folder(tmp_path / "d")
    cfg = make_cfg(
        "dataset=imagefolder", f"dataset.root={root}", "dataset.num_workers=0", "dataset.image_size=8"
    )
    assert cfg.dataset.num_classes is None and list(cfg.dataset.classes) == []
    splits = read_splits(cfg.dataset)
    assert splits.classes == ["ant", "bee", "cat"] and splits.train_y.tolist() == [0, 0, 1, 1, 2, 2]


def test_imagefolder_given_classes_set_the_label_order(tmp_path, make_cfg):
    from cnnlab.data.registry import read_splits

    root = three_class_folder(tmp_path / "d")
    order = ("dataset.classes=[cat,bee,ant]", "dataset.num_classes=3")
    cfg = make_cfg(
        "dataset=imagefolder", f"dataset.root={root}", "dataset.num_workers=0", "dataset.image_size=8", *order
    )
    splits = read_splits(cfg.dataset)
    assert splits.classes == ["cat", "bee", "ant"] and splits.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert [p.parent.name for p in splits.files[:2]] == ["cat", "cat"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset.num_classes=5", r"dataset.num_classes=5 but .*train has 3 class folders \(ant, bee, cat\)"),
        (
            "dataset.classes=[ant,bee]",
            r"class folders \['ant', 'bee', 'cat'\] but dataset.classes lists \['ant', 'bee'\]",
        ),
        ("dataset.classes=[ant,bee,cat,dog]", r"but dataset.classes lists \['ant', 'bee', 'cat', 'dog'\]"),
    ],
    ids=["num_classes", "too-few-classes", "class-without-folder"],
)
def test_imagefolder_class_mismatch_fails_before_decoding(tmp_path, make_cfg, monkeypatch, override, message):
    from cnnlab.data.registry import read_splits

    root = three_class_folder(tmp_path / "d")
    cfg = make_cfg("dataset=imagefolder", f"dataset.root={root}", "dataset.num_workers=0", override)
    no_decoding(monkeypatch)
    with pytest.raises(DataError, match=message):
        read_splits(cfg.dataset)


def test_empty_class_folder_and_bad_val_fail_before_decoding(tmp_path, monkeypatch):
    root = three_class_folder(tmp_path / "d")
    write(root / "val" / "emu" / "0.png")
    no_decoding(monkeypatch)
    with pytest.raises(DataError, match=r"val has the class folders \['emu'\]"):
        read_image_folder(root, **folder_args(tmp_path))
    (root / "val" / "emu" / "0.png").rename(root / "val" / "emu.png")
    (root / "val" / "emu").rmdir()
    (root / "train" / "dog").mkdir()
    with pytest.raises(
        DataError, match=r"dog is a class folder without image files; add images or remove it"
    ):
        read_image_folder(root, **folder_args(tmp_path))
