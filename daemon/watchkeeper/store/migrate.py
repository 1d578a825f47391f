"""Bringing a database to the schema this code declares, with Alembic run in code (no alembic.ini:
the scripts ship inside the package), and refusing a database that a newer watchkeeper wrote.

Every database, SQLite or PostgreSQL, empty or old, reaches the head by the scripts in
``migrations/versions`` (an empty one from revision 0001, which writes out 0.1.0's first schema), so
``alembic upgrade head`` and ``watchkeeper migrate`` take the one path there is. watchkeeper 0.1.0
predates Alembic: it kept its schema version in SQLite's ``PRAGMA user_version`` (1 or 2), which
maps to the revision its schema is. Every step runs on the caller's connection, inside the caller's
transaction, so a failing upgrade changes nothing; on PostgreSQL an advisory lock held to the end
of that transaction makes instances that start together migrate one after the other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from watchkeeper.store import sqlite
from watchkeeper.store.errors import SchemaTooNewError, StoreError
from watchkeeper.store.schema import instant_text

SCRIPTS = Path(__file__).with_name("migrations")

ALEMBIC_MARK = 3
"""SQLite ``user_version`` of every database Alembic manages. watchkeeper 0.1.0 refuses anything
above its own 2, so it never writes into a database upgraded past it."""

LEGACY_REVISIONS: dict[int, str] = {1: "0001", 2: "0002"}
"""0.1.0's ``user_version`` -> the revision its schema is."""

VERSION_TABLE = "alembic_version"
MIGRATION_LOCK = 0x77617463686B  # "watchk": the advisory lock key of migrations on PostgreSQL


@dataclass(frozen=True, slots=True)
class Found:
    """What an open database says about its schema."""

    user_version: int | None
    """SQLite's ``PRAGMA user_version``; None on other databases."""
    revisions: frozenset[str]
    """The rows of alembic_version (empty when it has none)."""
    has_tables: bool
    """Whether it holds any table (one of another program's too: it is not ours to add to)."""


@dataclass(frozen=True, slots=True)
class Steps:
    """What it takes to bring a database to the head revision; all False/None: nothing."""

    create: bool = False
    """Empty: every script runs, from the first."""
    stamp: str | None = None
    """A 0.1.0 database: record the revision its schema is before upgrading."""
    upgrade: bool = False


def plan(found: Found, known: frozenset[str], head: str, where: str) -> Steps:
    """The steps for ``found``, or the error that refuses it (SchemaTooNewError for a schema newer
    than this code knows, which is what an unknown revision means)."""
    version = found.user_version or 0
    if version > ALEMBIC_MARK:
        raise _too_new(where, f"schema version {version}", f"at most {ALEMBIC_MARK}")
    unknown = sorted(found.revisions - known)
    if unknown:
        raise _too_new(where, f"schema revision {', '.join(unknown)}", f"revision {head}")
    if found.revisions:
        return Steps() if found.revisions == {head} else Steps(upgrade=True)
    if version in LEGACY_REVISIONS:
        return Steps(stamp=LEGACY_REVISIONS[version], upgrade=True)
    if not found.has_tables and version == 0:
        return Steps(create=True, upgrade=True)
    raise StoreError(
        f"{where} holds tables but no watchkeeper schema revision: it is not a watchkeeper "
        "database, or it is damaged; restore it from a backup, or point --db at another file"
    )


def steps(conn: Connection, where: str) -> Steps:
    """What the database behind ``conn`` needs; raises what ``plan`` raises."""
    head, known = _revisions(SCRIPTS)
    return plan(_found(conn), known, head, where)


@functools.cache
def _revisions(scripts: Path) -> tuple[str, frozenset[str]]:
    """The head and every known revision, read from the scripts once per process: they ship with
    the code and do not change under it (and a read-only open then reads nothing but the
    database)."""
    config = Config()
    config.set_main_option("script_location", str(scripts))
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    if head is None:
        raise StoreError(f"no migration scripts in {scripts}: the installation is incomplete")
    return head, frozenset(rev.revision for rev in script.walk_revisions())


def upgrade(conn: Connection, where: str) -> Steps:
    """Bring the database to the head revision, inside the transaction ``conn`` is in; the steps
    it took."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    todo = steps(conn, where)
    config = _config(conn)
    if todo.stamp is not None:
        command.stamp(config, todo.stamp)
    if todo.upgrade:
        command.upgrade(config, "head")
    if conn.dialect.name == "sqlite" and sqlite.user_version(conn) != ALEMBIC_MARK:
        sqlite.set_user_version(conn, ALEMBIC_MARK)
    return todo


def check(conn: Connection, where: str, *, hint: str | None = None) -> None:
    """Refuse a database that is not at the head revision, for an open that may not upgrade it."""
    todo = steps(conn, where)
    if todo.create:
        raise StoreError(
            f"{where} holds no watchkeeper data yet: "
            + (hint or "nothing has run against it (`watchkeeper migrate` creates the schema)")
        )
    if todo != Steps():
        raise StoreError(
            f"{where} was written by an older watchkeeper: "
            + (hint or "open it once with write access (watchkeeper run, apply or migrate) to "
               "upgrade it, then read it")
        )  # fmt: skip


def others_live(conn: Connection, instance: str | None) -> bool:
    """Whether another instance's heartbeat is live (then a starting one must not migrate: the
    others run the schema as it is). Read under the migration lock."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    if not inspect(conn).has_table("instances"):
        return False
    rows = conn.execute(
        text("SELECT instance FROM instances WHERE expires_at > :now"),
        {"now": instant_text(_db_clock(conn))},
    )
    return any(row[0] != instance for row in rows)


def head() -> str:
    """The newest revision the scripts know."""
    return _revisions(SCRIPTS)[0]


def _db_clock(conn: Connection) -> datetime:
    now: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return now


def _config(conn: Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = conn
    return config


def _found(conn: Connection) -> Found:
    inspector = inspect(conn)
    revisions: frozenset[str] = frozenset()
    if inspector.has_table(VERSION_TABLE):
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))  # noqa: S608
        revisions = frozenset(row[0] for row in rows)
    return Found(
        user_version=sqlite.user_version(conn) if conn.dialect.name == "sqlite" else None,
        revisions=revisions,
        has_tables=bool(inspector.get_table_names()),
    )


def _too_new(where: str, found: str, known: str) -> SchemaTooNewError:
    return SchemaTooNewError(
        f"{where} has {found}, newer than this watchkeeper knows ({known}): run the newer "
        "watchkeeper, or point --db at another file"
    )
