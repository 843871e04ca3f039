"""One trial of a study: a normal cnnlab run folder ``<study folder>/<trial number>``, trained with the
pruner fed the monitored value after every epoch, and its result told to the study.

A pruned trial's folder gets ``status.json`` with status ``pruned`` (and how far it got); a failed or
diverged one the usual failure record. A trial stopped by a signal keeps its ``last.pt`` and stays
running in the study: continuing the study resumes it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from cnnlab.commands.train import record_failure
from cnnlab.commands.tune.space import suggest
from cnnlab.commands.tune.study import key_of
from cnnlab.engine.interrupt import Interrupted
from cnnlab.errors import DataError
from cnnlab.run import lock
from cnnlab.run.layout import StudyDir
from cnnlab.run.workspace import claim
from cnnlab.train import Callback, train

SAMPLED = "cnnlab.sampled"  # a trial's user attribute: its sampled values as overrides


@dataclass(frozen=True)
class Plan:
    """What every worker of a study needs (plain data: spawned worker processes receive a copy)."""

    folder: str  # the study folder (trial folders); the study is there or in tune["storage"]
    args: list[str]  # the tune command's overrides: each trial composes from them plus its sampled values
    tune: dict  # the tune options
    max_epochs: int  # the trials' trainer.max_epochs (the hyperband pruner's budget)
    device: str  # trainer.device and trainer.threads as given; each worker takes its share
    threads: int | str | None
    first_trial: int  # how many trials the study had when this command started
    deadline: float | None  # time.time() after which no new trial starts

    @property
    def n_jobs(self) -> int:
        return int(self.tune["n_jobs"])

    @property
    def study_dir(self) -> StudyDir:
        return StudyDir(self.folder, storage=self.tune.get("storage"), name=self.tune["study"])


class Pruning(Callback):
    """Reports the monitored value to the trial after every epoch; raises ``optuna.TrialPruned`` when
    the pruner says so, keeping what a pruned run's record needs."""

    def __init__(self, trial: optuna.Trial, pruner: str):
        self.trial, self.pruner = trial, pruner
        self.rows: dict[int, dict] = {}
        self.record: dict = {}

    def on_epoch_end(self, run, row: dict, value: float) -> None:
        epoch = int(row["epoch"])
        self.rows[epoch] = row
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            tracker, monitor = run.tracker, str(run.cfg.trainer.monitor)
            self.record = {
                "monitor": monitor, "best_value": tracker.best, "best_epoch": tracker.best_epoch,
                "best_val_acc": self.rows.get(tracker.best_epoch, {}).get("val_acc"), "epochs_run": epoch,
                "stop_reason": "pruned",
            }  # fmt: skip
            raise optuna.TrialPruned(
                f"pruned by the {self.pruner} pruner after epoch {epoch} ({monitor} {value:.4f})"
            )


def compose_trial(args: list[str]) -> DictConfig:
    """The train config of a trial: the tune config composed with ``args``, its ``tune`` node emptied
    (the study's settings are the study's, not the run's)."""
    from hydra import compose

    cfg = compose("tune", overrides=args)
    cfg.tune = None
    return cfg


def with_sampled(args: list[str], sampled: list[str]) -> list[str]:
    """The command's overrides with a trial's sampled values in place of those of the same keys."""
    keys = {key_of(a) for a in sampled}
    return [*(a for a in args if key_of(a) not in keys), *sampled]


def train_overrides(args: list[str]) -> list[str]:
    """What a trial's overrides.yaml records of the tune command's overrides: those ``cnnlab train``
    composes to the same config (a preset's ``tune=<name>`` too, for its dataset and model), so
    ``cnnlab train resume=<trial>`` works; not the study's ``tune.*`` settings nor Hydra's."""
    return [a for a in args if not a.lstrip("+~").startswith(("tune.", "hydra.", "hydra/"))]


