"""Queries on leases and heartbeats. Every instant is the database's (``now()``), never an
instance's: instances whose clocks disagree still agree on who holds what.

Times are stored as the schema's fixed-width UTC text, so the database's clock is rendered in that
form (``db_now``) and compared as text, which orders as time does.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Connection, delete, literal_column, select, update
from sqlalchemy.engine import Dialect

from watchkeeper.store.errors import LeaseLost
from watchkeeper.store.schema import INSTANCES, LEASES, UTCInstant
from watchkeeper.store.upsert import insert_missing, upsert
from watchkeeper.values import Board, InstanceBeat, LeaseState

_L = LEASES.c
_I = INSTANCES.c
_EPOCH_ZERO = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def db_now(dialect: Dialect, plus_seconds: float = 0.0) -> ColumnElement[datetime]:
    """The database's clock (plus a few seconds) as the schema's instant text."""
    seconds = float(plus_seconds)
    if dialect.name == "postgresql":
        sql = (
            f"to_char((now() AT TIME ZONE 'UTC') + interval '{seconds:.6f} seconds', "
            '\'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"\')'
        )
    elif dialect.name == "sqlite":
        sql = f"(strftime('%Y-%m-%dT%H:%M:%f', 'now', '{seconds:+.3f} seconds') || '000+00:00')"
    else:
        raise NotImplementedError(f"no clock for the {dialect.name} dialect")
    return literal_column(sql, type_=UTCInstant)


def beat(conn: Connection, instance: str, digest: str, ttl: float) -> None:
    """Record that ``instance`` is alive for ``ttl`` more seconds, running state file ``digest``;
    heartbeats expired for a day (instances killed long ago) are dropped."""
    statement = upsert(conn.dialect, INSTANCES, ("instance",), ("expires_at", "digest")).values(
        instance=instance,
        expires_at=db_now(conn.dialect, ttl),
        digest=digest,
        started_at=db_now(conn.dialect),
    )
    conn.execute(statement)
    conn.execute(delete(INSTANCES).where(_I.expires_at < db_now(conn.dialect, -86400)))


def leave(conn: Connection, instance: str) -> None:
    conn.execute(delete(INSTANCES).where(_I.instance == instance))


def board(conn: Connection) -> Board:
    """The database's clock, every lease and every heartbeat, as one transaction sees them."""
    now = conn.execute(select(db_now(conn.dialect))).scalar_one()
    leases = {
        row.account: LeaseState(row.account, row.holder, row.epoch, row.expires_at)
        for row in conn.execute(select(_L.account, _L.holder, _L.epoch, _L.expires_at))
    }
    beats = [
        InstanceBeat(row.instance, row.expires_at, row.digest)
        for row in conn.execute(select(_I.instance, _I.expires_at, _I.digest).order_by(_I.instance))
    ]
    return Board(now, leases, beats)


def take(conn: Connection, account: str, instance: str, ttl: float) -> LeaseState | None:
    """The account's lease for ``instance`` with a new epoch, if it is free (released or expired);
    None if another instance holds it. Two instances racing for it: the row lock makes the second
    re-read the row, find it held, and get None."""
    conn.execute(
        insert_missing(conn.dialect, LEASES, ("account",)),
        {"account": account, "holder": None, "epoch": 0, "expires_at": _EPOCH_ZERO},
    )
    now = db_now(conn.dialect)
    statement = (
        update(LEASES)
        .where(_L.account == account, _L.holder.is_(None) | (_L.expires_at <= now))
        .values(holder=instance, epoch=_L.epoch + 1, expires_at=db_now(conn.dialect, ttl))
        .returning(_L.epoch, _L.expires_at)
    )
    row = conn.execute(statement).one_or_none()
    return None if row is None else LeaseState(account, instance, row.epoch, row.expires_at)


def renew(conn: Connection, instance: str, ttl: float) -> dict[str, LeaseState]:
    """Extend every lease ``instance`` still holds (one statement whatever their number); what is
    missing from the answer was lost."""
    statement = (
        update(LEASES)
        .where(_L.holder == instance, _L.expires_at > db_now(conn.dialect))
        .values(expires_at=db_now(conn.dialect, ttl))
        .returning(_L.account, _L.epoch, _L.expires_at)
    )
    return {
        row.account: LeaseState(row.account, instance, row.epoch, row.expires_at)
        for row in conn.execute(statement)
    }


def release(conn: Connection, account: str, instance: str, epoch: int) -> bool:
    """Give the lease back at once (its epoch stays: the next holder's is one more)."""
    statement = (
        update(LEASES)
        .where(_L.account == account, _L.holder == instance, _L.epoch == epoch)
        .values(holder=None, expires_at=db_now(conn.dialect))
    )
    return conn.execute(statement).rowcount == 1


def fence(conn: Connection, account: str, epoch: int) -> None:
    """Inside a write transaction: the lease of ``account`` is still at ``epoch``, held and not
    expired, or LeaseLost. The row stays share-locked to the commit, so a taker waits for this
    transaction to end: no write of a stale holder can land after the lease changed hands."""
    query = (
        select(_L.account)
        .where(
            _L.account == account,
            _L.epoch == epoch,
            _L.holder.is_not(None),
            _L.expires_at > db_now(conn.dialect),
        )
        .with_for_update(read=True)
    )
    if conn.execute(query).one_or_none() is None:
        raise LeaseLost(account, epoch)


def live(conn: Connection) -> list[str]:
    """The instances whose heartbeat has not expired."""
    query = select(_I.instance).where(_I.expires_at > db_now(conn.dialect)).order_by(_I.instance)
    return list(conn.execute(query).scalars())


def holders(conn: Connection) -> list[LeaseState]:
    """Every lease, for ``status``."""
    query = select(_L.account, _L.holder, _L.epoch, _L.expires_at).order_by(_L.account)
    return [LeaseState(r.account, r.holder, r.epoch, r.expires_at) for r in conn.execute(query)]
