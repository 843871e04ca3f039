"""Where a study lives: ``tune.storage``.

- null (the default): SQLite, ``study.db`` in the study folder; one machine (SQLite on a network file
  system is not safe for writers on several machines).
- an SQLAlchemy URL (``postgresql://user:pw@host/db``, ``mysql+pymysql://...``): a database server that
  workers on any machine reach; they join the study named ``tune.study``.
- Optuna's journal file (``journal:/shared/study.log``, or any path ending ``.log``): an append-only log
  on a shared file system, locked by creating a lock file with ``O_EXCL`` (Optuna's
  ``JournalFileOpenLock``, which works on NFS v3 and later), no server needed.

Trial folders go under ``tune.dir`` in every case, so with a shared storage it is a shared folder too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import optuna

from cnnlab.errors import ConfigError, DataError

JOURNAL = "journal:"
# SQLAlchemy's driver name -> (the module it imports, what to install for it)
DRIVERS = {
    "psycopg": ("psycopg", "pip install 'cnnlab[postgres]'"),  # postgresql:// in SQLAlchemy 2.1
    "psycopg2": ("psycopg2", "pip install psycopg2-binary"),
    "pymysql": ("pymysql", "pip install 'cnnlab[mysql]'"),
    "mysqldb": ("MySQLdb", "pip install 'cnnlab[mysql]' and write mysql+pymysql://"),  # mysql://
}


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL) or url.endswith(".log")


def describe(url: str) -> str:
    """``url`` fit to print: a password replaced by ***."""
    if is_journal(url):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: say so without echoing what may hold a password
        return "tune.storage"


def check(url: str) -> None:
    """A usable ``tune.storage``, one line each: a journal's folder exists, a URL parses and its driver
    is installed."""
    if is_journal(url):
        folder = Path(url.removeprefix(JOURNAL)).expanduser().parent
        if not folder.is_dir():
            raise ConfigError(f"tune.storage={url}: the folder {folder} does not exist; create it first.")
        return
    from sqlalchemy.engine import make_url

    try:
        driver = make_url(url).get_dialect().driver
    except Exception:
        raise ConfigError(
            "tune.storage is neither an SQLAlchemy URL (postgresql://user@host/db, mysql+pymysql://...) "
            "nor a journal file (journal:<path> or <path>.log)."
        ) from None
    module, hint = DRIVERS.get(driver, (driver, f"pip install {driver}"))
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"tune.storage={describe(url)} needs the {module} package: {hint}.")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage of ``url``: a journal file, or a database (which must be reachable now)."""
    check(url)
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = str(Path(url.removeprefix(JOURNAL)).expanduser())
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    try:  # pool_pre_ping: a worker's connection dropped by the server while it trains is renewed
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # refused, unknown host, wrong password, not a database
        reason = " ".join(str(exc.__cause__ or exc).split())[:200]
        raise DataError(
            f"cannot open the study storage {describe(url)} ({type(exc).__name__}: {reason}); check that "
            "the server runs and the URL, user and password are right."
        ) from None


def has_study(storage: optuna.storages.BaseStorage, name: str) -> bool:
    return name in (s.study_name for s in storage.get_all_studies())
