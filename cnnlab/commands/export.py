"""``cnnlab export run=<dir> format=safetensors|torchscript|onnx``: share a run's best weights safely.

safetensors holds tensors only (nothing to execute when loaded), with the metadata needed to use
them; TorchScript and ONNX hold the whole network for runtimes without cnnlab. Every file is
written to a temporary name and renamed, and checked against the PyTorch model before it is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from cnnlab.commands.common import writing_into
from cnnlab.errors import ConfigError
from cnnlab.io import atomic_write, make_dirs
from cnnlab.run.checkpoints import write_weights
from cnnlab.run.layout import RunDir
from cnnlab.run.load import LoadedRun, load_run

log = logging.getLogger("cnnlab")

FORMATS = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}


def _example(run: LoadedRun) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, run.in_channels, run.image_size, run.image_size, generator=g)


def _safetensors(run: LoadedRun, out: Path) -> None:
    write_weights(run.model.state_dict(), run.record.to_metadata(), out)


def _torchscript(run: LoadedRun, out: Path) -> None:
    with warnings.catch_warnings():  # torch deprecates TorchScript, which the user asked for by name
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        traced = torch.jit.trace(run.model, _example(run))
        atomic_write(out, lambda f: torch.jit.save(traced, f))
        loaded = torch.jit.load(str(out))
    torch.testing.assert_close(loaded(_example(run)), run.model(_example(run)), rtol=1e-4, atol=1e-5)


def _onnx(run: LoadedRun, out: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError(
            "format=onnx needs the onnx and onnxscript packages; install them with "
            "`pip install 'cnnlab[export]'` or choose format=safetensors or torchscript."
        ) from None
    batch = torch.export.Dim("batch", min=1)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        path = Path(tmp) / out.name
        torch.onnx.export(
            run.model, (_example(run),), str(path), input_names=["images"], output_names=["logits"],
            dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
        atomic_write(out, lambda f: f.write(path.read_bytes()))


def export(run_dir: Path, fmt: str, out: Path | None = None, *, trust_config: bool = False) -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}.")
    run = load_run(run_dir, trust_config=trust_config)
    folder = RunDir(run_dir)
    out = Path(out) if out else folder.export / f"{run.cfg.model.name}{FORMATS[fmt]}"
    inside = Path(os.path.abspath(folder.path)) in Path(os.path.abspath(out)).parents  # as written: no link
    with writing_into(folder.path) if inside else contextlib.nullcontext(), torch.no_grad():
        make_dirs(out.parent)
        {"safetensors": _safetensors, "torchscript": _torchscript, "onnx": _onnx}[fmt](run, out)
    log.info("exported %s (%s) to %s", run.checkpoint_path, fmt, out)
    return out


def main(cfg: DictConfig) -> None:
    if not cfg.run:
        raise ConfigError("Name the run to export: cnnlab export run=<run dir> format=safetensors.")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # not the exporters' progress notes
    log.setLevel(logging.INFO)
    if cfg.average is not None:
        from cnnlab.commands.average import average

        if cfg.format != "safetensors":
            raise ConfigError(
                f"average writes safetensors (predict reads it as ckpt=), not format={cfg.format}."
            )
        names = list(cfg.average) if isinstance(cfg.average, ListConfig) else [str(cfg.average)]
        out = average(Path(cfg.run), [str(n) for n in names], out=cfg.out, bn=bool(cfg.update_bn),
                      data_root=cfg.data_root, trust_config=cfg.trust_config)  # fmt: skip
        print(out)
        return
    out = export(Path(cfg.run), str(cfg.format), cfg.out, trust_config=cfg.trust_config)
    print(out)
