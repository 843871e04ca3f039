"""``cnnlab tune``: a hyperparameter search with Optuna, each trial a normal cnnlab run folder.

The tune config is the train config plus a ``tune`` node (presets in ``conf/tune/``). Search params are
``tune.params`` in Hydra's sweep syntax (:mod:`.space`), also given straight on the command line
(``'optimizer.lr=tag(log, interval(1e-4, 0.1))'``). The study lives in SQLite in its folder (``tune.dir``,
by default ``multirun/<date>/<time>``) with its design as data (:mod:`.design`); a tune on a folder that
holds a study continues it (:mod:`.study`), reading no stored string through Hydra's grammar.
Trials run in that folder as ``<trial number>/`` (:mod:`.trial`), ``tune.n_jobs`` at a time
(:mod:`.workers`); at the end the table of trials, the best one, and with ``tune.report=true`` the figures.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from cnnlab.build import check
from cnnlab.commands.train import SweepFailed
from cnnlab.commands.tune.design import Design, check_param, new_design, trial_config
from cnnlab.commands.tune.slurm import check as check_launcher
from cnnlab.commands.tune.space import as_overrides, corners, parse_space
from cnnlab.commands.tune.storage import check as storage_check
from cnnlab.commands.tune.study import check_options, continued_design, create, exists, key_of, load, where
from cnnlab.commands.tune.trial import Plan
from cnnlab.commands.tune.workers import run_workers
from cnnlab.config import hydra_prints, override_quoted
from cnnlab.engine import ranks
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.io import write_json
from cnnlab.run import lock
from cnnlab.run.layout import LOCK, SWEEP_SUMMARY, StudyDir
from cnnlab.run.stored import stored_config
from cnnlab.run.trust import trusted

SUMMARY_WAIT_S = 60  # how long a shared study's worker waits for another to finish writing the summary


def fold_search_args(args: list[str]) -> list[str]:
    """Sweep-syntax overrides on the command line are search params: they join ``tune.params`` (over a
    preset's param of the same key) as one ``++tune.params={...}`` override."""
    parser = OverridesParser.create()
    params, rest = {}, []
    for arg in args:
        try:
            override = None if arg.startswith("-") else parser.parse_override(arg)
        except Exception:  # Hydra reports it with its own message when it composes
            override = None
        if override is not None and override.is_sweep_override() and key_of(arg) == arg.split("=")[0]:
            params[key_of(arg)] = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if not params:
        return rest
    quoted = ", ".join(f"{key}: '{_escape(text)}'" for key, text in params.items())
    return [*rest, f"++tune.params={{{quoted}}}"]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


_designs: list[Design] = []  # the study's design, prepared before Hydra ran, for main()


def prepare(args: list[str]) -> tuple[list[str], contextlib.AbstractContextManager]:
    """Before Hydra runs the tune: fold search params, pin the study folder, make the study's design
    (a new one from this command; a stored one read as data, :mod:`.design`), check every option and
    every corner of the search space, claim the folder. Hydra composes only what is typed now."""
    if hydra_prints(args):  # Hydra prints something and exits
        return args, contextlib.nullcontext()
    if ranks.env_world_size() > 1:
        raise ConfigError("cnnlab tune runs its trials itself; start it without torchrun.")
    if "-m" in args or "--multirun" in args:
        raise ConfigError("cnnlab tune runs its own trials; drop -m.")
    args = fold_search_args(args)
    folder = study_dir(compose_tune(args).tune, given_dir=any(key_of(a) == "tune.dir" for a in args))
    args = [*(a for a in args if key_of(a) != "tune.dir"), f"tune.dir={override_quoted(str(folder.path))}"]
    now = compose_tune(args)
    if exists(folder):
        design = continued_design(folder, now, compose_tune([]), args, trust=trusted(args))
    elif folder.path.is_dir() and any(p.name != LOCK for p in folder.path.iterdir()):
        raise ConfigError(f"{folder} holds files but no study ({where(folder)}); choose a new tune.dir.")
    else:  # the study's own options first: a misspelt pruner is named even when no param is given yet
        check_options(now.tune, now.trainer)
        check_launcher(now.tune)
        design = new_design(now, parse_space(now.tune.params), args)
    check_search(design, where(folder) if exists(folder) else "tune.params")
    _designs[:] = [design]
    if folder.shared:  # workers share the folder; each trial folder has its own writer
        return args, contextlib.nullcontext()
    lock.check_free(folder.path, what="tune")
    return args, lock.hold(folder.path, what="tune")


def study_dir(tune: DictConfig, *, given_dir: bool = True) -> StudyDir:
    """The study folder and where its study lives; a shared study needs its shared folder named."""
    if tune.storage is None:
        return StudyDir(tune.dir, name=tune.study)
    if not given_dir:
        raise ConfigError(
            "tune.storage shares a study between workers: give them all the same tune.dir=<folder> (on a "
            "file system they share) for the trials' run folders."
        )
    storage_check(tune.storage)
    return StudyDir(tune.dir, storage=tune.storage, name=tune.study)


def compose_tune(args: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module

    from cnnlab.config import register_configs

    register_configs()
    with initialize_config_module("cnnlab.conf", version_base="1.3"):
        return compose("tune", overrides=args)


def check_search(design: Design, source: Path | str) -> None:
    """The study's options and search params, then every choice and both ends of every range laid
    over the base config and checked as ``cnnlab train`` would: a typo fails now, not in trial 7."""
    from hydra import initialize_config_module

    base = stored_config(design.base, source)
    check_options(base.tune, base.trainer)
    for key, text in design.space.items():
        check_param(key, text, source)
    check_launcher(base.tune)
    with initialize_config_module("cnnlab.conf", version_base="1.3"):
        for values in corners(design.distributions()):
            try:
                check(trial_config(design, values, source))
            except CnnlabError as exc:
                raise ConfigError(f"tune.params: a trial with {' '.join(as_overrides(values))} fails: "
                                  f"{exc}") from None  # fmt: skip


def main(cfg: DictConfig) -> None:
    """The study in ``tune.dir``: create or continue it, run the trials, print the table and the best."""
    folder = study_dir(cfg.tune)
    design = _designs.pop()
    base = stored_config(design.base, where(folder))  # the study's settings, with this command's changes
    with contextlib.nullcontext() if folder.shared else lock.hold(folder.path, what="tune"):
        study = load(folder) if exists(folder) else create(folder, base.tune, base.trainer, design)
        first = len(study.trials)
        timeout = base.tune.timeout
        plan = Plan(folder=str(folder.path), design=design, tune=OmegaConf.to_container(base.tune),
                    max_epochs=int(base.trainer.max_epochs), device=str(base.trainer.device),
                    threads=base.trainer.threads, first_trial=first,
                    deadline=None if timeout is None else time.time() + timeout)  # fmt: skip
        tune = base.tune
        print(f"study {folder}: {first} trials so far; {tune.n_trials} more, {tune.n_jobs} at a time")
        run_workers(plan)
        with summary_turn(folder):
            conclude(folder, base, first)


def summary_turn(folder: StudyDir) -> contextlib.AbstractContextManager:
    """The folder's lock while the summary is written: a local study holds it all along; workers of a
    shared study take turns (each writes the summary of every trial finished so far)."""
    if not folder.shared:
        return contextlib.nullcontext()
    for _ in range(SUMMARY_WAIT_S * 2):
        if not lock.is_locked(folder.path):
            break
        time.sleep(0.5)
    return lock.hold(folder.path, what="tune")


def conclude(folder: StudyDir, cfg: DictConfig, first: int) -> None:
    """The table of every trial (``<folder>/summary.csv``), the best trial (``best_trial.json``), the
    figures with ``tune.report``; exit 1 when a trial of this command failed with an error."""
    from cnnlab.commands.runs import report

    study = load(folder)
    rows = report(folder.path)
    if rows:
        print(f"wrote {folder.path / SWEEP_SUMMARY}")
    else:
        print(f"no trial ran in {folder} (tune.timeout={cfg.tune.timeout} s passed first)")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        sampled = as_overrides(best.params)  # Optuna's typed record, not a stored string
        write_json(folder.best_file, {
            "trial": best.number, "monitor": str(cfg.trainer.monitor), "value": best.value,
            "params": best.params, "overrides": sampled, "run": str(folder.trial(best.number).path),
        })  # fmt: skip
        print(f"best trial {best.number}: {cfg.trainer.monitor} {best.value:.4f} with {' '.join(sampled)}")
    if cfg.tune.report:
        for path in write_figures(folder, study, cfg):
            print(f"wrote {path}")
    failed = [r for r in rows if r["status"] == "failed" and _number(r["run"]) >= first]
    if failed:
        raise SweepFailed(
            f"{len(failed)} trials of the study in {folder} failed (trial {failed[0]['run']}: "
            f"{failed[0]['error']}); see each one's status.json."
        )


def _number(name: str) -> int:
    return int(name) if name.isdigit() else -1


def write_figures(folder: StudyDir, study, cfg: DictConfig) -> list:
    import optuna

    from cnnlab.report.study import TrialPoint, write_study_figures

    points = []
    for t in study.trials:
        curve = {int(k): float(v) for k, v in t.intermediate_values.items()}
        value = t.value if t.value is not None else (curve[max(curve)] if curve else None)
        points.append(TrialPoint(t.number, t.state.name.lower(), value, curve))
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:  # fewer than two complete trials, or nothing varied
        print(f"no parameter importances: {exc}")
        importances = None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return write_study_figures(
        folder, points, importances, maximize=maximize, metric=str(cfg.trainer.monitor)
    )
