"""The daemon's memory: which channels it owns, when each renews, the gaps to backfill.

One SQLite file (WAL, so ``watchkeeper status`` can read while the daemon writes), reached only
through this module. Tables are declared with SQLModel, but the schema on disk is built by the
ordered, frozen SQL steps in ``MIGRATIONS`` so that a newer build opens an older database without
losing history. Callers only ever see the frozen value types (RegistryEntry, Gap, StatusRow,
Intent, AccessToken), never ORM rows.

Secrets: the store keeps the short-lived access token (so a crash loop does not burn Zoho's
refresh allowance) and nothing else secret: never refresh tokens, client secrets, or channel
verification tokens (only their digest). The file and its -wal/-shm are mode 0600.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self, get_args

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    Table,
    TypeDecorator,
    and_,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL
from sqlmodel import Field, SQLModel, create_engine

from watchkeeper.model import (
    AccessToken,
    ChannelSpec,
    ChannelState,
    ObservedChannel,
    RegistryEntry,
    format_events,
    parse_events,
    token_digest,
    utc,
)

BUSY_TIMEOUT_MS = 5000
"""How long a writer waits for the other process (daemon vs CLI) before SQLITE_BUSY."""

_STATES: frozenset[str] = frozenset(get_args(ChannelState))


class StoreError(Exception):
    """The database cannot be used as it is (the message says why and what to do)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer watchkeeper; opening it would risk its history."""


# --- instants -----------------------------------------------------------------------------------


def _instant_text(dt: datetime) -> str:
    """Fixed-width UTC ISO text: readable in the sqlite3 shell, and ordered as text as in time."""
    return utc(dt).isoformat(timespec="microseconds")


def _text_instant(text: str) -> datetime:
    return utc(datetime.fromisoformat(text))


class UTCInstant(TypeDecorator[datetime]):
    """An aware datetime stored as UTC text; naive datetimes are refused on the way in."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> str | None:
        return None if value is None else _instant_text(value)

    def process_result_value(self, value: str | None, dialect: Any) -> datetime | None:
        return None if value is None else _text_instant(value)


# --- tables -------------------------------------------------------------------------------------


class RegistryRow(SQLModel, table=True):
    __tablename__ = "registry"

    account: str = Field(primary_key=True)
    channel_id: str = Field(primary_key=True)
    state: str
    name: str | None = None
    applied: str | None = None
    """The last spec Zoho accepted, as JSON, without its token."""
    applied_token_digest: str | None = None
    expires_at: datetime | None = Field(default=None, sa_type=UTCInstant)
    lifetime_seconds: float | None = None
    renew_at: datetime | None = Field(default=None, sa_type=UTCInstant)
    failures: int = 0
    retry_at: datetime | None = Field(default=None, sa_type=UTCInstant)
    last_error: str | None = None
    terminal: bool = False
    last_renewed_at: datetime | None = Field(default=None, sa_type=UTCInstant)
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCInstant)
    """The last time Zoho showed the channel live (a listing, or a write it accepted): where a gap
    starts when it vanishes."""


class GapRow(SQLModel, table=True):
    __tablename__ = "gaps"

    id: int | None = Field(default=None, primary_key=True)
    account: str
    channel_id: str
    start: datetime = Field(sa_type=UTCInstant)
    end: datetime | None = Field(default=None, sa_type=UTCInstant)
    cause: str


class AccessTokenRow(SQLModel, table=True):
    __tablename__ = "access_tokens"

    account: str = Field(primary_key=True)
    value: str
    expires_at: datetime = Field(sa_type=UTCInstant)
    issued_at: datetime = Field(sa_type=UTCInstant)


class ConfirmationRow(SQLModel, table=True):
    __tablename__ = "confirmations"

    account: str = Field(primary_key=True)
    channel_id: str = Field(primary_key=True)
    confirmed_at: datetime = Field(sa_type=UTCInstant)


class IntentRow(SQLModel, table=True):
    __tablename__ = "intents"

    account: str = Field(primary_key=True)
    channel_id: str = Field(primary_key=True)
    action: str
    at: datetime = Field(sa_type=UTCInstant)


