"""metrics.csv: one row per epoch, appended (the run folder's own record of the curves)."""

from __future__ import annotations

from cnnlab.run.layout import RunDir
from cnnlab.run.loggers import Logger


class CsvLogger(Logger):
    def __init__(self, folder: RunDir, fields: list[str]):
        self.folder = folder
        self.fields = fields

    def log_epoch(self, row: dict) -> None:
        self.folder.append_metrics(self.fields, row)
