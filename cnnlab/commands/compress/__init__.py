"""``cnnlab compress run=<dir> method=prune|quantize|distill ...``: a smaller or faster model of a trained
run, written as a new run folder that predict, evaluate and runs read like any other, with
``compression.csv``: accuracy, saved elements, file size and CPU latency against the original.

- prune: global magnitude (``structured=false``) or L1 channel (``structured=true``) pruning of
  ``amount``, then ``finetune_epochs`` of training with the zeros kept (:mod:`cnnlab.engine.prune`);
- quantize: int8 post-training quantisation with PT2E, calibrated on training images
  (:mod:`cnnlab.models.quantized`);
- distill: the teacher's recipe trains ``student.model`` on its soft targets (:mod:`.distill`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from cnnlab.build import build_model, check
from cnnlab.commands.common import open_run
from cnnlab.commands.compress import config as configs
from cnnlab.commands.compress.distill import Distill
from cnnlab.commands.compress.measure import describe, latencies
from cnnlab.data.loader import BatchPipeline
from cnnlab.engine.prune import apply_masks, copy_channels, kept_channels, magnitude_masks, sparsity
from cnnlab.errors import ConfigError
from cnnlab.run.checkpoints import RunCheckpoints
from cnnlab.run.layout import RunDir
from cnnlab.run.load import LoadedRun, load_run, read_checkpoint_config, run_data
from cnnlab.run.log import make_console
from cnnlab.run.workspace import claim
from cnnlab.train import Callback, train

log = logging.getLogger("cnnlab")
METHODS = ("prune", "quantize", "distill")


class StartFrom(Callback):
    """Fine-tuning: start from given weights, and keep pruned weights at zero after every step."""

    def __init__(self, state: dict, masks: dict | None):
        self.state, self.masks = state, masks

    def on_start(self, run) -> None:
        run.model.load_state_dict(self.state)
        if run.ctx.ema is not None:
            run.ctx.ema.module.load_state_dict(self.state)
        self.on_step(run)

    def on_step(self, run) -> None:
        if self.masks:
            apply_masks(run.model, self.masks)
            if run.ctx.ema is not None:
                apply_masks(run.ctx.ema.module, self.masks)


def check_options(cfg: DictConfig) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"Unknown compression method '{cfg.method}'; choose one of: {', '.join(METHODS)}.")
    if not 0 < cfg.amount < 1:
        raise ConfigError(
            f"amount is the share of weights (or channels) pruned, in (0, 1); got {cfg.amount}."
        )
    for key, low in (("finetune_epochs", 0), ("calibration", 1), ("repeats", 1), ("threads", 1)):
        if cfg[key] < low:
            raise ConfigError(f"{key} must be at least {low}, got {cfg[key]}.")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise ConfigError(f"epochs must be at least 1 or null (the teacher's), got {cfg.epochs}.")
    if cfg.temperature <= 0 or not 0 <= cfg.alpha <= 1:
        raise ConfigError(
            f"distillation needs temperature > 0 and alpha in [0, 1]; got {cfg.temperature}, {cfg.alpha}."
        )
    if cfg.lr is not None and cfg.lr <= 0:
        raise ConfigError(f"lr must be greater than 0 or null, got {cfg.lr}.")


def out_folder(cfg: DictConfig, source: Path) -> RunDir:
    """``out=``, else ``<run>-<method>`` beside the run (``-2``, ``-3``, ... when that is taken)."""
    if cfg.out:
        return RunDir(cfg.out)
    base = source.parent / f"{source.name}-{cfg.method}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return RunDir(path)


def write_model_run(folder: RunDir, cfg: DictConfig, model: torch.nn.Module, teacher: LoadedRun) -> None:
    """A run folder for a model made without training: best.pt, best.safetensors, .hydra/config.yaml."""
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    record = dataclasses.replace(teacher.record, config=config_yaml, model_name=str(cfg.model.name),
                                 weights="raw", precision="32")  # fmt: skip
    with claim(folder, resume=False):
        RunCheckpoints(folder).save_model(model.state_dict(), record)


def prune_model(cfg: DictConfig, teacher: LoadedRun, folder: RunDir) -> None:
    model = copy.deepcopy(teacher.model).cpu()
    if cfg.structured:
        kept = kept_channels(model, cfg.amount)
        model_cfg = configs.narrowed(teacher.cfg.model, [len(k) for k in kept])
        pruned = build_model(model_cfg, in_channels=teacher.in_channels, num_classes=len(teacher.classes),
                             image_size=teacher.image_size)  # fmt: skip
        copy_channels(model, pruned, kept)
        masks = None
    else:
        model_cfg, pruned, masks = teacher.cfg.model, model, magnitude_masks(model, cfg.amount)
    train_cfg = configs.finetune(teacher.cfg, epochs=max(cfg.finetune_epochs, 1), lr=cfg.lr, model=model_cfg)
    check(train_cfg)
    if cfg.finetune_epochs == 0:
        write_model_run(folder, train_cfg, pruned, teacher)
        return
    train(train_cfg, folder.path, callbacks=(StartFrom(pruned.state_dict(), masks),))


def quantize_model(cfg: DictConfig, teacher: LoadedRun, folder: RunDir, data) -> None:
    from cnnlab.models.quantized import QuantizedModel

    model_cfg = OmegaConf.to_container(teacher.cfg.model, resolve=True)
    base = model_cfg.pop("name")
    model_cfg.pop("_target_", None)
    pipeline = BatchPipeline(teacher.mean, teacher.std, torch.device("cpu"))
    images = data.train.head(cfg.calibration)
    batches = [pipeline(images[i : i + 64], train=False) for i in range(0, len(images), 64)]
    model = QuantizedModel(in_channels=teacher.in_channels, num_classes=len(teacher.classes),
                           image_size=teacher.image_size, base=base, base_options=model_cfg,
                           trained=copy.deepcopy(teacher.model), calibration=batches)  # fmt: skip
    train_cfg = configs.typed(teacher.cfg)
    train_cfg.model = OmegaConf.merge(OmegaConf.structured(configs.SCHEMAS["model"]["quantized"]),
                                      {"base": base, "base_options": model_cfg})  # fmt: skip
    write_model_run(folder, train_cfg, model, teacher)


def distill_model(cfg: DictConfig, teacher: LoadedRun, folder: RunDir) -> None:
    options = OmegaConf.to_container(cfg.student.options, resolve=True) or {}
    train_cfg = configs.student(teacher.cfg, name=cfg.student.model, options=options, epochs=cfg.epochs)
    if cfg.lr is not None:
        train_cfg.optimizer.lr = cfg.lr
    check(train_cfg)
    train(train_cfg, folder.path, callbacks=(Distill(teacher.model, temperature=cfg.temperature,
                                                      alpha=cfg.alpha),))  # fmt: skip


def compress(cfg: DictConfig) -> list[dict]:
    """Make the compressed run and its table; return the table's rows (original first)."""
    check_options(cfg)
    started = time.perf_counter()
    teacher, _ = open_run(cfg)  # on the CPU: the table is a CPU measurement; training uses trainer.device
    teacher.model.cpu()
    folder = out_folder(cfg, teacher.run_dir)
    data = run_data(teacher.cfg, torch.device("cpu"), data_root=cfg.data_root)
    if cfg.method == "prune":
        prune_model(cfg, teacher, folder)
    elif cfg.method == "quantize":
        quantize_model(cfg, teacher, folder, data)
    else:
        distill_model(cfg, teacher, folder)
    made = load_run(folder.path, device="cpu")
    rows = [describe(teacher, data, "original"), describe(made, data, cfg.method)]
    torch.set_num_threads(cfg.threads)
    image = torch.zeros(1, teacher.in_channels, teacher.image_size, teacher.image_size)
    for row, ms in zip(rows, latencies([teacher.model, made.model], image, repeats=cfg.repeats,
                                       compile=cfg.compile), strict=True):  # fmt: skip
        row["latency_ms"] = ms
    rows[1]["sparsity"] = sparsity(made.model) if cfg.method == "prune" else None
    finish(cfg, folder, rows, seconds=time.perf_counter() - started)
    return rows


