"""The search space: ``tune.params`` in Hydra's sweep syntax, read as Optuna distributions.

==========================================  ==============================================
``choice(sgd, adamw)``                      CategoricalDistribution (any override value)
``interval(0.0, 0.5)``                      FloatDistribution(0.0, 0.5)
``tag(log, interval(1e-4, 0.1))``           FloatDistribution(1e-4, 0.1, log=True)
``int(interval(8, 64))``                    IntDistribution(8, 64) (``tag(log, ...)`` too)
``range(32, 257, 32)``                      IntDistribution(32, 256, step=32): the values range() gives
==========================================  ==============================================

A sampled value becomes an override (``optimizer.lr=0.0031``, ``optimizer=adamw``), so a group choice,
a nested key and a list all work as on the command line.
"""

from __future__ import annotations

import re

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from cnnlab.config import override_quoted
from cnnlab.errors import ConfigError

SYNTAX = (
    "use choice(a, b, ...), interval(low, high), int(interval(low, high)) or range(start, stop, step), "
    "with tag(log, ...) for a log scale"
)
PLAIN = re.compile(r"[\w.:/+-]+")  # a value Hydra reads back as itself without quotes


def parse_space(params: dict) -> dict[str, BaseDistribution]:
    """``tune.params`` as distributions, in the order given; one line naming the param when one is wrong."""
    if not params:
        raise ConfigError(
            "Nothing to tune: give a preset (tune=fashion_mnist) or search params on the command line, "
            "e.g. 'optimizer.lr=tag(log, interval(1e-4, 0.1))' 'trainer.batch_size=choice(64, 128)'."
        )
    parser = OverridesParser.create()
    space = {}
    for key, text in params.items():
        try:
            override = parser.parse_override(f"{key}={text}")
        except Exception as exc:  # Hydra's grammar errors
            raise ConfigError(
                f"tune.params.{key}: cannot read '{text}' ({str(exc).splitlines()[0]}); {SYNTAX}."
            ) from None
        if not override.is_sweep_override():
            raise ConfigError(f"tune.params.{key}: '{text}' is one value, not a search space; {SYNTAX}.")
        space[str(key)] = distribution(str(key), override)
    return space


def distribution(key: str, override) -> BaseDistribution:
    sweep = override.value()
    tags = set(sweep.tags)
    if tags - {"log"}:
        raise ConfigError(f"tune.params.{key}: unknown tag {', '.join(sorted(tags - {'log'}))}; {SYNTAX}.")
    log = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        choices = list(sweep.list)
        if log or any(isinstance(c, dict | list) for c in choices):
            raise ConfigError(f"tune.params.{key}: choice() takes plain values (no lists, no log tag).")
        return CategoricalDistribution(choices)
    if isinstance(sweep, RangeSweep):
        values = sorted(override.sweep_iterator())
        if len(values) < 2:
            raise ConfigError(f"tune.params.{key}: '{override.input_line}' gives {len(values)} value(s); "
                              "a range to search needs two or more.")  # fmt: skip
        step = abs(sweep.step)
        if all(isinstance(v, int) for v in (*values, step)):
            return _checked(key, IntDistribution, values[0], values[-1], log=log, step=step)
        return _checked(
            key, FloatDistribution, float(values[0]), float(values[-1]), log=log, step=float(step)
        )
    assert isinstance(sweep, IntervalSweep)
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):  # int(interval(...))
        return _checked(key, IntDistribution, sweep.start, sweep.end, log=log)
    return _checked(key, FloatDistribution, float(sweep.start), float(sweep.end), log=log)


def _checked(key: str, kind, low, high, *, log: bool, step=None) -> BaseDistribution:
    if low >= high:
        raise ConfigError(f"tune.params.{key}: the low end {low} must be below the high end {high}.")
    if log and low <= 0:
        raise ConfigError(f"tune.params.{key}: a log scale needs a low end above 0, got {low}.")
    if log and step not in (None, 1):
        raise ConfigError(f"tune.params.{key}: a log scale cannot have a step ({step}).")
    options = {"log": True} if log else {} if step is None else {"step": step}
    try:
        return kind(low, high, **options)
    except ValueError as exc:  # e.g. a float step that does not divide the range
        raise ConfigError(f"tune.params.{key}: {exc}") from None


def suggest(trial, space: dict[str, BaseDistribution]) -> list[str]:
    """Ask ``trial`` for a value of every param; return them as overrides."""
    overrides = []
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            value = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            value = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            value = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
        overrides.append(f"{key}={override_value(value)}")
    return overrides


def corners(space: dict[str, BaseDistribution]) -> list[list[str]]:
    """Overrides that together try every choice and both ends of every range (to check them all before
    the study starts): the first values of all params, then each other value of one param at a time."""
    first = {key: _values(dist)[0] for key, dist in space.items()}
    tries = [first]
    for key, dist in space.items():
        tries += [{**first, key: value} for value in _values(dist)[1:]]
    return [[f"{key}={override_value(value)}" for key, value in values.items()] for values in tries]


def _values(dist: BaseDistribution) -> list:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def override_value(value) -> str:
    """A sampled value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if text.isascii() and PLAIN.fullmatch(text):  # Hydra's lexer takes ASCII letters only unquoted
        return text
    return override_quoted(text)
