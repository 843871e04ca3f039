"""``cnnlab data verify dataset=...``: read every file of a dataset once and list what cannot be used."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from cnnlab.data.verify import verify
from cnnlab.errors import ConfigError

ACTIONS = ("verify",)


def main(cfg: DictConfig) -> None:
    if cfg.action not in ACTIONS:
        raise ConfigError(f"Unknown data action '{cfg.action}'; choose one of: {', '.join(ACTIONS)}.")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    checked = verify(cfg.dataset)
    for line in checked.problems:  # one plain line per file: greppable, never wrapped
        print(line)
    where = f"{checked.where}" + (f" (unpacked in {checked.unpacked})" if checked.unpacked else "")
    print(
        f"{cfg.dataset.name}: {checked.files} file(s) checked in {where}, {len(checked.problems)} unusable."
    )
    if checked.problems:
        raise SystemExit(1)
