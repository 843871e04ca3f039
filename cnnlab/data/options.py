"""Checks of the ``dataset`` options that the schema's types cannot express, run before any data is read.

``build.check(cfg)`` calls :func:`check_dataset` with the other option checks; the data layer calls it
too, so ``cnnlab data`` and the readers used by predict and evaluate get the same one-line errors.
"""

from __future__ import annotations

from numbers import Real

from omegaconf import DictConfig, ListConfig

from cnnlab.config import DatasetConfig
from cnnlab.data.loader import SAMPLERS
from cnnlab.errors import ConfigError

IN_MEMORY = ("auto", "true", "false")
MAX_IMAGE_SIZE = 4096  # pixels a side: 16.8 M pixels an image, past any classifier's input


def setting(cfg: DictConfig, key: str):
    """``cfg[key]``, or the schema's default when a run folder's stored config predates the key (so an
    old run is rebuilt with the behaviour it had)."""
    return cfg.get(key, DatasetConfig.__dataclass_fields__[key].default)


def is_auto(value) -> bool:
    return isinstance(value, str) and value == "auto"


def in_memory_choice(value) -> str:
    """``dataset.in_memory`` as one of ``auto``, ``true``, ``false`` (the command line may give a bool)."""
    return str(value).lower()


def check_dataset(cfg: DictConfig) -> None:
    """Raise ConfigError with one sentence for a ``dataset`` value no reader could use."""
    if cfg.num_classes is not None and cfg.num_classes <= 0:
        raise ConfigError(
            "dataset.num_classes must be greater than 0, or null to count the classes; "
            f"got {cfg.num_classes}."
        )
    if not 0 < cfg.image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(
            f"dataset.image_size must be between 1 and {MAX_IMAGE_SIZE} pixels, got {cfg.image_size}; the "
            "images are resized to it: e.g. dataset.image_size=224."
        )
    for key in ("mean", "std"):
        _check_stats(key, cfg[key], cfg.channels)
    sampler, in_memory = setting(cfg, "sampler"), setting(cfg, "in_memory")
    if sampler not in SAMPLERS:
        raise ConfigError(f"Unknown dataset.sampler '{sampler}'; choose one of: {', '.join(SAMPLERS)}.")
    if in_memory_choice(in_memory) not in IN_MEMORY:
        raise ConfigError(f"Unknown dataset.in_memory '{in_memory}'; choose one of: {', '.join(IN_MEMORY)}.")


def _check_stats(key: str, value, channels: int) -> None:
    if is_auto(value):
        return
    numbers = isinstance(value, (list, ListConfig)) and all(
        isinstance(v, Real) and not isinstance(v, bool) for v in value
    )
    if not numbers:
        raise ConfigError(f"dataset.{key} must be auto or a list of numbers, one per channel; got {value}.")
    if len(value) != channels:
        raise ConfigError(
            f"dataset.mean and dataset.std need one value per channel ({channels}) or auto; "
            f"dataset.{key} has {len(value)}."
        )
    if key == "std" and min(value) <= 0:
        raise ConfigError(
            f"dataset.std values must be greater than 0 (they divide the pixels); got {list(value)}."
        )
