"""What a study is, kept as data: its base config, its search space and the values typed inside a
sampled group. A trial's config is the base config plus the trial's sampled plain values.

A study folder may come from anyone, so a continued study reads these back as data only: the base
config through :func:`cnnlab.run.stored.stored_config`, the space as Optuna's JSON distributions
(checked: plain choices; a group choice names an option shipped in ``conf/``), the trial's values
checked against the space. No stored string reaches Hydra's override grammar; the overrides the study
was started with are a record for people (``cnnlab.overrides``), never replayed.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    distribution_to_json,
    json_to_distribution,
)

from cnnlab.config import group_options
from cnnlab.errors import ConfigError, did_you_mean
from cnnlab.run.stored import check_plain, stored_config

BASE, SPACE, PINNED, OVERRIDES = "cnnlab.config", "cnnlab.space", "cnnlab.pinned", "cnnlab.overrides"
KEY = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*(?:\.[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*)*")
OPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a file name in conf/<group>/, no path


@dataclass(frozen=True)
class Design:
    base: dict  # the trials' config before sampling: plain, resolved, checked; tune.params emptied
    space: dict  # search key -> Optuna distribution as JSON
    pinned: dict  # dotted key -> value typed inside a sampled group (applied after the group's choice)
    record: list  # the overrides the study was started with: for people, never replayed

    def distributions(self) -> dict[str, BaseDistribution]:
        return {key: json_to_distribution(text) for key, text in self.space.items()}


def is_group(key: str) -> bool:
    """A config group of cnnlab's (``optimizer``, ``augmentation``...): a choice of shipped options."""
    return "." not in key and bool(group_options(key))


def new_design(now: DictConfig, space: dict[str, BaseDistribution], args: list[str]) -> Design:
    """The design of a new study: ``now`` (composed from this command's overrides, trusted) as base."""
    base = OmegaConf.to_container(now, resolve=True)
    base["tune"]["params"] = {}
    groups = {key for key in space if is_group(key)}
    pinned = {}
    for arg in args:
        key = arg.lstrip("+").split("=", 1)[0]
        if not arg.startswith(("~", "-")) and "." in key and key.split(".")[0] in groups:
            value = OmegaConf.select(now, key)
            pinned[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return Design(base, {k: distribution_to_json(d) for k, d in space.items()}, pinned, list(args))


def read_design(attrs: dict, source: Path | str, *, trust: bool = False) -> Design:
    """A stored study's design, every part checked as data (one line naming what is wrong)."""
    base, space, pinned = attrs.get(BASE), attrs.get(SPACE), attrs.get(PINNED, {})
    if not isinstance(base, dict) or not isinstance(space, dict) or not isinstance(pinned, dict):
        raise ConfigError(
            f"{source} does not hold a cnnlab study's config and search space (it was written by an "
            "older cnnlab or another program); start a new study in another tune.dir."
        )
    base = OmegaConf.to_container(stored_config(base, source, trust=trust), resolve=False)
    if base.get("tune") is None:
        raise ConfigError(f"{source}: the study's config has no tune settings; it is damaged.")
    for key, text in space.items():
        check_param(key, text, source)
    for key, value in pinned.items():
        _check_key(key, source, "a pinned key")
        check_plain(value, source, key)
    record = attrs.get(OVERRIDES, [])
    return Design(base, dict(space), dict(pinned), record if isinstance(record, list) else [])


def check_param(key: str, text, source: Path | str) -> BaseDistribution:
    """One stored search param: a plain key, one of Optuna's distributions, plain choices; a group's
    choices are options shipped in ``conf/``."""
    _check_key(key, source, "a search key")
    try:
        dist = json_to_distribution(text)
    except Exception:  # not JSON, not a distribution, bad bounds
        raise ConfigError(f"{source}: the search param {key} is not a distribution; it is damaged.") from None
    if isinstance(dist, CategoricalDistribution):
        check_plain(list(dist.choices), source, key)
        if is_group(key) and any(str(c) not in group_options(key) or not OPTION.fullmatch(str(c))
                                 for c in dist.choices):  # fmt: skip
            raise ConfigError(
                f"{source}: the search param {key} chooses among {list(dist.choices)}, not options of "
                f"conf/{key}/ ({', '.join(group_options(key))}); refused."
            )
    return dist


def _check_key(key, source: Path | str, what: str) -> None:
    if not isinstance(key, str) or not KEY.fullmatch(key) or key.split(".")[0] == "hydra":
        raise ConfigError(f"{source}: {what} {key!r} is not a config key; refused.")


def checked_params(params: dict, dists: dict[str, BaseDistribution], source: Path | str) -> dict:
    """A trial's stored values: one for every search key, each inside its distribution."""
    if set(params) != set(dists):
        raise ConfigError(f"{source}: a trial's values ({', '.join(map(str, params))}) are not the study's "
                          "search keys; it is damaged.")  # fmt: skip
    for key, value in params.items():
        try:
            inside = dists[key]._contains(dists[key].to_internal_repr(value))
        except Exception:
            inside = False
        if not inside:
            raise ConfigError(f"{source}: a trial's {key}={value!r} is outside the study's search space.")
    return dict(params)


def trial_config(design: Design, params: dict, source: Path | str) -> DictConfig:
    """The base config with a trial's values: each sampled group's shipped option first (then the
    values typed inside it), then every other value; checked as a stored config is."""
    from hydra import compose

    data = copy.deepcopy(design.base)
    data["tune"] = None
    groups = [key for key in params if is_group(key)]
    for group in groups:
        name = str(params[group])
        if name not in group_options(group) or not OPTION.fullmatch(name):
            raise ConfigError(f"{source}: {group}={name} is not an option of conf/{group}/; refused.")
        node = compose("train", overrides=[f"{group}={name}"])[group]
        data[group] = OmegaConf.to_container(node, resolve=True)
    values = {k: v for k, v in design.pinned.items() if k.split(".")[0] in groups}
    values.update({k: v for k, v in params.items() if k not in groups})
    for key, value in values.items():
        _set(data, key, value)
    return stored_config(data, source)


def _set(data: dict, key: str, value) -> None:
    """Set an option the config has (a search key names one: no new keys)."""
    node = data
    for part in key.split(".")[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    last = key.split(".")[-1]
    if not isinstance(node, dict) or last not in node:
        hint = did_you_mean(last, list(node)) if isinstance(node, dict) else ""
        raise ConfigError(f"{key} is not a config option.{hint}")
    node[last] = value
