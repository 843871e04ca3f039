"""Ctrl-C, SIGTERM and SIGUSR2: finish the current step, checkpoint, exit with 128 + signal number.

A cluster sends SIGTERM before preemption (SLURM with submitit sends SIGUSR2 before the time limit);
the exit status (130 for SIGINT, 143 for SIGTERM) tells a scheduler the run did not finish. A second
Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import threading

from cnnlab.errors import CnnlabError


class Interrupted(CnnlabError):
    """The run was stopped by a signal after writing a checkpoint it can resume from."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class SignalGuard:
    """Within ``with SignalGuard() as guard``, SIGINT/SIGTERM set ``guard.signum`` instead of killing."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR2") if hasattr(signal, n))

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        self.signum = signum

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
