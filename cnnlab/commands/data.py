"""``cnnlab data verify|stats dataset=...``: check every file of a dataset, or describe what it holds."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from cnnlab.data.stats import dataset_stats, format_stats
from cnnlab.data.verify import verify
from cnnlab.errors import ConfigError

ACTIONS = ("verify", "stats")


def main(cfg: DictConfig) -> None:
    if cfg.action not in ACTIONS:
        raise ConfigError(f"Unknown data action '{cfg.action}'; choose one of: {', '.join(ACTIONS)}.")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if cfg.action == "stats":
        print("\n".join(format_stats(dataset_stats(cfg.dataset))))
        return
    checked = verify(cfg.dataset)
    for line in checked.problems:  # one plain line per file: greppable, never wrapped
        print(line)
    where = f"{checked.where}" + (f" (unpacked in {checked.unpacked})" if checked.unpacked else "")
    summary = f"{checked.files} file(s) checked in {where}, {len(checked.problems)} unusable."
    print(f"{cfg.dataset.name}: {summary}")
    if checked.problems:
        raise SystemExit(1)
