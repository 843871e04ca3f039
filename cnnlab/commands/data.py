"""``cnnlab data verify dataset=...``: read every file of a dataset once and list what cannot be used."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from cnnlab.data.verify import ACTIONS, verify
from cnnlab.errors import ConfigError


def main(cfg: DictConfig) -> None:
    if cfg.action not in ACTIONS:
        raise ConfigError(f"Unknown data action '{cfg.action}'; choose one of: {', '.join(ACTIONS)}.")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    checked, problems = verify(cfg.dataset)
    for path, problem in problems:  # one plain line per file: greppable, never wrapped
        print(f"{path}: {problem}")
    print(f"{cfg.dataset.name}: {checked} file(s) checked, {len(problems)} unusable.")
    if problems:
        raise SystemExit(1)
