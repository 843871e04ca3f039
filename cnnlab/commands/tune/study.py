"""The Optuna study of a ``cnnlab tune`` folder: its options, sampler, pruner and SQLite storage, and
the design a continued study reads back as data.

The study lives in ``<folder>/study.db``, or in ``tune.storage`` under the name ``tune.study``
(:mod:`.storage`). It keeps its design (:mod:`.design`: base config and search space), so
``cnnlab tune tune.dir=<folder>`` continues it with the same objective and settings; only
:data:`MAY_CHANGE` (how many more trials, how long, how many at once, where and how loudly they run) may
be given again with other values.
"""

from __future__ import annotations

import copy
import dataclasses

import optuna
from omegaconf import DictConfig
from optuna.distributions import distribution_to_json

from cnnlab.commands.tune import storage as storage_module
from cnnlab.commands.tune.design import BASE, OVERRIDES, PINNED, SPACE, Design, read_design
from cnnlab.commands.tune.space import parse_space
from cnnlab.errors import ConfigError, DataError
from cnnlab.run.layout import StudyDir
from cnnlab.run.resume import flatten, typed_keys

STUDY_NAME = "cnnlab"  # tune.study's default
SAMPLERS = ("tpe", "random", "gp", "qmc")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("auto", "maximize", "minimize")
MAY_CHANGE = (
    "tune.dir", "tune.n_trials", "tune.timeout", "tune.n_jobs", "tune.report", "trainer.threads",
    "trainer.device", "trainer.progress", "trust_config", "tune.storage", "tune.study", "tune.launcher",
)  # fmt: skip
NOT_STORED = ("tune.dir", "tune.storage", "tune.study", "tune.launcher")  # where the study and its workers
# run: never stored in it (neither is tune.slurm.<parameter>), so each worker says its own


def check_options(tune: DictConfig, trainer: DictConfig) -> None:
    """Every study option, one line each, before anything is created."""
    for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("direction", DIRECTIONS)):
        if str(tune[key]) not in allowed:
            raise ConfigError(f"Unknown tune.{key} '{tune[key]}'; choose one of: {', '.join(allowed)}.")
    for key in ("n_trials", "n_jobs"):
        if tune[key] < 1:
            raise ConfigError(f"tune.{key} must be 1 or more, got {tune[key]}.")
    for key in ("startup_trials", "warmup_epochs"):
        if tune[key] < 0:
            raise ConfigError(f"tune.{key} must be 0 or more, got {tune[key]}.")
    if tune.timeout is not None and tune.timeout <= 0:
        raise ConfigError(f"tune.timeout must be a number of seconds above 0 or null, got {tune.timeout}.")
    direction(tune, trainer)


def direction(tune: DictConfig, trainer: DictConfig) -> str:
    """maximize or minimize: what each trial returns is its best ``trainer.monitor``, kept by
    ``trainer.mode``, so an explicit direction must agree with it."""
    wanted = "maximize" if trainer.mode == "max" else "minimize"
    if tune.direction not in ("auto", wanted):
        raise ConfigError(
            f"tune.direction={tune.direction} contradicts trainer.mode={trainer.mode}: each trial keeps the "
            f"epoch with the best {trainer.monitor}; set trainer.monitor and trainer.mode to what the study "
            "should optimise (e.g. trainer.monitor=val_loss trainer.mode=min), or drop tune.direction."
        )
    return wanted


def make_sampler(tune: DictConfig, seed: int) -> optuna.samplers.BaseSampler:
    """``seed`` differs per worker and per continuation (tune.seed plus an offset), so no two draw the
    same stream of values."""
    name = str(tune.sampler)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=tune.startup_trials)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.startup_trials)


def make_pruner(tune: DictConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    name = str(tune.pruner)
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    return optuna.pruners.NopPruner()


def where(folder: StudyDir) -> str:
    """Where the study of ``folder`` lives, for messages."""
    if folder.shared:
        return f"the study {folder.name} in {storage_module.describe(folder.storage)}"
    return str(folder.db)


def storage(folder: StudyDir) -> optuna.storages.BaseStorage:
    """``tune.storage`` (see :mod:`.storage`), or the folder's SQLite database, where parallel trials
    wait up to a minute for each other's writes."""
    if folder.shared:
        return storage_module.open_storage(folder.storage)
    try:
        return optuna.storages.RDBStorage(folder.storage_url, engine_kwargs={"connect_args": {"timeout": 60}})
    except Exception as exc:  # not a database, a database of something else, an unwritable folder
        raise DataError(
            f"cannot open {folder.db} as an Optuna study ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); move it aside or choose another tune.dir."
        ) from None


def exists(folder: StudyDir) -> bool:
    """The study of ``folder`` has been created (by this machine or, shared, by any worker)."""
    if folder.shared:
        return storage_module.has_study(storage(folder), folder.name)
    return folder.holds_study()


def load(folder: StudyDir, **kwargs) -> optuna.Study:
    try:
        return optuna.load_study(study_name=folder.name, storage=storage(folder), **kwargs)
    except KeyError:
        raise DataError(
            f"{where(folder)} does not exist; it was not written by cnnlab tune: choose another "
            f"{'tune.study' if folder.shared else 'tune.dir'}."
        ) from None


def create(folder: StudyDir, tune: DictConfig, trainer: DictConfig, design: Design) -> optuna.Study:
    """A new study in ``folder`` that keeps its design (base config, search space) as data."""
    folder.path.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(
            study_name=folder.name, storage=storage(folder), direction=direction(tune, trainer)
        )
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it since this one looked
        raise ConfigError(
            f"another worker created {where(folder)} at the same moment; run the command again to join it."
        ) from None
    record = [a for a in design.record if not _where(key_of(a))]
    for key, value in (
        (BASE, design.base),
        (SPACE, design.space),
        (PINNED, design.pinned),
        (OVERRIDES, record),
    ):
        study.set_user_attr(key, value)
    return study


def key_of(arg: str) -> str:
    return arg.lstrip("+~").split("=", 1)[0]


def may_change(key: str) -> bool:
    return key in MAY_CHANGE or key.split(".")[:2] == ["tune", "slurm"]


def _where(key: str) -> bool:
    return key in NOT_STORED or key.split(".")[:2] == ["tune", "slurm"]


def continued_design(folder: StudyDir, now: DictConfig, default: DictConfig, args: list[str], *,
                     trust: bool) -> Design:  # fmt: skip
    """The design of the study in ``folder`` (read as data) with this command's :data:`MAY_CHANGE`
    values on top; anything else typed now must agree with the study."""
    design = read_design(load(folder).user_attrs, where(folder), trust=trust)
    keys = {k for k in typed_keys(now, default, args) if not k.startswith("tune.params")}
    flat_base, flat_now = flatten(design.base), flatten(now)
    changed = sorted(k for k in keys if not may_change(k) and flat_base.get(k) != flat_now.get(k))
    params = now.tune.params
    if changed or (params and {k: distribution_to_json(d) for k, d in parse_space(params).items()}
                   != design.space):  # fmt: skip
        what = ", ".join(changed[:6]) or "tune.params"
        raise ConfigError(
            f"The study in {folder} was started with another {what}; continue it with its own settings "
            f"(cnnlab tune tune.dir={folder}), changing only {', '.join(MAY_CHANGE[1:])}, or start a new "
            "study in another tune.dir."
        )
    base = copy.deepcopy(design.base)
    for key in sorted(k for k in keys if may_change(k)):
        *parents, last = key.split(".")
        node = base
        for part in parents:
            node = node[part]
        node[last] = flat_now.get(key)
    return dataclasses.replace(design, base=base)
