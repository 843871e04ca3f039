"""Figures of a ``cnnlab tune`` study (``tune.report=true``), drawn from plain numbers: the optimisation
history (pruned trials marked), the parameter importances, and every trial's monitored value per epoch
(where the pruner stopped the weak ones)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.report.figures import WRONG, new_figure, save_figure
from cnnlab.run.layout import StudyDir

DONE, PRUNED = "#0969da", "#8c959f"


@dataclass
class TrialPoint:
    number: int
    state: str  # complete | pruned | fail | running
    value: float | None  # a complete trial's result, a pruned one's last reported value
    curve: dict[int, float] = field(default_factory=dict)  # epoch -> monitored value reported


def whole_numbers(ax) -> None:
    """Trial numbers and epochs on the x axis: no 1.25."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def history_figure(trials: list[TrialPoint], *, maximize: bool, metric: str):
    """Each trial's value by trial number, and the best so far."""
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    pruned = [t for t in trials if t.state == "pruned" and t.value is not None]
    ax.scatter([t.number for t in done], [t.value for t in done], color=DONE, label="complete", zorder=3)
    ax.scatter([t.number for t in pruned], [t.value for t in pruned], color=PRUNED, marker="x",
               label="pruned (last value)", zorder=3)  # fmt: skip
    best, steps = None, []
    for t in sorted(done, key=lambda t: t.number):
        if best is None or (t.value > best if maximize else t.value < best):
            best = t.value
        steps.append((t.number, best))
    if steps:
        steps.append((max(t.number for t in trials), best))  # the line runs to the last trial
        ax.step(*zip(*steps, strict=True), where="post", color=WRONG, label="best so far")
    whole_numbers(ax)
    ax.set(xlabel="trial", ylabel=metric, title=f"optimisation history ({len(done)} complete, "
           f"{len(pruned)} pruned)")  # fmt: skip
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def importance_figure(importances: dict[str, float]):
    """How much of the variation of the result each parameter explains (Optuna's fANOVA)."""
    names = sorted(importances, key=importances.get)
    fig = new_figure(7, 0.9 + 0.45 * max(len(names), 1))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color=DONE)
    for y, name in enumerate(names):
        ax.text(importances[name], y, f" {importances[name]:.2f}", va="center")
    ax.set(xlabel="importance (share of the variance explained)", title="parameter importances",
           xlim=(0, max([*importances.values(), 0.01]) * 1.15))  # fmt: skip
    fig.tight_layout()
    return fig


def intermediate_figure(trials: list[TrialPoint], *, metric: str):
    """Every trial's reported value per epoch: pruned trials end early, in grey."""
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    for t in trials:
        if t.curve:
            epochs = sorted(t.curve)
            ax.plot(epochs, [t.curve[e] for e in epochs], marker="o", markersize=3, alpha=0.8,
                    color=PRUNED if t.state == "pruned" else DONE)  # fmt: skip
    ax.plot([], [], color=DONE, label="complete")
    ax.plot([], [], color=PRUNED, label="pruned")
    whole_numbers(ax)
    ax.set(xlabel="epoch", ylabel=metric, title="monitored value per epoch, every trial")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def write_study_figures(folder: StudyDir, trials: list[TrialPoint], importances: dict[str, float] | None,
                        *, maximize: bool, metric: str) -> list[Path]:  # fmt: skip
    """The study's PNGs in its folder (no importances with fewer than two complete trials)."""
    written = [
        save_figure(history_figure(trials, maximize=maximize, metric=metric),
                    folder.figure("optimization_history.png")),
        save_figure(intermediate_figure(trials, metric=metric), folder.figure("intermediate_values.png")),
    ]  # fmt: skip
    if importances:
        written.append(save_figure(importance_figure(importances), folder.figure("param_importances.png")))
    return written
