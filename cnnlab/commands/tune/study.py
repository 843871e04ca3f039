"""The Optuna study of a ``cnnlab tune`` folder: its options, sampler, pruner and SQLite storage, and
the overrides a continued study replays.

The study lives in ``<folder>/study.db``, or in ``tune.storage`` under the name ``tune.study``
(:mod:`.storage`). It remembers the overrides it was started with, so ``cnnlab tune tune.dir=<folder>``
continues it with the same objective and settings; only :data:`MAY_CHANGE` (how many more trials, how
long, how many at once, where and how loudly they run) may be given again with other values.
"""

from __future__ import annotations

import optuna
from omegaconf import DictConfig

from cnnlab.commands.tune import storage as storage_module
from cnnlab.errors import ConfigError, DataError
from cnnlab.run.layout import StudyDir
from cnnlab.run.trust import check_overrides

OVERRIDES = "cnnlab.overrides"  # the study's user attribute holding the overrides it was started with
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


def create(folder: StudyDir, tune: DictConfig, trainer: DictConfig, overrides: list[str]) -> optuna.Study:
    """A new study in ``folder`` that remembers the overrides it was started with."""
    folder.path.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(
            study_name=folder.name, storage=storage(folder), direction=direction(tune, trainer)
        )
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it since this one looked
        raise ConfigError(
            f"another worker created {where(folder)} at the same moment; run the command again to join it."
        ) from None
    study.set_user_attr(OVERRIDES, [a for a in overrides if not _where(key_of(a))])
    return study


def key_of(arg: str) -> str:
    return arg.lstrip("+~").split("=", 1)[0]


def may_change(key: str) -> bool:
    return key in MAY_CHANGE or key.split(".")[:2] == ["tune", "slurm"]


def _where(key: str) -> bool:
    return key in NOT_STORED or key.split(".")[:2] == ["tune", "slurm"]


def fixed(args: list[str]) -> list[str]:
    """The overrides that define a study's objective: all but those that :func:`may_change`."""
    return [a for a in args if not may_change(key_of(a))]


def continued_args(folder: StudyDir, args: list[str], *, trust_config: bool) -> list[str]:
    """The arguments that continue the study in ``folder``: its own overrides (checked: a study folder
    is data that may come from anyone) plus this command's :data:`MAY_CHANGE` ones."""
    study = load(folder)
    stored = study.user_attrs.get(OVERRIDES)
    if not isinstance(stored, list) or not all(isinstance(a, str) for a in stored):
        raise DataError(f"{where(folder)} does not say which overrides its study was started with; it was "
                        "not written by cnnlab tune: choose another tune.dir.")  # fmt: skip
    check_overrides(stored, where(folder), trust_config=trust_config)
    if any(a not in fixed(stored) for a in fixed(args)):  # repeating some of the study's own is harmless
        raise ConfigError(
            f"The study in {folder} was started with {' '.join(fixed(stored)) or 'no overrides'}; continue "
            f"it with those, some or none of them (cnnlab tune tune.dir={folder}), changing only "
            f"{', '.join(MAY_CHANGE[1:])}, or start a new study in another tune.dir."
        )
    changed = [a for a in args if may_change(key_of(a))]
    now = {key_of(a) for a in changed}
    return [*(a for a in stored if key_of(a) not in now), *changed]
