"""One writer per folder: an OS file lock (``flock``) on ``<folder>/.cnnlab.lock``.

The kernel releases the lock when the process dies, so a ``kill -9`` leaves no stale lock behind. The
lock file names the holder (process id, host, command) so a refused second writer can say who it is.
Within a process the lock is re-entrant (the CLI holds a run's lock while Hydra starts the job, and
``train`` holds it again): :func:`hold` counts, and the lock goes when the outermost hold ends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import sys
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.io import confined
from cnnlab.run.layout import RunDir

log = logging.getLogger("cnnlab")
_held: dict[str, list[int]] = {}  # real path of the folder -> [descriptor holding its lock, hold count]


class FolderLocked(CnnlabError):
    """Another process is writing the folder."""


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _describe(lock_file: Path) -> str:
    try:
        text = lock_file.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def hold(folder: Path, *, what: str = "run"):
    """Hold the lock of ``folder`` (created if needed) within the block.

    Raises :class:`FolderLocked` with one line naming the holder when another process has it.
    """
    key = _key(folder)
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [_lock(Path(folder), what), 1]
    try:
        with confined(Path(folder)):  # and no write below it goes through a link
            yield
    finally:
        _held[key][1] -= 1
        if not _held[key][1]:
            os.close(_held.pop(key)[0])  # closing the descriptor drops the flock


def descriptor(folder: Path) -> int | None:
    """The descriptor holding ``folder``'s lock in this process, or None. A child process given a copy
    of it (see :func:`inherited`) shares the lock: it stays held until every holder has exited."""
    held = _held.get(_key(folder))
    return None if held is None else held[0]


@contextlib.contextmanager
def inherited(folder: Path, fd: int):
    """In a worker process: hold ``folder``'s lock through ``fd``, the parent's descriptor passed down, so
    the folder stays locked while the worker lives even if the parent is killed. The descriptor is left
    open when the block ends: the worker holds the lock until its very exit."""
    key = _key(folder)
    _held[key] = [fd, 1]
    try:
        with confined(Path(folder)):
            yield
    finally:
        del _held[key]


def _lock(folder: Path, what: str) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = RunDir(folder).lock_file
    if lock_file.is_symlink():
        lock_file.unlink()
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderLocked(_busy(folder, what)) from None
    except OSError as exc:  # a file system without locks (some network mounts): go on, unguarded
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            raise
        log.warning("%s does not support file locks (%s): nothing stops a second writer there", folder,
                    exc.strerror)  # fmt: skip
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:300]}\n".encode())
    return fd


def check_free(folder: Path, *, what: str = "run") -> None:
    """Refuse now, writing nothing, when another process holds ``folder``'s lock."""
    if is_locked(folder):
        raise FolderLocked(_busy(folder, what))


def _busy(folder: Path, what: str) -> str:
    return (
        f"The {what} folder {folder} is being written by {_describe(RunDir(folder).lock_file)}; wait for "
        "it to finish (or stop it), or use another folder."
    )


def is_locked(folder: Path) -> bool:
    """Another process holds ``folder``'s lock right now (this process's own locks do not count)."""
    lock_file = RunDir(folder).lock_file
    if _key(folder) in _held or not lock_file.is_file():
        return False
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
