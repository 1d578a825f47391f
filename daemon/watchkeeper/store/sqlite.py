"""The SQLite file: created private, opened read-write in WAL mode or read-only, and the reasons it
cannot be opened told in one sentence.

WAL lets ``watchkeeper status`` read while the daemon writes. The file and its -wal/-shm are mode
0600 (SQLite gives its sidecars the database's mode). Transactions are begun by the store itself
(pysqlite's implicit BEGIN skips DDL, which would make a migration non-atomic).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from functools import partial
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL

from watchkeeper.store.errors import StoreError

BUSY_TIMEOUT_MS = 5000
"""How long a writer waits for the other process (daemon vs CLI) before SQLITE_BUSY."""


def sidecars(path: Path) -> tuple[Path, ...]:
    return (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))


def create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite sees it, and tighten any of the three files that
    an older run left more open."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in sidecars(path):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            file.chmod(0o600)


def open_engine(path: Path, *, readonly: bool) -> Engine:
    connect = partial(_connect_readonly if readonly else _connect, path)
    return create_engine(
        URL.create("sqlite", database=str(path)),  # a file URL, so the pool is a QueuePool
        creator=connect,
        hide_parameters=True,  # SQLAlchemy errors would otherwise quote the access token
    )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = NORMAL")
    # Overwritten and deleted rows are zeroed, not left in free pages: old access tokens, and the
    # plain notify_urls that the masking migration rewrote.
    conn.execute("PRAGMA secure_delete = ON")
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """``mode=ro``; in a folder where SQLite may not create the WAL index (-shm) and no -wal is left
    to read, ``immutable=1`` instead: nobody can be writing there, the file alone is the data."""
    uri = path.absolute().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        if sidecars(path)[1].exists():
            raise
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None,
                               check_same_thread=False)  # fmt: skip
    return conn


def enable_wal(conn: Connection, path: Path) -> None:
    mode = conn.exec_driver_sql("PRAGMA journal_mode = WAL").scalar_one()
    conn.commit()
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: SQLite refused WAL mode (got {mode}); use a local filesystem")


def checkpoint(conn: Connection) -> None:
    """Copy the WAL into the main file now (an upgrade rewrote rows whose old text must not wait
    there for the next automatic checkpoint)."""
    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def user_version(conn: Connection) -> int:
    version: int = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
    return version


def set_user_version(conn: Connection, version: int) -> None:
    conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")


_DAMAGED = ("not a database", "malformed", "corrupt")
_READONLY = ("readonly", "read-only", "unable to open", "permission denied")


def open_error(path: Path, exc: Exception) -> StoreError:
    """One sentence for a database that cannot be opened: the file, why, and what to do."""
    cause = getattr(exc, "orig", None) or exc
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    lowered = reason.lower()
    if any(word in lowered for word in _DAMAGED):
        return StoreError(
            f"{path} is not a watchkeeper database, or it is damaged ({reason}): restore it from "
            "a backup, or point --db at another file"
        )
    if isinstance(cause, PermissionError) or any(word in lowered for word in _READONLY):
        return StoreError(
            f"{path} cannot be written ({reason}): the daemon needs write access to the file and "
            "its folder; `watchkeeper status` and `gaps` read it as it is"
        )
    return StoreError(f"{path} cannot be opened ({reason})")
