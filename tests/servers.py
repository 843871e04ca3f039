"""Servers that tests start and stop themselves: a throwaway PostgreSQL cluster in a temp folder."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server programs (package ``postgresql``), newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(found[0]).parent if found else (Path(p).parent if (p := shutil.which("pg_ctl")) else None)


@contextlib.contextmanager
def postgres():
    """A PostgreSQL cluster in a new temp folder on a free loopback port (trust authentication: loopback
    only); yields its URL, stopped and deleted after. PostgreSQL refuses to run as root: as root the
    cluster runs as the ``postgres`` user (which Debian's package creates), in a folder of /tmp it can
    reach (pytest's own temp folders are private to root)."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, "PostgreSQL is not installed"
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)
