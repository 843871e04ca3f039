"""The protocol every training feature follows (:class:`Part`); see :mod:`cnnlab.train.parts`."""

from __future__ import annotations


class Part:
    """A training feature: its state and the fit-loop hooks it needs (all optional)."""

    name = ""  # its key in last.pt
    has_state = True  # saved in last.pt under ``name`` and put back on a resume

    def on_epoch_start(self, run, epoch: int) -> None:
        """Before the epoch trains."""

    def on_train_end(self, run, epoch: int) -> None:
        """After the epoch's steps, before validation."""

    def on_epoch_end(self, run, epoch: int, row: dict) -> str | None:
        """After validation (``row`` is the epoch's metrics row), before the checkpoint; a line to log."""

    def on_fit_end(self, run, epoch: int) -> None:
        """After the last epoch, before the test split is scored."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Put back what :meth:`state_dict` returned."""
