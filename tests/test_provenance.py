"""provenance.json: whether the git tree had uncommitted changes, and the GPU (model, driver, CUDA, cuDNN)."""

from __future__ import annotations

import json
import types

import torch

from cnnlab.run import provenance
from cnnlab.train import train


def test_git_dirty_is_what_git_status_says(monkeypatch):
    monkeypatch.setattr(provenance, "_git", lambda *args: " M cnnlab/train.py\n")
    assert provenance.git_dirty() is True
    monkeypatch.setattr(provenance, "_git", lambda *args: "")
    assert provenance.git_dirty() is False
    monkeypatch.setattr(provenance, "_git", lambda *args: None)  # not a checkout, or no git
    assert provenance.git_dirty() is None and provenance.git_commit() is None


def test_git_status_counts_tracked_files_only(monkeypatch):
    seen = []
    monkeypatch.setattr(provenance, "_git", lambda *args: seen.append(args) or "")
    provenance.git_dirty()
    assert seen == [("status", "--porcelain", "--untracked-files=no")]


def test_gpu_fields_on_a_cuda_device(monkeypatch):
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=85 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(provenance, "nvidia_driver", lambda: "570.86.15")
    assert provenance.gpu_info(torch.device("cuda", 1)) == {
        "name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "memory_gb": 85.0, "count": 2,
        "driver": "570.86.15", "cuda": "12.8", "cudnn": 91002,
    }  # fmt: skip
    assert provenance.gpu_info(torch.device("cpu")) is None and provenance.gpu_info(None) is None


def test_nvidia_driver_is_none_without_nvidia_smi(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert provenance.nvidia_driver() is None


def test_a_cpu_run_records_no_gpu_and_the_tree_state(make_cfg, tmp_path):
    train(make_cfg("trainer.max_epochs=1", "trainer.report=false", "trainer.threads=1"), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert record["gpu"] is None
    in_checkout = record["git_commit"] is not None  # CI runs in a git clone; an unpacked sdist is none
    assert record["git_dirty"] in ((True, False) if in_checkout else (None,))
