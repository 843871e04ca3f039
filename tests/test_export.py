"""cnnlab export: each format reproduces the model's outputs; bad input is one clear error."""

from __future__ import annotations

import pytest
import torch

from cnnlab.commands.export import export
from cnnlab.run.load import load_run, read_checkpoint
from tests.conftest import run_cli


def probe(run):
    x = torch.rand(3, run.in_channels, run.image_size, run.image_size)
    with torch.no_grad():
        return x, run.model(x)


def test_safetensors_export_reloads_to_the_same_outputs(trained_run):
    out = export(trained_run, "safetensors")
    assert out == trained_run / "export" / "lenet.safetensors"
    run = load_run(trained_run)
    again = load_run(trained_run, ckpt=out)
    x, expected = probe(run)
    torch.testing.assert_close(again.model(x), expected)
    assert read_checkpoint(out)[1].classes == run.classes


def test_torchscript_export_runs_without_cnnlab(trained_run):
    out = export(trained_run, "torchscript")
    x, expected = probe(load_run(trained_run))
    torch.testing.assert_close(torch.jit.load(str(out))(x), expected, rtol=1e-4, atol=1e-5)


def test_onnx_export_matches_torch_in_the_reference_runtime(trained_run, tmp_path):
    pytest.importorskip("onnxscript")
    from onnx.reference import ReferenceEvaluator

    out = export(trained_run, "onnx", tmp_path / "m.onnx")
    x, expected = probe(load_run(trained_run))
    (logits,) = ReferenceEvaluator(str(out)).run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_export_errors_are_one_line(trained_run, tmp_path):
    proc = run_cli("export", f"run={trained_run}", "format=pickle", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Unknown export format 'pickle'; choose one of: safetensors" in proc.stderr
    proc = run_cli("export", f"run={tmp_path / 'none'}", cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("export", f"run={trained_run}", "format=torchscript", cwd=tmp_path)
    assert proc.returncode == 0 and (trained_run / "export" / "lenet.torchscript.pt").is_file()
    assert proc.stderr.strip().splitlines() == [  # no FutureWarning about TorchScript, nothing else
        f"exported {trained_run / 'checkpoints' / 'best.safetensors'} (torchscript) to "
        f"{trained_run / 'export' / 'lenet.torchscript.pt'}"
    ]


@pytest.mark.slow
def test_onnx_export_prints_only_where_it_wrote(trained_run, tmp_path):
    pytest.importorskip("onnxscript")
    proc = run_cli("export", f"run={trained_run}", "format=onnx", "out=m.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "m.onnx" and len(proc.stderr.strip().splitlines()) == 1  # no exporter notes