class ForeignRow(SQLModel, table=True):
    """A live channel the daemon does not own, as its last listing of the account showed it."""

    __tablename__ = "foreign_channels"

    account: str = Field(primary_key=True)
    channel_id: str = Field(primary_key=True)
    modules: str
    """JSON list of module API names."""


TABLES: tuple[type[SQLModel], ...] = (
    RegistryRow, GapRow, AccessTokenRow, ConfirmationRow, IntentRow, ForeignRow,
)  # fmt: skip


def _table(model: type[SQLModel]) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


# Queries go through the Core tables: typed columns, and no ORM objects to hydrate per row.
_REGISTRY = _table(RegistryRow)
_GAPS = _table(GapRow)
_TOKENS = _table(AccessTokenRow)
_CONFIRMATIONS = _table(ConfirmationRow)
_INTENTS = _table(IntentRow)
_FOREIGN = _table(ForeignRow)


# --- migrations ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step. Its SQL is frozen once released: later changes are new steps, never edits,
    because databases in the field were built by the old text."""

    version: int
    summary: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "registry, gaps, access-token cache",
        (
            """CREATE TABLE registry (
                account TEXT NOT NULL,
                channel_id TEXT NOT NULL,
                state TEXT NOT NULL,
                applied TEXT,
                applied_token_digest TEXT,
                expires_at TEXT,
                lifetime_seconds REAL,
                renew_at TEXT,
                failures INTEGER NOT NULL DEFAULT 0,
                retry_at TEXT,
                last_error TEXT,
                terminal INTEGER NOT NULL DEFAULT 0,
                last_renewed_at TEXT,
                PRIMARY KEY (account, channel_id)
            )""",
            """CREATE TABLE gaps (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                account TEXT NOT NULL,
                channel_id TEXT NOT NULL,
                start TEXT NOT NULL,
                "end" TEXT,
                cause TEXT NOT NULL
            )""",
            "CREATE INDEX gaps_by_channel ON gaps (account, channel_id)",
            'CREATE UNIQUE INDEX gaps_one_open ON gaps (account, channel_id) WHERE "end" IS NULL',
            """CREATE TABLE access_tokens (
                account TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                issued_at TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "intents, delete confirmations, foreign channels, registry name and last_seen_at",
        (
            "ALTER TABLE registry ADD COLUMN name TEXT",
            "ALTER TABLE registry ADD COLUMN last_seen_at TEXT",
            "UPDATE registry SET name = json_extract(applied, '$.name') WHERE applied IS NOT NULL",
            """CREATE TABLE confirmations (
                account TEXT NOT NULL,
                channel_id TEXT NOT NULL,
                confirmed_at TEXT NOT NULL,
                PRIMARY KEY (account, channel_id)
            )""",
            """CREATE TABLE intents (
                account TEXT NOT NULL,
                channel_id TEXT NOT NULL,
                action TEXT NOT NULL,
                at TEXT NOT NULL,
                PRIMARY KEY (account, channel_id)
            )""",
            """CREATE TABLE foreign_channels (
                account TEXT NOT NULL,
                channel_id TEXT NOT NULL,
                modules TEXT NOT NULL,
                PRIMARY KEY (account, channel_id)
            )""",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


# --- value types handed to callers --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gap:
    """A window in which a desired channel was not active: its events must be backfilled."""

    id: int
    account: str
    channel_id: str
    start: datetime
    end: datetime | None
    """None while the gap is still open."""
    cause: str


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One line of ``watchkeeper status``."""

    account: str
    channel_id: str
    name: str | None
    state: ChannelState
    expires_at: datetime | None
    next_renewal_at: datetime | None
    """The held-back retry time while a failure backs off, else the drawn renewal time."""
    last_renewed_at: datetime | None
    failures: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Intent:
    """A write call that was about to be made: still here on start-up means it may have happened."""

    account: str
    channel_id: str
    action: str
    at: datetime


# --- spec <-> JSON ------------------------------------------------------------------------------


def _spec_json(spec: ChannelSpec) -> str:
    """The applied spec without its token (account and channel id are the row's key)."""
    return json.dumps(
        {
            "events": format_events(spec.events),
            "notify_url": spec.notify_url,
            "ttl": spec.ttl.total_seconds(),
            "name": spec.name,
            "notify_on_related_action": spec.notify_on_related_action,
            "return_affected_field_values": spec.return_affected_field_values,
            "notification_condition": spec.notification_condition,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _json_spec(account: str, channel_id: str, text: str) -> ChannelSpec:
    data = json.loads(text)
    return ChannelSpec(
        account=account,
        channel_id=channel_id,
        events=parse_events(data["events"]),
        notify_url=data["notify_url"],
        ttl=timedelta(seconds=data["ttl"]),
        name=data["name"],
        notify_on_related_action=data["notify_on_related_action"],
        return_affected_field_values=data["return_affected_field_values"],
        notification_condition=data["notification_condition"],
    )


def _registry_values(entry: RegistryEntry, last_renewed_at: datetime | None) -> dict[str, Any]:
    spec = entry.applied
    digest = entry.applied_token_digest
    if spec is not None:
        if (spec.account, spec.channel_id) != (entry.account, entry.channel_id):
            raise ValueError(f"applied spec of {entry.channel_id} belongs to channel {spec.channel_id}")
        if digest is None:
            digest = token_digest(spec.account, spec.channel_id, spec.token)
    return {
        "account": entry.account,
        "channel_id": entry.channel_id,
        "state": entry.state,
        "name": None if spec is None else spec.name,
        "applied": None if spec is None else _spec_json(spec),
        "applied_token_digest": digest,
        "expires_at": entry.expires_at,
        "lifetime_seconds": None if entry.lifetime is None else entry.lifetime.total_seconds(),
        "renew_at": entry.renew_at,
        "failures": entry.failures,
        "retry_at": entry.retry_at,
        "last_error": entry.last_error,
        "terminal": entry.terminal,
        "last_renewed_at": last_renewed_at,
    }


def _checked_state(state: str) -> ChannelState:
    if state not in _STATES:
        raise StoreError(f"registry holds unknown channel state {state!r}")
    return state  # type: ignore[return-value]


_REGISTRY_KEY = ["account", "channel_id"]

_ENTRY_COLUMNS = [
    _REGISTRY.c[name]
    for name in (
        "account", "channel_id", "state", "applied", "applied_token_digest", "expires_at",
        "lifetime_seconds", "renew_at", "failures", "retry_at", "last_error", "terminal",
    )
]  # fmt: skip


def _entry(row: Any) -> RegistryEntry:
    (account, channel_id, state, applied, digest, expires_at, lifetime, renew_at, failures, retry_at,
     last_error, terminal) = row  # fmt: skip
    return RegistryEntry(
        account=account,
        channel_id=channel_id,
        state=_checked_state(state),
        applied=None if applied is None else _json_spec(account, channel_id, applied),
        applied_token_digest=digest,
        expires_at=expires_at,
        lifetime=None if lifetime is None else timedelta(seconds=lifetime),
        renew_at=renew_at,
        failures=failures,
        retry_at=retry_at,
        last_error=last_error,
        terminal=bool(terminal),
    )


def _is_channel(table: Table, account: str, channel_id: str) -> ColumnElement[bool]:
    return and_(table.c.account == account, table.c.channel_id == channel_id)


def _gap(row: Any) -> Gap:
    return Gap(id=row.id, account=row.account, channel_id=row.channel_id, start=row.start,
               end=row.end, cause=row.cause)  # fmt: skip


# --- the file -----------------------------------------------------------------------------------


def _sidecars(path: Path) -> tuple[Path, ...]:
    return (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite sees it (SQLite gives its -wal and -shm the
    database's mode), and tighten any of the three that an older run left more open."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in _sidecars(path):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            file.chmod(0o600)


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand transaction control to Store._tx (pysqlite's implicit BEGIN skips DDL, which would make
    # a migration non-atomic); set the per-connection pragmas.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _user_version(conn: Connection) -> int:
    version: int = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
    return version


class Store:
    """The SQLite store; synchronous, one caller thread at a time per instance."""

    def __init__(self, path: Path) -> None:
        """Open (creating if missing) and migrate to SCHEMA_VERSION; SchemaTooNewError leaves a
        newer database untouched."""
        self.path = path
        _create_private(path)
        self._engine: Engine = create_engine(
            URL.create("sqlite", database=str(path)),
            connect_args={"check_same_thread": False},
            hide_parameters=True,  # SQLAlchemy errors would otherwise quote the access token
        )
        event.listen(self._engine, "connect", _on_connect)
        try:
            self._migrate()
        except BaseException:
            self._engine.dispose()
            raise

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[Connection]:
        """One transaction; writers take the write lock up front (BEGIN IMMEDIATE) so that a
        concurrent writer waits on busy_timeout instead of failing a lock upgrade."""
        with self._engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def _migrate(self) -> None:
        with self._engine.connect() as conn:
            self._refuse_newer(_user_version(conn))
            mode = conn.exec_driver_sql("PRAGMA journal_mode = WAL").scalar_one()
            conn.commit()
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"{self.path}: SQLite refused WAL mode (got {mode}); use a local filesystem"
                )
        with self._tx() as conn:
            current = _user_version(conn)  # again, under the write lock: another process may have won
            self._refuse_newer(current)
            for step in MIGRATIONS:
                if step.version > current:
                    for statement in step.statements:
                        conn.exec_driver_sql(statement)
            if current != SCHEMA_VERSION:
                conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"{self.path} has schema version {version}, newer than this watchkeeper knows "
                f"({SCHEMA_VERSION}): run the newer watchkeeper, or point --db at another file"
            )

    # --- registry -------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def registry(self) -> dict[tuple[str, str], RegistryEntry]:
        with self._tx(write=False) as conn:
            rows = conn.execute(select(*_ENTRY_COLUMNS)).all()
        return {(row[0], row[1]): _entry(row) for row in rows}

    def get(self, account: str, channel_id: str) -> RegistryEntry | None:
        query = select(*_ENTRY_COLUMNS).where(_is_channel(_REGISTRY, account, channel_id))
        with self._tx(write=False) as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _entry(row)

    def put(self, entry: RegistryEntry, *, last_renewed_at: datetime | None = None) -> None:
        """Upsert; the token of ``entry.applied`` is dropped (its digest kept, computed if missing).
        ``last_renewed_at`` None keeps the stored value."""
        self.put_many((entry,), last_renewed_at=last_renewed_at)

    def put_many(
        self, entries: Iterable[RegistryEntry], *, last_renewed_at: datetime | None = None
    ) -> None:
        """``put`` for a whole batch in one transaction (a pass renews thousands)."""
        values = [_registry_values(entry, last_renewed_at) for entry in entries]
        if not values:
            return
        insert = sqlite_insert(_REGISTRY)
        changed: dict[str, Any] = {
            key: insert.excluded[key] for key in values[0] if key not in _REGISTRY_KEY
        }
        changed["last_renewed_at"] = func.coalesce(
            insert.excluded.last_renewed_at, _REGISTRY.c.last_renewed_at
        )
        statement = insert.on_conflict_do_update(index_elements=_REGISTRY_KEY, set_=changed)
        with self._tx() as conn:
            conn.execute(statement, values)

    def remove(self, account: str, channel_id: str) -> None:
        with self._tx() as conn:
            conn.execute(delete(_REGISTRY).where(_is_channel(_REGISTRY, account, channel_id)))

    def mark_seen(self, account: str, channel_ids: Iterable[str], at: datetime) -> None:
        """Record that Zoho showed these channels live at ``at`` (one transaction)."""
        seen = _instant_text(at)
        params = [(seen, account, channel_id) for channel_id in channel_ids]
        if not params:
            return
        with self._tx() as conn:
            conn.exec_driver_sql(
                "UPDATE registry SET last_seen_at = ? WHERE account = ? AND channel_id = ?", params
            )

    def last_seen(self, account: str, channel_id: str) -> datetime | None:
        query = select(_REGISTRY.c.last_seen_at).where(_is_channel(_REGISTRY, account, channel_id))
        with self._tx(write=False) as conn:
            seen: datetime | None = conn.execute(query).scalar_one_or_none()
        return seen

    def status_rows(self) -> list[StatusRow]:
        c = _REGISTRY.c
        query = select(
            c.account, c.channel_id, c.name, c.state, c.expires_at, c.renew_at, c.retry_at,
            c.last_renewed_at, c.failures, c.last_error,
        ).order_by(c.account, c.channel_id)  # fmt: skip
        with self._tx(write=False) as conn:
            rows = conn.execute(query).all()
        return [
            StatusRow(
                account=row.account,
                channel_id=row.channel_id,
                name=row.name,
                state=_checked_state(row.state),
                expires_at=row.expires_at,
                next_renewal_at=row.retry_at if row.failures and row.retry_at else row.renew_at,
                last_renewed_at=row.last_renewed_at,
                failures=row.failures,
                last_error=row.last_error,
            )
            for row in rows
        ]

    def clear_retries(self) -> None:
        """On reload: channels held back by a terminal failure are retried on the next pass (their
        failure count and last error stay for ``status``)."""
        with self._tx() as conn:
            conn.execute(update(_REGISTRY).where(_REGISTRY.c.terminal.is_(True)).values(retry_at=None))

    # --- intents --------------------------------------------------------------------------------

    def begin(self, account: str, channel_ids: Iterable[str], action: str, at: datetime) -> None:
        """Journal a write call before it is made (``done`` clears it once its answer is recorded)."""
        values = [
            {"account": account, "channel_id": cid, "action": action, "at": at} for cid in channel_ids
        ]
        if not values:
            return
        insert = sqlite_insert(_INTENTS)
        statement = insert.on_conflict_do_update(
            index_elements=["account", "channel_id"],
            set_={"action": insert.excluded.action, "at": insert.excluded.at},
        )
        with self._tx() as conn:
            conn.execute(statement, values)

    def done(self, account: str, channel_ids: Iterable[str]) -> None:
        params = [(account, channel_id) for channel_id in channel_ids]
        if not params:
            return
        with self._tx() as conn:
            conn.exec_driver_sql("DELETE FROM intents WHERE account = ? AND channel_id = ?", params)

    def pending_intents(self) -> list[Intent]:
        c = _INTENTS.c
        query = select(c.account, c.channel_id, c.action, c.at).order_by(c.at, c.account, c.channel_id)
        with self._tx(write=False) as conn:
            rows = conn.execute(query).all()
        return [
            Intent(account=r.account, channel_id=r.channel_id, action=r.action, at=r.at) for r in rows
        ]

    # --- foreign channels (for ``status``, which runs in another process) -----------------------

    def set_foreign(self, account: str, channels: Iterable[ObservedChannel]) -> None:
        """Replace the account's foreign channels with those of its latest listing."""
        values = [
            {"account": account, "channel_id": c.channel_id, "modules": json.dumps(c.modules)}
            for c in channels
        ]
        with self._tx() as conn:
            conn.execute(delete(_FOREIGN).where(_FOREIGN.c.account == account))
            if values:
                conn.execute(_FOREIGN.insert(), values)

    def foreign(self) -> list[tuple[str, str, list[str]]]:
        """(account, channel_id, modules) of every foreign channel, as ``status --json`` shows them."""
        c = _FOREIGN.c
        with self._tx(write=False) as conn:
            rows = conn.execute(
                select(c.account, c.channel_id, c.modules).order_by(c.account, c.channel_id)
            )
            return [(row.account, row.channel_id, json.loads(row.modules)) for row in rows]

    # --- gaps -----------------------------------------------------------------------------------

    def open_gap(self, account: str, channel_id: str, start: datetime, cause: str) -> Gap:
        """Open a gap, or return the one already open for this channel (its start and cause win:
        the earliest knowledge of the outage is the one to backfill from)."""
        with self._tx() as conn:
            existing = self._open_gap(conn, account, channel_id)
            if existing is not None:
                return existing
            result = conn.execute(
                sqlite_insert(_GAPS).values(
                    account=account, channel_id=channel_id, start=start, cause=cause
                )
            )
            gap_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        if gap_id is None:
            raise StoreError("SQLite returned no id for a new gap")
        return Gap(
            id=gap_id, account=account, channel_id=channel_id, start=utc(start), end=None, cause=cause
        )

    def close_gap(self, account: str, channel_id: str, end: datetime) -> Gap | None:
        """Close the channel's open gap, if any. An end before the start (clock skew corrections)
        is clamped to the start rather than recording a negative window."""
        with self._tx() as conn:
            gap = self._open_gap(conn, account, channel_id)
            if gap is None:
                return None
            closed = Gap(
                gap.id, gap.account, gap.channel_id, gap.start, max(utc(end), gap.start), gap.cause
            )
            conn.execute(update(_GAPS).where(_GAPS.c.id == gap.id).values(end=closed.end))
        return closed

    def open_gaps(self) -> list[Gap]:
        """Every gap not closed yet: the engine keeps their keys in memory."""
        query = select(_GAPS).where(_GAPS.c.end.is_(None)).order_by(_GAPS.c.start, _GAPS.c.id)
        with self._tx(write=False) as conn:
            return [_gap(row) for row in conn.execute(query).all()]

    def gaps(self, *, since: datetime | None = None, channel_id: str | None = None) -> list[Gap]:
        """Gaps oldest first; ``since`` keeps those still open or ended after it."""
        query = select(_GAPS).order_by(_GAPS.c.start, _GAPS.c.id)
        if since is not None:
            query = query.where(_GAPS.c.end.is_(None) | (_GAPS.c.end > since))
        if channel_id is not None:
            query = query.where(_GAPS.c.channel_id == channel_id)
        with self._tx(write=False) as conn:
            return [_gap(row) for row in conn.execute(query).all()]

    @staticmethod
    def _open_gap(conn: Connection, account: str, channel_id: str) -> Gap | None:
        query = select(_GAPS).where(_is_channel(_GAPS, account, channel_id), _GAPS.c.end.is_(None))
        row = conn.execute(query).one_or_none()
        return None if row is None else _gap(row)

    # --- access-token cache ---------------------------------------------------------------------

    def token_cache(self, account: str) -> StoreTokenCache:
        return StoreTokenCache(self, account)

    def _load_token(self, account: str) -> AccessToken | None:
        c = _TOKENS.c
        query = select(c.value, c.expires_at, c.issued_at).where(c.account == account)
        with self._tx(write=False) as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            return None
        return AccessToken(value=row.value, expires_at=row.expires_at, issued_at=row.issued_at)

    def _save_token(self, account: str, token: AccessToken) -> None:
        insert = sqlite_insert(_TOKENS).values(
            account=account, value=token.value, expires_at=token.expires_at, issued_at=token.issued_at
        )
        statement = insert.on_conflict_do_update(
            index_elements=["account"],
            set_={key: insert.excluded[key] for key in ("value", "expires_at", "issued_at")},
        )
        with self._tx() as conn:
            conn.execute(statement)

    # --- mass-delete confirmations --------------------------------------------------------------

    def confirm_deletes(self, ids: Iterable[tuple[str, str]], at: datetime) -> None:
        """Record ``apply --allow-mass-delete`` for exactly these (account, channel_id)."""
        values = [{"account": a, "channel_id": c, "confirmed_at": at} for a, c in ids]
        if not values:
            return
        insert = sqlite_insert(_CONFIRMATIONS)
        statement = insert.on_conflict_do_update(
            index_elements=["account", "channel_id"], set_={"confirmed_at": insert.excluded.confirmed_at}
        )
        with self._tx() as conn:
            conn.execute(statement, values)

    def confirmed_deletes(self) -> frozenset[tuple[str, str]]:
        with self._tx(write=False) as conn:
            rows = conn.execute(select(_CONFIRMATIONS.c.account, _CONFIRMATIONS.c.channel_id)).all()
        return frozenset((row[0], row[1]) for row in rows)

    def clear_confirmations(self, ids: Iterable[tuple[str, str]] | None = None) -> None:
        """Forget these confirmations, or all of them when ``ids`` is None."""
        with self._tx() as conn:
            if ids is None:
                conn.execute(delete(_CONFIRMATIONS))
                return
            params = list(ids)
            if params:
                conn.exec_driver_sql(
                    "DELETE FROM confirmations WHERE account = ? AND channel_id = ?", params
                )


class StoreTokenCache:
    """``auth.TokenCache`` for one account, kept in the store so that a restart reuses a live
    access token instead of spending one of Zoho's 10 refreshes per 10 minutes."""

    def __init__(self, store: Store, account: str) -> None:
        self._store = store
        self._account = account

    def load(self) -> AccessToken | None:
        return self._store._load_token(self._account)

    def save(self, token: AccessToken) -> None:
        self._store._save_token(self._account, token)
