"""Queries on backfill progress: one row per gap being backfilled, and the notifications collected
for it, each marked once its receiver took it. A backfill is requested in the transaction that
closes its gap (the automatic case), so a crash between the two cannot lose it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, delete, func, or_, select, update

from watchkeeper.store import codec
from watchkeeper.store.schema import BACKFILL_NOTIFICATIONS, BACKFILLS, GAPS
from watchkeeper.store.upsert import upsert
from watchkeeper.values import Backfill, BackfillNote

_B = BACKFILLS.c
_N = BACKFILL_NOTIFICATIONS.c
_PROGRESS = (
    "state", "collected", "records", "notifications", "failures", "first_failure_at", "retry_at",
    "reason", "error",
)  # fmt: skip
_FRESH = {
    "state": "pending",
    "collected": False,
    "records": 0,
    "notifications": 0,
    "failures": 0,
    "first_failure_at": None,
    "retry_at": None,
    "reason": None,
    "error": None,
}


def request(conn: Connection, gap_ids: Iterable[int], at: datetime) -> int:
    """(Re)start the backfill of closed gaps from scratch; returns how many were requested."""
    ids = list(gap_ids)
    gaps = conn.execute(
        select(GAPS.c.id, GAPS.c.account, GAPS.c.channel_id).where(
            GAPS.c.id.in_(ids), GAPS.c.end.is_not(None)
        )
    ).all()
    if not gaps:
        return 0
    values = [
        {"gap_id": g.id, "account": g.account, "channel_id": g.channel_id, "requested_at": at, **_FRESH}
        for g in gaps
    ]
    conn.execute(delete(BACKFILL_NOTIFICATIONS).where(_N.gap_id.in_([g.id for g in gaps])))
    conn.execute(upsert(conn.dialect, BACKFILLS, ("gap_id",), ("requested_at", *_FRESH)), values)
    return len(gaps)


def pending(
    conn: Connection,
    account: str | None,
    ready_by: datetime | None = None,
    after: tuple[datetime, int] | None = None,
    limit: int | None = None,
) -> list[Backfill]:
    """Pending jobs by (gap start, gap id), from just ``after`` that key; ``ready_by`` keeps those
    whose window has ended and whose retry time has come by then (Zoho's clock)."""
    query = (
        select(GAPS, *(_B[name] for name in _PROGRESS))
        .join(BACKFILLS, GAPS.c.id == _B.gap_id)
        .where(_B.state == "pending")
        .order_by(GAPS.c.start, _B.gap_id)
        .limit(limit)
    )
    if account is not None:
        query = query.where(_B.account == account)
    if ready_by is not None:
        query = query.where(_ready_at() <= ready_by)
    if after is not None:
        start, gap_id = after
        query = query.where(or_(GAPS.c.start > start, and_(GAPS.c.start == start, _B.gap_id > gap_id)))
    return [_backfill(row) for row in conn.execute(query)]


def next_ready(conn: Connection, account: str, now: datetime) -> datetime | None:
    """When the account's first pending job not ready by ``now`` will be (Zoho's clock)."""
    ready_at = _ready_at()
    query = (
        select(func.min(ready_at))
        .select_from(BACKFILLS.join(GAPS, GAPS.c.id == _B.gap_id))
        .where(_B.state == "pending", _B.account == account, ready_at > now)
    )
    return conn.execute(query).scalar_one()


def accounts(conn: Connection) -> set[str]:
    """The accounts with a backfill pending."""
    query = select(_B.account).where(_B.state == "pending").distinct()
    return set(conn.execute(query).scalars())


def _ready_at() -> ColumnElement[datetime]:
    """A job's window end, or its retry time when later: the job waits until then."""
    later = and_(_B.retry_at.is_not(None), _B.retry_at > GAPS.c.end)
    return case((later, _B.retry_at), else_=GAPS.c.end)


def by_gap(conn: Connection) -> dict[int, tuple[str, int]]:
    """gap id -> (state, records redelivered)."""
    return {
        row.gap_id: (row.state, row.records)
        for row in conn.execute(select(_B.gap_id, _B.state, _B.records))
    }


def collected(conn: Connection, gap_id: int, notes: Sequence[tuple[str, str, Sequence[str]]]) -> None:
    conn.execute(delete(BACKFILL_NOTIFICATIONS).where(_N.gap_id == gap_id))
    rows = [
        {"gap_id": gap_id, "seq": n, "module": m, "operation": op, "ids": json.dumps(list(ids))}
        for n, (m, op, ids) in enumerate(notes)
    ]
    if rows:
        conn.execute(BACKFILL_NOTIFICATIONS.insert(), rows)
    _set(conn, gap_id, collected=True, notifications=len(rows), failures=0, first_failure_at=None,
         retry_at=None)  # fmt: skip


def undelivered(conn: Connection, gap_id: int) -> list[BackfillNote]:
    query = select(_N.seq, _N.module, _N.operation, _N.ids).where(
        _N.gap_id == gap_id, _N.delivered_at.is_(None)
    )
    return [
        BackfillNote(r.seq, r.module, r.operation, tuple(json.loads(r.ids)))
        for r in conn.execute(query.order_by(_N.seq))
    ]


def delivered(conn: Connection, gap_id: int, seq: int, count: int, at: datetime) -> None:
    conn.execute(
        update(BACKFILL_NOTIFICATIONS).where(_N.gap_id == gap_id, _N.seq == seq).values(delivered_at=at)
    )
    conn.execute(
        update(BACKFILLS)
        .where(_B.gap_id == gap_id)
        .values(records=_B.records + count, failures=0, first_failure_at=None, retry_at=None)
    )


def retry(
    conn: Connection, gap_id: int, failures: int, first: datetime, at: datetime, error: str
) -> None:
    _set(conn, gap_id, failures=failures, first_failure_at=first, retry_at=at, error=error)


def finish(conn: Connection, gap_id: int, state: str, reason: str | None, error: str | None) -> None:
    _set(conn, gap_id, state=state, reason=reason, error=error, retry_at=None)


def _set(conn: Connection, gap_id: int, **values: Any) -> None:
    conn.execute(update(BACKFILLS).where(_B.gap_id == gap_id).values(**values))


def _backfill(row: Any) -> Backfill:
    return Backfill(codec.gap(row), **{name: getattr(row, name) for name in _PROGRESS})
