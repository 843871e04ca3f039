"""Checks of the ``dataset`` options that the schema's types cannot express, run before any data is read.

``build.check(cfg)`` calls :func:`check_dataset` with the other option checks; the data layer calls it
too, so ``cnnlab data`` and the readers used by predict and evaluate get the same one-line errors.
"""

from __future__ import annotations

from omegaconf import DictConfig

from cnnlab.errors import ConfigError


def check_dataset(cfg: DictConfig) -> None:
    """Raise ConfigError with one sentence for a ``dataset`` value no reader could use."""
    if cfg.num_classes is not None and cfg.num_classes <= 0:
        raise ConfigError(
            "dataset.num_classes must be greater than 0, or null to count the classes; "
            f"got {cfg.num_classes}."
        )
