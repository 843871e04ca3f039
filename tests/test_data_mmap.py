"""dataset.in_memory: images on the host (memory-mapped or in RAM), a batch ahead; same batches, same run."""

from __future__ import annotations

import pytest
import torch

from cnnlab.data import mmap, place
from cnnlab.data.loader import TensorLoader
from cnnlab.data.mmap import HostLoader
from cnnlab.data.registry import build_data
from cnnlab.run.checkpoints import read_state
from cnnlab.train import train
from tests.test_data_folders import write
from tests.test_resume import RECIPE, SignalAtStep, assert_same_run

CPU = torch.device("cpu")


def pair(n=203, **kwargs):
    x = torch.randint(0, 256, (n, 1, 3, 3), dtype=torch.uint8)
    y = torch.randint(0, 4, (n,))
    return TensorLoader(x, y, 16, **kwargs), HostLoader(x, y, 16, device=CPU, **kwargs)


def same_batches(a, b, start=0):
    got_a, got_b = list(a.batches(start)), list(b.batches(start))
    assert len(got_a) == len(got_b) == len(a) - start
    for (xa, ya), (xb, yb) in zip(got_a, got_b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize(
    "kwargs",
    [dict(shuffle=True, seed=3), dict(shuffle=True, seed=3, sampler="balanced"), dict(shuffle=False)],
    ids=["random", "balanced", "in-order"],
)
def test_host_loader_yields_the_tensor_loaders_batches(kwargs):
    memory, host = pair(**kwargs)
    for loader in (memory, host):
        loader.set_epoch(2)
    same_batches(memory, host)
    same_batches(memory, host, start=5)  # a run resumed mid-epoch
    for loader in (memory, host):
        loader.shard(1, 3)
        loader.limit = 7
    same_batches(memory, host)
    assert torch.equal(memory.head(4), host.head(4))


def test_host_loader_stops_cleanly_when_the_consumer_stops():
    import threading

    def prefetchers():
        return [t for t in threading.enumerate() if t.name.startswith("cnnlab-prefetch")]

    _, host = pair(shuffle=True)
    before = prefetchers()
    batches = host.batches()
    next(batches)
    assert len(prefetchers()) == len(before) + 1  # the next batch is being gathered
    batches.close()  # an interrupted epoch: the prefetch thread is joined, nothing is left running
    assert prefetchers() == before
    with pytest.raises(StopIteration):
        next(batches)


def tiny_folder(root, n=12):
    for k, name in enumerate(("a", "b", "c")):
        for i in range(n):
            write(root / "train" / name / f"{i}.png", seed=10 * k + i, shape=(8, 8))
    return root


def folder_cfg(make_cfg, root, tmp_path, *more, size=8):
    places = (f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}")
    return make_cfg("dataset=imagefolder", *places, f"dataset.image_size={size}", "dataset.num_workers=0",
                    "dataset.val_split=0.25", *more)  # fmt: skip


def test_build_data_keeps_mapped_images_on_the_host(make_cfg, tmp_path):
    cfg = folder_cfg(make_cfg, tiny_folder(tmp_path / "d"), tmp_path, "dataset.in_memory=false")
    host = build_data(cfg.dataset, device=CPU, batch_size=8, eval_batch_size=8, seed=0)
    memory = build_data(folder_cfg(make_cfg, tmp_path / "d", tmp_path, "dataset.in_memory=true").dataset,
                        device=CPU, batch_size=8, eval_batch_size=8, seed=0)  # fmt: skip
    assert isinstance(host.train, HostLoader) and isinstance(host.val, HostLoader)
    assert type(memory.train) is TensorLoader
    assert torch.equal(host.train.x, memory.train.x) and torch.equal(host.val.y, memory.val.y)
    carved = sorted(p.name[65:] for p in (tmp_path / "cache" / "decoded").glob("*-*.u8"))
    assert carved == ["train.u8", "val.u8"]  # the carved splits, written once and mapped
    assert host.mean == memory.mean  # statistics (auto for imagefolder) over the same images


def test_auto_keeps_what_does_not_fit_on_the_host(make_cfg, monkeypatch):
    monkeypatch.setattr(place, "memory_budget", lambda device: 1000)  # bytes: less than the tiny data
    data = build_data(make_cfg().dataset, device=CPU, batch_size=8, eval_batch_size=8, seed=0)
    assert isinstance(data.train, HostLoader)
    monkeypatch.setattr(place, "memory_budget", lambda device: 1 << 40)
    assert (
        type(build_data(make_cfg().dataset, device=CPU, batch_size=8, eval_batch_size=8, seed=0).train)
        is TensorLoader
    )


def test_memory_budget_is_half_the_available_memory(monkeypatch):
    monkeypatch.setattr(mmap, "host_available", lambda: 8_000)
    assert mmap.memory_budget(CPU) == 4_000


EXACT = ("trainer.precision=32", "trainer.threads=1", "trainer.report=false", "trainer.evaluate=false")


def final_weights(run):
    return read_state(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("source", ["idx", "mapped-folder"])
def test_same_weights_in_memory_or_on_the_host(make_cfg, tmp_path, source):
    more = (*EXACT, "trainer.max_epochs=2", "augmentation=basic", "model=lenet")
    if source == "idx":
        cfgs = {m: make_cfg(f"dataset.in_memory={m}", *more) for m in ("true", "false")}
    else:
        root = tiny_folder(tmp_path / "d", n=20)
        cfgs = {
            m: folder_cfg(make_cfg, root, tmp_path, f"dataset.in_memory={m}", *more, size=16)
            for m in ("true", "false")
        }
    for mode, cfg in cfgs.items():
        train(cfg, tmp_path / mode)
    a, b = final_weights(tmp_path / "true"), final_weights(tmp_path / "false")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mid_epoch_resume_on_the_host_matches_an_uninterrupted_run(make_cfg, tmp_path):
    host = (*RECIPE, "dataset.in_memory=false")
    train(make_cfg(*host), tmp_path / "whole")
    with pytest.raises(BaseException, match="SIGINT in epoch 2 after step 5"):  # epoch 2, step 5 of 12
        train(make_cfg(*host), tmp_path / "int", callbacks=(SignalAtStep(17),))
    train(make_cfg(*host, f"resume={tmp_path / 'int'}"), tmp_path / "int")
    assert_same_run(tmp_path / "whole", tmp_path / "int")
