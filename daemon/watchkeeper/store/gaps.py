"""Queries on the gap ledger. A channel has at most one open gap (``end`` NULL): it is the one
record that the channel is lapsed, read back as the registry's ``lapsed_since``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update

from watchkeeper.model import utc
from watchkeeper.store import codec
from watchkeeper.store.errors import StoreError
from watchkeeper.store.schema import GAPS, is_channel
from watchkeeper.values import Gap

_G = GAPS.c


def open_gap(conn: Connection, account: str, channel_id: str, start: datetime, cause: str) -> Gap:
    """Open a gap, or return the one already open for this channel (its start and cause win: the
    earliest knowledge of the outage is the one to backfill from)."""
    existing = _open(conn, account, channel_id)
    if existing is not None:
        return existing
    result = conn.execute(
        GAPS.insert().values(account=account, channel_id=channel_id, start=start, cause=cause)
    )
    key = result.inserted_primary_key
    if key is None or key[0] is None:
        raise StoreError("the database returned no id for a new gap")
    return Gap(id=key[0], account=account, channel_id=channel_id, start=utc(start), end=None,
               cause=cause)  # fmt: skip


def close_gap(conn: Connection, account: str, channel_id: str, end: datetime) -> Gap | None:
    """Close the channel's open gap, if any. An end before the start (clock skew corrections) is
    clamped to the start rather than recording a negative window."""
    gap = _open(conn, account, channel_id)
    if gap is None:
        return None
    closed = Gap(gap.id, gap.account, gap.channel_id, gap.start, max(utc(end), gap.start), gap.cause)
    conn.execute(update(GAPS).where(_G.id == gap.id).values(end=closed.end))
    return closed


def open_gaps(conn: Connection) -> list[Gap]:
    query = select(GAPS).where(_G.end.is_(None)).order_by(_G.start, _G.id)
    return [codec.gap(row) for row in conn.execute(query)]


def gaps(conn: Connection, since: datetime | None, channel_id: str | None) -> list[Gap]:
    query = select(GAPS).order_by(_G.start, _G.id)
    if since is not None:
        query = query.where(_G.end.is_(None) | (_G.end > since))
    if channel_id is not None:
        query = query.where(_G.channel_id == channel_id)
    return [codec.gap(row) for row in conn.execute(query)]


def _open(conn: Connection, account: str, channel_id: str) -> Gap | None:
    query = select(GAPS).where(is_channel(GAPS, account, channel_id), _G.end.is_(None))
    row = conn.execute(query).one_or_none()
    return None if row is None else codec.gap(row)
