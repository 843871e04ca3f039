"""The training step's host work (issue 18): fused and foreach optimizer kernels give the weights of the
plain loop, the epoch's sums are reduced once at its end and equal step-by-step sums, the batch pipeline
converts and normalises in one kernel, channels_last data needs no copy per step, and the learning rate
still reaches TensorBoard for every step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cnnlab.build import build_optimizer
from cnnlab.data.loader import BatchPipeline, TensorLoader
from cnnlab.engine.loop import EpochState, EpochTotals
from cnnlab.engine.optim import implementation_kwargs
from cnnlab.errors import ConfigError
from cnnlab.models.simplecnn import SimpleCNN
from cnnlab.train import train

CPU = torch.device("cpu")


def steps_with(cfg, model: nn.Module, steps: int = 4) -> nn.Module:
    """A few optimizer steps on fixed random batches with the optimizer ``cfg`` builds."""
    model = copy.deepcopy(model)
    optimizer = build_optimizer(model, cfg.optimizer)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_and_foreach_kernels_give_the_weights_of_the_plain_loop(make_cfg, name):
    torch.manual_seed(0)
    model = SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[4, 8])
    extra = ["optimizer.nesterov=true", "optimizer.weight_decay=0.01"] if name == "sgd" else []
    plain = steps_with(make_cfg(f"optimizer={name}", *extra, "optimizer.implementation=for_loop"), model)
    changed = False
    for impl in ("fused", "foreach", "auto"):
        cfg = make_cfg(f"optimizer={name}", *extra, f"optimizer.implementation={impl}")
        group = build_optimizer(copy.deepcopy(model), cfg.optimizer).param_groups[0]
        assert group["fused" if impl == "auto" else impl] is True  # auto picks fused on a CPU
        fast = steps_with(cfg, model)
        for (key, a), b in zip(plain.state_dict().items(), fast.state_dict().values(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=key)
            changed |= not torch.equal(a, model.state_dict()[key])
    assert changed  # the steps did move the weights


def test_implementation_choices_and_an_optimizer_without_fused_kernels(make_cfg):
    assert implementation_kwargs(torch.optim.RMSprop, "auto") == [{"foreach": True}, {}]
    assert implementation_kwargs(torch.optim.SGD, "for_loop") == [{"foreach": False}]
    model = nn.Linear(4, 2)
    with pytest.raises(
        ConfigError, match=r"RMSprop has no fused kernels; choose one of: auto, foreach, for_loop"
    ):
        build_optimizer(model, make_cfg("optimizer=rmsprop", "optimizer.implementation=fused").optimizer)
    assert build_optimizer(model, make_cfg("optimizer=rmsprop").optimizer).param_groups[0]["foreach"] is True


def test_unknown_implementation_lists_the_choices(make_cfg, tmp_path):
    with pytest.raises(
        ConfigError, match=r"Unknown optimizer\.implementation 'fast'; choose one of: auto, fused"
    ):
        train(make_cfg("optimizer.implementation=fast"), tmp_path / "run")


def test_epoch_totals_equal_step_by_step_sums_and_find_the_first_bad_step():
    g = torch.Generator().manual_seed(0)
    losses = [torch.rand((), generator=g) for _ in range(5)]
    logits = [torch.randn(8, 3, generator=g) for _ in range(5)]
    labels = [torch.randint(0, 3, (8,), generator=g) for _ in range(5)]
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    for loss, z, y in zip(losses, logits, labels, strict=True):  # what each step used to add
        loss_sum += loss * len(y)
        correct += (z.argmax(1) == y).sum()
    state = EpochState()
    for split in ((0, 2), (2, 5)):  # two parts, as an epoch interrupted and resumed at step 2
        totals = EpochTotals()
        for i in range(*split):
            totals.add(losses[i], logits[i], labels[i])
        totals.fold_into(state, CPU, first_step=split[0])
    assert torch.equal(state.loss_sum, loss_sum) and int(state.correct) == int(correct)
    assert int(state.first_bad_step) == -1
    totals = EpochTotals()
    for i, value in enumerate([0.5, float("nan"), float("inf")]):
        totals.add(torch.tensor(value), logits[i], labels[i])
    totals.fold_into(state, CPU, first_step=5)
    assert int(state.first_bad_step) == 6


def test_pipeline_converts_and_normalises_uint8_in_one_kernel_as_before():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    out = BatchPipeline(mean, std, CPU)(x, train=False)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, (x.float() / 255 - m) / s, rtol=0, atol=1e-5)
    flipped = BatchPipeline(mean, std, CPU, augment=lambda b, g: b.flip(-1))(x, train=True)
    torch.testing.assert_close(flipped, (x.float().flip(-1) / 255 - m) / s, rtol=0, atol=1e-5)


def test_channels_last_images_give_channels_last_batches_without_a_copy():
    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    loader = TensorLoader(x, torch.zeros(20, dtype=torch.long), 8, shuffle=True)
    xb, _ = next(loader.batches())
    assert xb.is_contiguous(memory_format=torch.channels_last)
    out = BatchPipeline([0.5] * 3, [0.5] * 3, CPU, channels_last=True)(xb, train=False)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_a_conv_run_keeps_its_splits_channels_last_and_learns(make_cfg, tmp_path, monkeypatch):
    seen = []
    original = TensorLoader.batches

    def spy(self, start=0):
        for xb, yb in original(self, start):
            seen.append(xb.is_contiguous(memory_format=torch.channels_last))
            yield xb, yb

    monkeypatch.setattr(TensorLoader, "batches", spy)
    summary = train(make_cfg("model=simplecnn", "trainer.max_epochs=1", "trainer.report=false",
                             "trainer.precision=32"), tmp_path / "run")  # fmt: skip
    assert seen and all(seen) and summary["test_acc"] is not None


def test_compile_takes_a_mode_and_logs_the_first_steps_time(make_cfg, tmp_path, monkeypatch, caplog):
    """trainer.compile=reduce-overhead reaches torch.compile as its mode (the quick eager backend here:
    CUDA graphs need a GPU); the first step's time, the compile cost, is logged."""
    modes = []
    original = nn.Module.compile

    def eager_compile(self, **kwargs):
        modes.append(kwargs.get("mode"))
        original(self, backend="eager")

    monkeypatch.setattr(nn.Module, "compile", eager_compile)
    cfg = make_cfg("trainer.compile=reduce-overhead", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   "trainer.report=false")  # fmt: skip
    with caplog.at_level("INFO", logger="cnnlab"):
        train(cfg, tmp_path / "run")
    assert modes == ["reduce-overhead"]
    assert "torch.compile: the first step took" in caplog.text
    train(make_cfg("trainer.compile=true", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
                   "trainer.report=false"), tmp_path / "plain")  # fmt: skip
    assert modes == ["reduce-overhead", "default"]


def test_unknown_compile_mode_lists_the_choices(make_cfg, tmp_path):
    with pytest.raises(
        ConfigError, match=r"Unknown trainer\.compile 'fast'; choose one of: false, true, default"
    ):
        train(make_cfg("trainer.compile=fast"), tmp_path / "run")


def test_crops_and_flips_run_on_the_uint8_batch_with_the_same_result():
    from cnnlab.data.augment import build_augment

    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    basic = build_augment(name="basic", channels=3, image_size=16, crop_padding=2)
    fast = BatchPipeline(mean, std, CPU, augment=basic, seed=3)
    slow = BatchPipeline(mean, std, CPU, augment=basic, seed=3)
    slow.geometric = False  # the float path every other policy takes
    assert fast.geometric and not BatchPipeline(mean, std, CPU, augment=lambda b, g: b).geometric
    torch.testing.assert_close(fast(x, train=True), slow(x, train=True), rtol=0, atol=1e-5)
    noisy = build_augment(name="basic", channels=3, image_size=16, gaussian_noise=0.1)
    assert not BatchPipeline(mean, std, CPU, augment=noisy).geometric  # noise needs floats