def run_trial(study: optuna.Study, trial: optuna.Trial, plan: Plan, *, sampled: list[str],
              resources: tuple[str, int | None], resume: bool = False) -> str:  # fmt: skip
    """Train ``trial`` in its folder and tell the study how it ended; return the folder's status (ok,
    pruned, diverged or failed). A signal is raised on: the study stops, the trial can be resumed."""
    folder = StudyDir(plan.folder).trial(trial.number)
    args = with_sampled(plan.args, sampled)
    cfg = compose_trial(args)
    config_yaml = OmegaConf.to_yaml(cfg)  # as composed, before this worker sets its share of the machine
    cfg.trainer.device, cfg.trainer.threads = resources
    if plan.n_jobs > 1 and cfg.trainer.progress == "auto":
        cfg.trainer.progress = "plain"  # progress bars of parallel trials would overwrite each other
    if resume:
        cfg.resume = str(folder.path)
    recorded = train_overrides(args)
    print(f"trial {trial.number}{' (resumed)' if resume else ''}: {' '.join(sampled)}", file=sys.stderr)
    pruning = Pruning(trial, str(plan.tune["pruner"]))
    started = time.perf_counter()
    with claim(folder, resume=resume):
        if not resume:
            folder.write_hydra(config_yaml, recorded)
        try:
            summary = train(cfg, folder.path, overrides=recorded, callbacks=(pruning,))
        except optuna.TrialPruned as exc:
            folder.write_status({"status": "pruned", "error": str(exc), "error_type": "TrialPruned",
                                 "seconds": time.perf_counter() - started, **pruning.record})  # fmt: skip
            study.tell(trial, state=TrialState.PRUNED)
            return "pruned"
        except (Interrupted, KeyboardInterrupt) as exc:  # a signal: the trial stays running, to be resumed
            record_failure(folder.path, exc, seconds=time.perf_counter() - started)
            if isinstance(exc, Interrupted):
                raise Interrupted(
                    f"{exc.args[0].split(';')[0]} of trial {trial.number}; its state is saved: continue the "
                    f"study (it resumes the trial) with `cnnlab tune tune.dir={plan.folder}`.",
                    exc.exit_code - 128,
                ) from None
            raise
        except Exception as exc:  # the study goes on: a failed trial is a result too
            record = record_failure(folder.path, exc, seconds=time.perf_counter() - started)
            study.tell(trial, state=TrialState.FAIL)
            print(f"trial {trial.number} {record['status']}: {record['error']}", file=sys.stderr)
            return record["status"]
        study.tell(trial, summary["best_value"])  # still holding the folder: no other worker settles it
    return "ok"


def settle(study: optuna.Study, plan: Plan, resources: tuple[str, int | None]) -> None:
    """Trials an earlier command left running (it was stopped): resume those with a ``last.pt`` to
    continue from, tell the study how the others ended (their folders say). In a shared study a running
    trial may be another worker's: only those whose folder no live worker holds are settled."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        folder = StudyDir(plan.folder).trial(frozen.number)
        if not plan.study_dir.shared:
            settle_one(study, frozen, plan, resources)
        elif folder.path.is_dir() and not lock.is_locked(folder.path):
            try:
                with lock.hold(folder.path):
                    if study._storage.get_trial(frozen._trial_id).state == TrialState.RUNNING:
                        settle_one(study, frozen, plan, resources)
            except lock.FolderLocked:  # another worker took it between the look and the lock
                continue


def settle_one(study: optuna.Study, frozen, plan: Plan, resources: tuple[str, int | None]) -> None:
    folder = StudyDir(plan.folder).trial(frozen.number)
    try:
        summary, status = folder.read_summary(), (folder.read_status() or {}).get("status")
    except DataError:
        summary, status = None, "broken"
    if summary is not None and isinstance(summary.get("best_value"), int | float):
        study.tell(frozen.number, float(summary["best_value"]))
    elif status == "pruned":
        study.tell(frozen.number, state=TrialState.PRUNED)
    elif folder.is_unfinished() and isinstance(frozen.user_attrs.get(SAMPLED), list):
        trial = optuna.Trial(study, frozen._trial_id)  # Optuna has no public way to reopen a trial
        run_trial(study, trial, plan, sampled=frozen.user_attrs[SAMPLED], resources=resources, resume=True)
    else:
        study.tell(frozen.number, state=TrialState.FAIL)


def ask(study: optuna.Study, space: dict) -> tuple[optuna.Trial, list[str]]:
    """A new trial and its sampled values as overrides (kept with the trial, for resuming it)."""
    trial = study.ask()
    sampled = suggest(trial, space)
    trial.set_user_attr(SAMPLED, sampled)
    return trial, sampled
