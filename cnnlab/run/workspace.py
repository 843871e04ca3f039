"""Claiming a run folder for writing: one writer, nothing written through a link, no stale temp files,
and no second run started on top of an earlier one."""

from __future__ import annotations

import contextlib
import logging

from cnnlab.errors import ConfigError
from cnnlab.run import lock
from cnnlab.run.layout import RunDir

log = logging.getLogger("cnnlab")


def check_fresh(folder: RunDir, *, resume: bool, started: bool = False) -> None:
    """A new run needs a folder no run has used (one killed before its first checkpoint counts as
    unused: there is nothing to continue); ``started``: Hydra has already written ``.hydra/`` there
    for this very job, which does not count."""
    used = folder.has_training_output() if started else folder.holds_run()
    if used and not resume and not folder.never_checkpointed():
        raise ConfigError(
            f"{folder} already holds a run; continue it with `cnnlab train resume={folder}`, or start "
            "the new run in another folder (drop hydra.run.dir, or choose a new one)."
        )


@contextlib.contextmanager
def claim(folder: RunDir, *, resume: bool, writer: bool = True):
    """Within the block this process is the folder's one writer (data-parallel ranks other than 0,
    ``writer=False``, write nothing and claim nothing)."""
    if not writer:
        yield
        return
    folder.check_no_links()
    with lock.hold(folder.path):
        check_fresh(folder, resume=resume, started=True)
        if not resume and folder.never_checkpointed():  # the record of a run killed in its first epoch
            for path in (folder.status_file, folder.metrics):
                if path.is_file():
                    path.unlink()
                    log.info("removed %s, left by a run killed before its first checkpoint", path)
        for path in folder.remove_stale_temps():
            log.info("removed %s, left by a write that was killed", path)
        yield
