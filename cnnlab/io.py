"""Writing files safely: every file cnnlab writes goes through :func:`atomic_write`.

A crash, a full disk or a signal mid-write leaves the previous file at its path untouched, and a write
never follows a symbolic link out of the folder it was aimed at: a link where a file goes is replaced,
not written through.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process umask, read without changing it (Linux's /proc), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_name(path: Path) -> str:
    """The prefix of the temporary files :func:`atomic_write` makes for ``path`` (for clean-up)."""
    return f".{path.name}."


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, fsync, then rename into place.

    The file gets the permissions a plain ``open(path, "w")`` would give it (the replaced file's, else
    0666 less the umask), not the owner-only 0600 of temp files. A symbolic link at ``path`` is
    replaced by the file, never followed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        mode = 0o666 & ~_umask()
    else:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_name(path), suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:  # write() names none
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str))


def format_value(value):
    """How every CSV cnnlab writes spells a float: 6 significant digits."""
    return f"{value:.6g}" if isinstance(value, float) else value


def csv_text(header: list[str], rows: Iterable[Iterable]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([[format_value(v) for v in row] for row in rows])
    return buf.getvalue()


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable]) -> None:
    write_text(path, csv_text(header, rows))
