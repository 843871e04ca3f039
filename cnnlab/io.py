"""Reading and writing files safely: every file cnnlab writes goes through :func:`atomic_write` (or
:func:`open_append`, :func:`make_dirs`), and every file it reads from a run or a dataset is opened with
:func:`open_regular`.

A crash, a full disk or a signal mid-write leaves the previous file at its path untouched. Writes into a
folder cnnlab holds (a run, a sweep or a study folder: see :func:`confined`) never go through a symbolic
link at any depth below that folder: each folder on the way is opened with ``O_NOFOLLOW`` relative to
its parent's descriptor, so a ``report/`` or ``report/evaluate_x/`` linked elsewhere is refused, with no
window between the check and the write. A link where the file itself goes is replaced, not written
through. Readers never block: a FIFO or device is refused before anything is read from it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from cnnlab.errors import DataError

TEMP_SUFFIX = ".tmp"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_roots: list[Path] = []  # folders whose insides writes may not reach through a link (innermost last)


@contextlib.contextmanager
def confined(root: Path) -> Iterator[None]:
    """Within the block, a write below ``root`` refuses a symbolic link at any folder between ``root``
    and the file (``root`` itself, and the folders above it, may be links: they are the user's choice).
    :func:`cnnlab.run.lock.hold` confines every folder it locks."""
    root = Path(os.path.abspath(root))
    _roots.append(root)
    try:
        yield
    finally:
        _roots.remove(root)


def _root_of(folder: Path) -> Path | None:
    """The innermost confined folder holding ``folder`` (itself included), or None."""
    holding = [r for r in _roots if folder == r or r in folder.parents]
    return max(holding, key=lambda r: len(r.parts), default=None)


def _refuse_link(path: Path, root: Path) -> DataError:
    return DataError(
        f"{path} is a symbolic link (to {os.readlink(path)}); cnnlab writes only inside {root}: replace the "
        "link with a real folder, or use another folder."
    )


def _open_dir(folder: Path) -> int:
    """A descriptor of ``folder``, created as needed. Below a confined root every step is opened with
    ``O_NOFOLLOW`` from the one before (a link there is refused); elsewhere the folder is opened as the
    user named it."""
    folder = Path(os.path.abspath(folder))
    root = _root_of(folder)
    if root is None:
        folder.mkdir(parents=True, exist_ok=True)
        return os.open(folder, _DIR_FLAGS)
    root.mkdir(parents=True, exist_ok=True)
    fd, here = os.open(root, _DIR_FLAGS), root
    try:
        for name in folder.relative_to(root).parts:
            here = here / name
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=fd)
            try:
                step = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                    raise _refuse_link(here, root) from None
                raise OSError(exc.errno, exc.strerror, str(here)) from None
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(folder: Path) -> Path:
    """``mkdir -p folder``, refusing a link on the way below a confined root (see :func:`confined`)."""
    os.close(_open_dir(Path(folder)))
    return Path(folder)


def _mode(dir_fd: int, name: str) -> int:
    """The permissions a plain ``open(path, "w")`` would give: the replaced file's, else 0666 less the
    umask (a link at the path does not lend its target's)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return st.st_mode & 0o777
    return 0o666 & ~_umask()


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

    The folder is reached as :func:`_open_dir` does (no link below a confined root), and the temp file
    and the rename are relative to that folder's descriptor, so nothing can swap a link in between.
    """
    path = Path(path)
    dir_fd = _open_dir(path.parent)
    tmp = f"{temp_name(path)}{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        mode = _mode(dir_fd, path.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)  # fmt: skip
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            if (
                isinstance(exc, OSError) and exc.errno is not None and exc.filename is None
            ):  # write() names none
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
    finally:
        os.close(dir_fd)


def open_append(path: Path):
    """``path`` opened to append text (created if missing), reached as :func:`atomic_write` reaches its
    folder; a link at the file itself is refused rather than followed."""
    path = Path(path)
    dir_fd = _open_dir(path.parent)
    try:
        fd = os.open(path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                     dir_fd=dir_fd)  # fmt: skip
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"{path} is a symbolic link; cnnlab appends only to a real file: remove the "
                            "link.") from None  # fmt: skip
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(dir_fd)
    return os.fdopen(fd, "a", encoding="utf-8", newline="")


def open_regular(path: Path, mode: str = "rb"):
    """``path`` opened for reading if it is a regular file (a link to one counts); a FIFO, socket,
    device or folder is refused with one line instead of blocking or reading forever."""
    if mode not in ("rb", "r"):
        raise ValueError(f"open_regular reads only, not {mode!r}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once, unread
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind != stat.S_IFREG:
            raise NotRegularFile(path, _KINDS.get(kind, "a special file"))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, mode, **({} if mode == "rb" else {"encoding": "utf-8"}))


class NotRegularFile(DataError):
    """A FIFO, socket, device or folder where a file was to be read."""

    def __init__(self, path: Path, kind: str):
        super().__init__(f"{path} is {kind}, not a regular file; cnnlab reads only regular files: remove it "
                         "or name a real file.")  # fmt: skip
        self.kind = kind


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}  # fmt: skip


def read_regular_bytes(path: Path) -> bytes:
    with open_regular(path) as f:
        return f.read()


def read_regular_text(path: Path) -> str:
    """A regular file's text (UTF-8); see :func:`open_regular`."""
    return read_regular_bytes(path).decode("utf-8")


def is_regular(path: Path) -> bool:
    """``path`` is a regular file or a link to one (what a folder scan may pick up; no FIFO, no device)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


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
