"""The schema, declared once: these SQLModel tables are what a new database is created from, what
Alembic compares migrations against, and what every query is built on.

Instants are stored as fixed-width UTC ISO text, so that rows read the same in the sqlite3 shell
and in psql, and sort as text as they do in time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Index, MetaData, String, Table, TypeDecorator, and_
from sqlmodel import Field, SQLModel

from watchkeeper.model import utc


def instant_text(dt: datetime) -> str:
    """Fixed-width UTC ISO text: readable in a SQL shell, and ordered as text as in time."""
    return utc(dt).isoformat(timespec="microseconds")


class UTCInstant(TypeDecorator[datetime]):
    """An aware datetime stored as UTC text; naive datetimes are refused on the way in."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> str | None:
        return None if value is None else instant_text(value)

    def process_result_value(self, value: str | None, dialect: Any) -> datetime | None:
        return None if value is None else utc(datetime.fromisoformat(value))


class RegistryRow(SQLModel, table=True):
    __tablename__ = "registry"

    account: str = Field(primary_key=True)
    channel_id: str = Field(primary_key=True)
    state: str
    name: str | None = None
    applied: str | None = None
    """The last spec Zoho accepted, as JSON, without its token and with its notify_url masked."""
    applied_token_digest: str | None = None
    applied_url_digest: str | None = None
    """url_digest of the applied notify_url (the drift check compares digests)."""
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
    """A window in which a desired channel was not active; ``end`` is NULL while it is open, and
    that open row is the one record of the channel being lapsed."""

    __tablename__ = "gaps"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused, even after a restore

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


class BackfillRow(SQLModel, table=True):
    """The backfill of one gap (DESIGN.md section 9): requested, collected, done or failed. What
    was collected is kept in ``backfill_notifications`` before the first one is sent, so a crash
    resumes with the undelivered ones: a notification may arrive twice, never zero times."""

    __tablename__ = "backfills"

    gap_id: int = Field(primary_key=True)
    account: str
    channel_id: str
    state: str
    """pending, done or failed."""
    collected: bool = False
    """Zoho was asked and every notification to send is stored."""
    records: int = 0
    """Record ids redelivered (``recovered``)."""
    notifications: int = 0
    failures: int = 0
    first_failure_at: datetime | None = Field(default=None, sa_type=UTCInstant)
    retry_at: datetime | None = Field(default=None, sa_type=UTCInstant)
    """Zoho's clock: not before (the backoff after a refusal or a transient error)."""
    reason: str | None = None
    """Why it failed: scope, zoho or receiver."""
    error: str | None = None
    requested_at: datetime = Field(sa_type=UTCInstant)


class BackfillNotificationRow(SQLModel, table=True):
    __tablename__ = "backfill_notifications"

    gap_id: int = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    module: str
    operation: str
    ids: str
    """JSON list of record ids."""
    delivered_at: datetime | None = Field(default=None, sa_type=UTCInstant)


class LeaseRow(SQLModel, table=True):
    """Which instance serves an account (section 8 of DESIGN.md). ``epoch`` grows by one each time
    the account changes hands: every write of the account's rows checks it, so an instance that
    lost the lease writes nothing. ``holder`` NULL: released. Times are the database's."""

    __tablename__ = "leases"

    account: str = Field(primary_key=True)
    holder: str | None = None
    epoch: int = 0
    expires_at: datetime = Field(sa_type=UTCInstant)


class InstanceRow(SQLModel, table=True):
    """An instance's heartbeat: live while ``expires_at`` (the database's clock) is ahead. The fair
    share of accounts is counted from the live ones; ``digest`` is that of its state file's
    accounts and channels, to notice instances running different ones."""

    __tablename__ = "instances"

    instance: str = Field(primary_key=True)
    expires_at: datetime = Field(sa_type=UTCInstant)
    digest: str
    started_at: datetime = Field(sa_type=UTCInstant)


TABLES: tuple[type[SQLModel], ...] = (
    RegistryRow, GapRow, AccessTokenRow, ConfirmationRow, IntentRow, ForeignRow, BackfillRow,
    BackfillNotificationRow, LeaseRow, InstanceRow,
)  # fmt: skip


def table_of(model: type[SQLModel]) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


def is_channel(table: Table, account: str, channel_id: str) -> ColumnElement[bool]:
    """The row(s) of one channel in a table keyed by (account, channel_id)."""
    return and_(table.c.account == account, table.c.channel_id == channel_id)


# Queries go through the Core tables: typed columns, and no ORM objects to hydrate per row.
REGISTRY = table_of(RegistryRow)
GAPS = table_of(GapRow)
TOKENS = table_of(AccessTokenRow)
CONFIRMATIONS = table_of(ConfirmationRow)
INTENTS = table_of(IntentRow)
FOREIGN = table_of(ForeignRow)
BACKFILLS = table_of(BackfillRow)
BACKFILL_NOTIFICATIONS = table_of(BackfillNotificationRow)
LEASES = table_of(LeaseRow)
INSTANCES = table_of(InstanceRow)

Index("gaps_by_channel", GAPS.c.account, GAPS.c.channel_id)
_OPEN = GAPS.c.end.is_(None)
Index(
    "gaps_one_open", GAPS.c.account, GAPS.c.channel_id,
    unique=True, sqlite_where=_OPEN, postgresql_where=_OPEN,
)  # fmt: skip
"""At most one open gap per channel: the database, not only the code, keeps the ledger single."""

METADATA: MetaData = SQLModel.metadata
