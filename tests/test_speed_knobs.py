"""Speed knobs change speed, not results: channels_last, bf16 autocast on the CPU and torch.compile give
the predictions of the plain fp32 model within a tolerance, on tiny models (no timing is asserted).

The food11 decoded cache (hit, and invalidation when a file changes) is tested in test_data_images.py.
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import sys

import pytest
import torch
from torch import nn

from cnnlab.data.loader import BatchPipeline
from cnnlab.engine.device import autocast, keep_freed_memory, resolve_precision
from cnnlab.engine.infer import view_log_probs
from cnnlab.models.lenet import LeNet
from cnnlab.models.simplecnn import SimpleCNN

CPU = torch.device("cpu")


def tiny_models() -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        LeNet(in_channels=1, num_classes=10, image_size=28),
        SimpleCNN(in_channels=1, num_classes=10, image_size=28, channels=[8, 16]),
    ]


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=g) for _ in range(2)]


def probs(model: nn.Module, *, channels_last=False, precision="32") -> torch.Tensor:
    pipeline = BatchPipeline([0.5], [0.5], CPU, channels_last=channels_last)
    model.eval()
    with torch.no_grad():
        return torch.cat([view_log_probs(model, xb, pipeline=pipeline, device=CPU, precision=precision).exp()
                          for xb in batches()])  # fmt: skip


def train_steps(model: nn.Module, *, channels_last: bool, precision: str, steps: int = 3) -> nn.Module:
    """A few Adam steps through the trainer's pipeline and autocast; returns the trained model."""
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    pipeline = BatchPipeline([0.5], [0.5], CPU, channels_last=channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for i in range(steps):
        x = pipeline(batches()[i % 2], train=False)
        with autocast(CPU, precision):
            loss = nn.functional.cross_entropy(model(x), torch.arange(16) % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("index", [0, 1])
def test_channels_last_gives_the_same_predictions(index):
    model = tiny_models()[index]
    reference = probs(model)
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert torch.allclose(probs(fast, channels_last=True), reference, atol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_bf16_autocast_on_cpu_gives_nearly_the_same_predictions(index):
    model = tiny_models()[index]
    reference = probs(model)
    low = probs(model, precision="bf16")
    assert (low - reference).abs().max() < 0.05
    assert (low.argmax(1) == reference.argmax(1)).float().mean() >= 0.9


@pytest.mark.parametrize(("channels_last", "precision", "atol"), [(True, "32", 1e-4), (False, "bf16", 0.05)])
def test_training_with_a_knob_reaches_nearly_the_same_weights(channels_last, precision, atol):
    model = tiny_models()[1]
    reference = train_steps(model, channels_last=False, precision="32")
    fast = train_steps(model, channels_last=channels_last, precision=precision)
    for (name, a), b in zip(reference.state_dict().items(), fast.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=atol), name
    assert torch.allclose(probs(fast, channels_last=channels_last), probs(reference), atol=atol)


def test_auto_precision_is_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr("cnnlab.engine.device.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "32"
    monkeypatch.setattr("cnnlab.engine.device.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"


@pytest.mark.slow  # inductor compiles C++ for ~15 s on 2 cores: run with the real-data tests
def test_compile_gives_the_same_predictions_and_state_dict_keys():
    model = tiny_models()[0]
    compiled = copy.deepcopy(model)
    compiled.compile()  # what trainer.compile=true does
    assert list(compiled.state_dict()) == list(model.state_dict())
    assert torch.allclose(probs(compiled), probs(model), atol=1e-5)


def test_trainer_compile_runs_a_tiny_training(make_cfg, tmp_path, monkeypatch):
    """The wiring of trainer.compile (in place, checkpoints, EMA copy), with the quick eager backend."""
    from cnnlab.train import train

    calls = []
    original = nn.Module.compile

    def eager_compile(self, **kwargs):
        calls.append(type(self).__name__)
        original(self, backend="eager")

    monkeypatch.setattr(nn.Module, "compile", eager_compile)
    cfg = make_cfg("trainer.compile=true", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   "trainer.report=false", "trainer.ema=0.9")  # fmt: skip
    summary = train(cfg, tmp_path / "run")
    assert calls == ["LeNet"]
    assert summary["status"] == "finished" and summary["test_acc"] is not None
    assert not (tmp_path / "run" / "report").exists()


def test_a_failing_trainer_compile_is_one_line(make_cfg, tmp_path, monkeypatch):
    """A compile that fails at the first step (here a backend that raises as Inductor does without a
    C++ compiler; Dynamo wraps it) ends the run with one line naming the cause and the way out."""
    from torch._inductor.exc import InvalidCxxCompiler

    from cnnlab.errors import ConfigError
    from cnnlab.train import train

    def no_compiler(graph, example_inputs):
        raise InvalidCxxCompiler()

    original = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self, **kwargs: original(self, backend=no_compiler))
    cfg = make_cfg("trainer.compile=true", "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    with pytest.raises(ConfigError) as info:
        train(cfg, tmp_path / "run")
    message = str(info.value)
    assert message.startswith("torch.compile failed (InvalidCxxCompiler: No working C++ compiler found")
    assert "trainer.compile=false" in message and "\n" not in message
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_other_errors_of_a_compiled_run_are_not_called_compile_errors(make_cfg, tmp_path, monkeypatch):
    from cnnlab.train import epochs, train

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(epochs, "train_one_epoch", out_of_memory)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        train(make_cfg("trainer.compile=true", "trainer.max_epochs=1"), tmp_path / "run")


FAULTS_PER_BATCH = """
import resource, sys, torch
from cnnlab.engine.device import configure_cpu
if sys.argv[1] == "configured":
    configure_cpu(1)
else:
    torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Flatten()).eval()
x, faults = torch.rand(500, 1, 28, 28), []
with torch.no_grad():
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x).sum()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(" ".join(map(str, faults)))
"""


@pytest.mark.skipif(not keep_freed_memory(), reason="the C library has no mallopt (not glibc)")
def test_configure_cpu_keeps_freed_activations_for_the_next_batch():
    """Each batch's 25 MB activations come back from the heap, not as fresh pages from the kernel."""

    def faults_per_batch(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_BATCH, mode], capture_output=True, text=True,
                             check=True)  # fmt: skip
        return statistics.median(int(n) for n in out.stdout.split())

    # The median batch: the heap still grows now and then while its free blocks settle (a batch or two of
    # new pages in a dozen). With glibc's own, adaptive thresholds the median batch faulted in all of its
    # ~18,000 pages again in most runs (not all: whether freed blocks are trimmed depends on the layout).
    assert faults_per_batch("configured") < 100
