"""Learning-rate schedules behind one small interface: :class:`Schedule`.

Every schedule except ``plateau`` advances once per optimizer step, built from
``torch.optim.lr_scheduler`` classes: options given in epochs (``step_size``, ``milestones``) are turned
into steps, so a run with 50 batches and ``step_size: 2`` decays every 100 steps, and ``exponential``
decays smoothly by ``gamma`` per epoch (exactly ``lr * gamma**e`` at epoch boundaries). Warmup is a
per-step ``LinearLR`` chained before the main schedule with ``SequentialLR``; the main schedule starts
when warmup ends, so epoch counts in its options are counted from there. ``plateau`` is the only one
that reads a metric and so steps once per epoch, after validation, and only once warmup has ended.

``plateau`` uses ``threshold_mode='rel'``: an epoch counts as an improvement only when the monitored
metric beats the best so far by more than ``threshold`` times the best (``best * (1 + threshold)`` for
``max``; ``best * (1 - threshold)`` for ``min``).
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from cnnlab.errors import ConfigError

# Every option each schedule accepts, with its default; anything else is an error.
OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "step": {"step_size": 10, "gamma": 0.1},
    "multistep": {"milestones": None, "gamma": 0.1},  # None: at 50% and 75% of the run
    "exponential": {"gamma": 0.95},
    "cosine": {"min_lr": 0.0},
    "onecycle": {
        "max_lr": None,  # None: the optimizer's lr
        "pct_start": 0.3,
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "anneal_strategy": "cos",
        "cycle_momentum": False,  # True cycles SGD momentum / Adam beta1 between 0.85 and 0.95
    },
    "plateau": {"factor": 0.1, "patience": 2, "threshold": 1e-4, "cooldown": 0, "min_lr": 0.0},
}
_POSITIVE = {"step_size", "gamma", "max_lr", "div_factor", "final_div_factor", "factor"}
_NON_NEGATIVE = {"min_lr", "patience", "threshold", "cooldown"}


class Schedule:
    """Advance the learning rate; the trainer never needs to know which schedules step when."""

    def __init__(
        self,
        optimizer: Optimizer,
        per_step: sched.LRScheduler | None,
        plateau: sched.ReduceLROnPlateau | None,
        *,
        total_steps: int,
        warmup_steps: int,
    ):
        self.optimizer, self.per_step, self.plateau = optimizer, per_step, plateau
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.steps = 0

    def step_batch(self) -> None:
        """Call after every optimizer step."""
        self.steps += 1
        # Stepping past the planned run would error (onecycle) or climb back up (cosine); hold instead.
        if self.per_step is not None and self.steps < self.total_steps:
            self.per_step.step()

    def step_epoch(self, metric: float | None) -> None:
        """Call after validation with the monitored metric (only ``plateau`` reads it)."""
        if self.plateau is None or self.steps < self.warmup_steps:
            return
        if metric is None:
            raise ValueError("The plateau schedule needs the monitored validation metric each epoch.")
        self.plateau.step(metric)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "per_step": None if self.per_step is None else self.per_step.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        if self.per_step is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


def build_scheduler(
    optimizer: Optimizer,
    *,
    name: str,
    steps_per_epoch: int,
    max_epochs: int,
    warmup_epochs: float = 0,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.1,
    mode: str = "max",
    max_steps: int | None = None,
    **options: Any,
) -> Schedule:
    """Build the schedule ``name`` for a run of ``max_epochs`` x ``steps_per_epoch`` optimizer steps.

    Warmup rises linearly from ``warmup_start_factor * lr`` to ``lr`` over ``warmup_steps`` steps or
    ``warmup_epochs`` epochs (give one, not both). ``mode`` ('max' or 'min') is the direction of the
    monitored metric, used by ``plateau``. ``options`` are the schedule's own, listed in ``OPTIONS``.
    ``max_steps`` ends the run earlier (trainer.max_steps): the schedule then spans that many steps.
    """
    opts = check_schedule(name, options)
    total = min(steps_per_epoch * max_epochs, max_steps or steps_per_epoch * max_epochs)
    warmup = _warmup_steps(name, warmup_epochs, warmup_steps, steps_per_epoch, total)
    try:
        if name == "plateau":
            plateau = sched.ReduceLROnPlateau(optimizer, mode=mode, threshold_mode="rel", **opts)
            per_step = _with_warmup(optimizer, None, warmup, warmup_start_factor)
            return Schedule(optimizer, per_step, plateau, total_steps=total, warmup_steps=warmup)
        main = _main_schedule(optimizer, name, opts, steps_per_epoch, total - warmup)
        per_step = _with_warmup(optimizer, main, warmup, warmup_start_factor)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"Invalid scheduler options for '{name}' ({opts}): {exc}") from None
    return Schedule(optimizer, per_step, None, total_steps=total, warmup_steps=warmup)


def check_schedule(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The schedule name and its options, checked (no optimizer or data needed); with defaults filled."""
    if name not in OPTIONS:
        raise ConfigError(f"Unknown scheduler '{name}'; choose one of: {', '.join(OPTIONS)}.")
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        valid = ", ".join(OPTIONS[name]) or "none"
        raise ConfigError(f"Unknown option(s) {', '.join(unknown)} for scheduler '{name}'; valid: {valid}.")
    opts = {**OPTIONS[name], **options}
    _check_values(name, opts)
    return opts


