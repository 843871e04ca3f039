"""``cnnlab lr_find [train overrides] [lr_find.<option>=...]``: the learning-rate range test of a run.

The run is the one ``cnnlab train`` would start with the same overrides (data pipeline, model, optimizer,
loss, precision, the first epoch's freezing), built by :func:`cnnlab.train.build_run`; the test itself
is :mod:`cnnlab.engine.lr_finder`. Nothing of a run is written: no run folder, no checkpoint, no log
file, only the plot at ``lr_find.out`` (loss against learning rate, each rule's suggestion marked).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.build import check, seed_everything
from cnnlab.engine.device import configure_cpu, resolve_device
from cnnlab.engine.distributed import Dist
from cnnlab.engine.lr_finder import RULES, RangeTest, check_range, range_test, suggest
from cnnlab.errors import ConfigError
from cnnlab.report.figures import new_figure, save_figure
from cnnlab.run.layout import RunDir
from cnnlab.train import build_run

log = logging.getLogger("cnnlab")

OWN = ("start_lr", "end_lr", "steps", "diverge", "smoothing", "rule")  # the range test's, besides out


def prepare(args: list[str]) -> tuple[list[str], contextlib.AbstractContextManager]:
    """Before Hydra runs: one range test, never a sweep (its jobs would all write the same plot)."""
    if "-m" in args or "--multirun" in args:
        raise ConfigError("cnnlab lr_find runs one range test; drop -m (run it once per setting).")
    return args, contextlib.nullcontext()


def split_config(cfg: DictConfig) -> tuple[DictConfig, DictConfig]:
    """The ``lr_find`` node and the train config around it, each checked; no data is read."""
    options = cfg.lr_find
    with open_dict(cfg):
        del cfg["lr_find"]
    check_range(**{key: options[key] for key in OWN})
    if not str(options.out).strip():
        raise ConfigError("lr_find.out is empty; give the PNG's path, e.g. lr_find.out=lr_find.png.")
    if Path(options.out).is_dir():
        raise ConfigError(
            f"lr_find.out '{options.out}' is a folder; give the PNG's path, e.g. {options.out}/lr_find.png."
        )
    if cfg.resume:
        raise ConfigError("cnnlab lr_find starts no run and continues none; drop resume=.")
    check(cfg)
    return options, cfg


def main(cfg: DictConfig) -> dict:
    """Run the range test, write the plot, print the suggested learning rate; return the numbers."""
    options, cfg = split_config(cfg)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg.trainer.tensorboard = False  # the run writes nothing
    device = resolve_device(str(cfg.trainer.device))
    seed_everything(cfg.seed)
    threads = configure_cpu(cfg.trainer.threads) if device.type == "cpu" else None
    run = build_run(cfg, RunDir(Path.cwd()), Dist(device=device), config_yaml="", resumed=False)
    for part in run.parts.values():  # trainer.freeze_epochs: the rates the run's first epoch would see
        part.on_epoch_start(run, 1)
    on_step = threads.on_step if threads is not None and threads.measuring else None
    ctx = replace(run.ctx, ema=None, on_step=on_step, should_stop=None)
    log.info("lr_find: %d steps from %g to %g (%s)", options.steps, options.start_lr, options.end_lr,
             OmegaConf.to_container(cfg.optimizer)["_target_"])  # fmt: skip
    test = range_test(run.train_model, run.data.train, run.optimizer, ctx, start_lr=options.start_lr,
                      end_lr=options.end_lr, steps=options.steps, diverge=options.diverge,
                      smoothing=options.smoothing)  # fmt: skip
    try:
        lrs = {rule: suggest(test, rule) for rule in RULES}
    except ValueError as exc:
        raise ConfigError(
            f"The loss diverged at once ({exc}, at lr {test.lrs[-1]:.3g}); lower lr_find.start_lr."
        ) from None
    path = save_figure(lr_find_figure(test, lrs, options.rule), Path(options.out))
    stop = f"diverged at lr {test.lrs[-1]:.3g}" if test.diverged else f"reached lr {test.lrs[-1]:.3g}"
    others = ", ".join(f"{rule} {lr:.3g}" for rule, lr in lrs.items() if rule != options.rule)
    print(f"lr_find: {len(test.lrs)} steps, {stop}; wrote {path}")
    print(f"suggested lr: {lrs[options.rule]:.3g} ({options.rule}; {others})")
    print(f"  cnnlab train {option_for(cfg)}={lrs[options.rule]:.3g} ...")
    return {"suggested": lrs[options.rule], "rule": options.rule, "suggestions": lrs, "steps": len(test.lrs)}


def option_for(cfg: DictConfig) -> str:
    """The override that sets the learning rate the suggestion is for (onecycle: its peak)."""
    if cfg.scheduler.name == "onecycle":
        return "scheduler.options.max_lr"
    return "optimizer.lr"


def lr_find_figure(test: RangeTest, lrs: dict[str, float], rule: str):
    """Loss against learning rate (log axis): each step's loss, the smoothed curve, the suggestions."""
    fig = new_figure(7.0, 4.5)
    ax = fig.subplots()
    ax.plot(test.lrs, test.losses, color="0.75", linewidth=0.8, label="loss per step")
    ax.plot(test.lrs, test.smoothed, color="tab:blue", label="smoothed")
    x, y = np.log10(test.lrs), np.asarray(test.smoothed)
    for name, lr in lrs.items():
        style = {"marker": "o", "markersize": 9, "color": "tab:red"} if name == rule else {"marker": "x"}
        label = f"{name}: {lr:.3g}" + (" (suggested)" if name == rule else "")
        ax.plot(
            lr, np.interp(np.log10(lr), x, y), linestyle="none", label=label, **({"color": "0.3"} | style)
        )
    finite = [v for v in (*test.losses, *test.smoothed) if np.isfinite(v)]
    low, start = min(finite), test.smoothed[0]
    ax.set_ylim(low - 0.05 * (start - low), start + 0.3 * (start - low) + 1e-6)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="training loss", title="learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
