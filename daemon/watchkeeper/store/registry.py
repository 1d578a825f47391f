"""Queries on the registry: the channels watchkeeper owns. Each takes the connection of the
transaction it is part of; Store decides where transactions begin and end."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from itertools import chain
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, delete, select, update
from sqlalchemy.sql.selectable import Join

from watchkeeper.model import RegistryEntry
from watchkeeper.store import chunks, codec
from watchkeeper.store.schema import GAPS, REGISTRY, is_channel
from watchkeeper.store.upsert import upsert
from watchkeeper.values import StatusRow

Key = tuple[str, str]

_KEY = ("account", "channel_id")
_R = REGISTRY.c


def _with_open_gap() -> Join:
    """The registry beside each channel's open gap, if any (at most one: gaps_one_open)."""
    return REGISTRY.outerjoin(
        GAPS,
        and_(GAPS.c.account == _R.account, GAPS.c.channel_id == _R.channel_id, GAPS.c.end.is_(None)),
    )


def _entries() -> Select[Any]:
    columns = [_R[name] for name in codec.ENTRY_COLUMNS]
    return select(*columns, GAPS.c.start.label("lapsed_since")).select_from(_with_open_gap())


def all_entries(conn: Connection, account: str | None = None) -> dict[Key, RegistryEntry]:
    query = _entries() if account is None else _entries().where(_R.account == account)
    return {(row[0], row[1]): codec.entry(row) for row in conn.execute(query)}


def one_entry(conn: Connection, account: str, channel_id: str) -> RegistryEntry | None:
    row = conn.execute(_entries().where(is_channel(REGISTRY, account, channel_id))).one_or_none()
    return None if row is None else codec.entry(row)


def put(conn: Connection, entries: Iterable[RegistryEntry], last_renewed_at: datetime | None) -> None:
    rows = (codec.registry_values(entry, last_renewed_at) for entry in entries)
    first = next(rows, None)
    if first is None:
        return
    columns = [name for name in first if name not in _KEY and name != "last_renewed_at"]
    statement = upsert(conn.dialect, REGISTRY, _KEY, columns, keep_when_null=("last_renewed_at",))
    chunks.execute(conn, statement, chain([first], rows))


def remove(conn: Connection, account: str, channel_id: str) -> None:
    conn.execute(delete(REGISTRY).where(is_channel(REGISTRY, account, channel_id)))


def mark_seen(conn: Connection, account: str, channel_ids: Iterable[str], at: datetime) -> None:
    statement = (
        update(REGISTRY)
        .where(_R.account == bindparam("k_account"), _R.channel_id == bindparam("k_channel"))
        .values(last_seen_at=at)
    )
    chunks.execute(conn, statement, ({"k_account": account, "k_channel": c} for c in channel_ids))


def last_seen(conn: Connection, account: str, channel_id: str) -> datetime | None:
    query = select(_R.last_seen_at).where(is_channel(REGISTRY, account, channel_id))
    seen: datetime | None = conn.execute(query).scalar_one_or_none()
    return seen


def status_rows(conn: Connection) -> list[StatusRow]:
    query = (
        select(
            _R.account,
            _R.channel_id,
            _R.name,
            _R.state,
            _R.expires_at,
            _R.renew_at,
            _R.retry_at,
            _R.last_renewed_at,
            _R.failures,
            _R.last_error,
            GAPS.c.start.label("lapsed_since"),
        )
        .select_from(_with_open_gap())
        .order_by(_R.account, _R.channel_id)
    )
    return [
        StatusRow(
            account=row.account,
            channel_id=row.channel_id,
            name=row.name,
            state=codec.read_state(row.state, row.lapsed_since),
            expires_at=row.expires_at,
            next_renewal_at=row.retry_at if row.failures and row.retry_at else row.renew_at,
            last_renewed_at=row.last_renewed_at,
            failures=row.failures,
            last_error=row.last_error,
        )
        for row in conn.execute(query)
    ]


def clear_retries(conn: Connection) -> None:
    conn.execute(update(REGISTRY).where(_R.terminal.is_(True)).values(retry_at=None))