def _check_values(name: str, opts: dict[str, Any]) -> None:
    """Each option a finite number in its range (a ``nan`` gamma would train an epoch, then diverge)."""
    for key, value in opts.items():
        positive = key in _POSITIVE
        if value is None or not (positive or key in _NON_NEGATIVE or key == "pct_start"):
            continue
        low, high = (0, 1) if key == "pct_start" else (0, math.inf)
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not number or not low <= value < high or (value == 0 and (positive or key == "pct_start")):
            bound = "in (0, 1)" if key == "pct_start" else "greater than 0" if positive else "0 or more"
            default = OPTIONS[name][key]
            out = (
                f"drop scheduler.options.{key}"
                if default is None
                else f"e.g. scheduler.options.{key}={default}"
            )
            raise ConfigError(
                f"scheduler.options.{key} must be a finite number {bound}, got {value!r}; {out} "
                f"(the {name} schedule's default)."
            )
    milestones = opts.get("milestones")
    if milestones and (list(milestones) != sorted(set(milestones)) or min(milestones) < 1):
        raise ConfigError(f"Scheduler option milestones must be increasing epochs >= 1, got {milestones}.")
    strategy = opts.get("anneal_strategy", "cos")
    if strategy not in ("cos", "linear"):
        raise ConfigError(
            f"Unknown scheduler.options.anneal_strategy '{strategy}'; choose one of: cos, linear."
        )


def _warmup_steps(name: str, epochs: float, steps: int, steps_per_epoch: int, total: int) -> int:
    if steps_per_epoch < 1 or total < 1:
        raise ConfigError(f"A schedule needs at least one step, got {steps_per_epoch} steps x epochs.")
    if epochs < 0 or steps < 0 or (epochs and steps):
        raise ConfigError("Set one of scheduler.warmup_epochs or scheduler.warmup_steps (>= 0), not both.")
    warmup = steps or round(epochs * steps_per_epoch)
    if warmup and name == "onecycle":
        raise ConfigError("The onecycle schedule has its own warmup (pct_start); set warmup_epochs=0.")
    if warmup >= total:
        raise ConfigError(f"Warmup ({warmup} steps) must be shorter than the run ({total} steps).")
    return warmup


def _main_schedule(
    optimizer: Optimizer, name: str, opts: dict[str, Any], steps_per_epoch: int, steps: int
) -> sched.LRScheduler | None:
    if name == "none":
        return None
    if name == "step":
        return sched.StepLR(optimizer, step_size=opts["step_size"] * steps_per_epoch, gamma=opts["gamma"])
    if name == "multistep":
        epochs = steps / steps_per_epoch
        milestones = opts["milestones"] or [round(epochs * 0.5), round(epochs * 0.75)]
        at = [round(m * steps_per_epoch) for m in milestones]
        return sched.MultiStepLR(optimizer, milestones=at, gamma=opts["gamma"])
    if name == "exponential":
        return sched.ExponentialLR(optimizer, gamma=opts["gamma"] ** (1 / steps_per_epoch))
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=steps, eta_min=opts["min_lr"])
    # One peak per parameter group, in proportion to the groups' learning rates (optimizer.bias_lr_mult,
    # optimizer.backbone_lr_mult): the optimizer's own lr is the one max_lr stands for.
    base = optimizer.defaults["lr"]
    scale = (opts.pop("max_lr") or base) / base
    max_lr = [group["lr"] * scale for group in optimizer.param_groups]
    return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps, **opts)


def _with_warmup(
    optimizer: Optimizer, main: sched.LRScheduler | None, warmup: int, start_factor: float
) -> sched.LRScheduler | None:
    if not warmup:
        return main
    linear = sched.LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup)
    if main is None:
        return linear
    return sched.SequentialLR(optimizer, [linear, main], milestones=[warmup])