def finish(cfg: DictConfig, folder: RunDir, rows: list[dict], *, seconds: float) -> None:
    """compression.csv, the folder's .hydra/ (the compress options) and, for a model made without
    training, summary.json; then the table."""
    options = [f"{k}={v}" for k, v in OmegaConf.to_container(cfg, resolve=True).items()
               if k in ("method", "amount", "structured", "finetune_epochs", "calibration", "student",
                        "temperature", "alpha", "epochs", "lr")]  # fmt: skip
    with claim(folder, resume=True):
        folder.write_compression([{**r, "sparsity": r.get("sparsity")} for r in rows])
        if not folder.config_file.exists():
            folder.write_hydra(read_checkpoint_config(folder.best), [f"compress={cfg.run}", *options], "")
        if not folder.summary_file.exists():
            acc = rows[1]["accuracy"]
            folder.write_summary({
                "status": "finished", "best_epoch": 0, "monitor": "val_acc", "best_value": None,
                "best_val_acc": acc if rows[1]["split"] == "val" else None,
                "test_acc": acc if rows[1]["split"] == "test" else None, "epochs_run": 0,
                "stop_reason": f"compressed ({cfg.method})", "seconds": seconds,
            })  # fmt: skip
    table = Table(
        title=f"cnnlab compress method={cfg.method}: {rows[1]['split']} accuracy, size, CPU latency"
    )
    columns = ("run", "accuracy", "elements", "nonzero", "file KB", "gzip KB", "ms/image", "speed-up")
    for name in columns:
        table.add_column(name, justify="left" if name == "run" else "right", overflow="fold")
    for r in rows:
        table.add_row(r["run"], f"{r['accuracy']:.4f}", f"{r['elements']:,}", f"{r['nonzero']:,}",
                      f"{r['file_kb']:.1f}", f"{r['gzip_kb']:.1f}", f"{r['latency_ms']:.3f}",
                      f"{rows[0]['latency_ms'] / r['latency_ms']:.2f}x")  # fmt: skip
    make_console().print(table)
    print(f"original: {cfg.run}\n{cfg.method}: {folder.path}\nwrote {folder.compression}")


def main(cfg: DictConfig) -> list[dict]:
    return compress(cfg)
