"""``cnnlab evaluate run=<dir>``: the test-split report of a finished run, written to ``<run>/report/``
with the run's page ``report/index.html``."""

from __future__ import annotations

from cnnlab.errors import ConfigError
from cnnlab.report.evaluate import write_report
from cnnlab.report.html import write_run_page
from cnnlab.report.source import open_run


def main(cfg) -> dict:
    for key, low in (("bins", 1), ("worst", 0), ("pairs", 0)):
        if not isinstance(cfg[key], int) or cfg[key] < low:
            raise ConfigError(f"{key} must be an integer of at least {low}, got {cfg[key]!r}.")
    run, device = open_run(cfg)
    metrics = write_report(
        run, device, precision=str(cfg.precision), data_root=cfg.data_root, bins=cfg.bins,
        worst=cfg.worst, pairs=cfg.pairs, tensorboard=cfg.tensorboard,
    )  # fmt: skip
    print(f"wrote {write_run_page(run.run_dir)}")
    return metrics
