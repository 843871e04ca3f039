"""Ctrl-C, SIGTERM, SIGHUP and SIGUSR2: stop cleanly at any stage of a run, exit with 128 + signal number.

A cluster sends SIGTERM before preemption (SLURM with submitit sends SIGUSR2 before the time limit), a
closed terminal sends SIGHUP; the exit status (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP) tells a
scheduler the run did not finish. A second Ctrl-C aborts at once.

One :class:`SignalGuard` is held for the whole run and knows its stage. In a *polled* stage (the
training epochs) a signal only sets a flag that the loop reads after each optimizer step, so the run
can checkpoint a state that resumes exactly. In any other stage (loading data, unpacking, decoding,
building, testing, the report) nothing polls, so the handler raises :class:`StopRequested` where the
code is; it is a ``BaseException``, like ``KeyboardInterrupt``, so no ``except Exception`` on the way
(a decoder skipping bad images) mistakes it for an error, and every ``finally`` and temp-file clean-up
on the way runs. The run then reports it as :class:`Interrupted`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

from cnnlab.errors import CnnlabError


class Interrupted(CnnlabError):
    """The run was stopped by a signal; ``stage`` says where (``"training"``, ``"loading data"``, ...)."""

    def __init__(self, message: str, signum: int, stage: str | None = None):
        super().__init__(message)
        self.signum, self.stage = signum, stage
        self.exit_code = 128 + signum

    def __reduce__(self):  # a sweep job in a worker process hands it back pickled
        return type(self), (str(self), self.signum, self.stage)


class StopRequested(BaseException):
    """Raised by the handler where the code is, in a stage that does not poll for signals."""

    def __init__(self, signum: int, stage: str):
        super().__init__(signum, stage)
        self.signum, self.stage = signum, stage


class SignalGuard:
    """Within ``with SignalGuard() as guard``, SIGINT/SIGTERM/SIGHUP/SIGUSR2 do not kill the process:
    they set ``guard.signum``, and outside a polled stage also raise :class:`StopRequested`."""

    SIGNALS = tuple(
        getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR2") if hasattr(signal, n)
    )

    def __init__(self, stage: str = "starting"):
        self.signum: int | None = None
        self.stage, self.polled = stage, False
        self._previous: dict = {}
        self._pid = os.getpid()

    def requested(self) -> bool:
        return self.signum is not None

    def enter(self, stage: str, *, polled: bool = False) -> None:
        """Mark the start of ``stage``; a signal that came while nothing polled for it stops here."""
        self.stage, self.polled = stage, polled
        if self.signum is not None and not polled:
            raise StopRequested(self.signum, stage)

    @contextlib.contextmanager
    def polling(self, stage: str):
        """Within the block the code polls :meth:`requested` itself (the epochs, after each optimizer
        step): a signal only sets the flag."""
        self.enter(stage, polled=True)
        try:
            yield self
        finally:
            self.polled = False

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a forked worker (image decoding): its parent stops it
            return
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: abort now
            return  # already stopping: let the clean-up on the way run
        self.signum = signum
        if not self.polled:
            raise StopRequested(signum, self.stage)

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
