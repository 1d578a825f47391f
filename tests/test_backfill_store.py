"""Backfill progress in a real SQLite file: only closed gaps are requested, a re-request starts
afresh, collected notifications come back in order until delivered, and the migration from the
previous revision keeps every gap."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from watchkeeper.store import BackfillNote, Store

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def closed_gap(store: Store, channel_id: str = "1001") -> int:
    gap = store.open_gap("main", channel_id, T0, "expired")
    store.close_gap("main", channel_id, T0 + 30 * MIN)
    return gap.id


def test_only_closed_gaps_are_requested(tmp_path: Path) -> None:
    with Store(tmp_path / "wk.db") as store:
        closed = closed_gap(store)
        still_open = store.open_gap("main", "1002", T0, "vanished").id
        assert store.request_backfill([closed, still_open, 999], T0) == 1
        assert store.backfill_states() == {closed: ("pending", 0)}
        (job,) = store.pending_backfills("main")
        assert (job.gap.id, job.gap.channel_id, job.collected) == (closed, "1001", False)
        assert list(store.pending_backfills("other")) == []


def test_collected_notifications_come_back_in_order_until_delivered(tmp_path: Path) -> None:
    with Store(tmp_path / "wk.db") as store:
        gap = closed_gap(store)
        store.request_backfill([gap], T0)
        store.backfill_collected(gap, [("Deals", "insert", ["1", "2"]), ("Deals", "delete", ["3"])])
        assert store.backfill_undelivered(gap) == [
            BackfillNote(0, "Deals", "insert", ("1", "2")),
            BackfillNote(1, "Deals", "delete", ("3",)),
        ]
        store.backfill_retry(gap, 1, T0, T0 + MIN, "POST http://h/hook?key=***: HTTP 503")
        (job,) = store.pending_backfills()
        assert (job.collected, job.notifications, job.failures, job.retry_at) == (True, 2, 1, T0 + MIN)
        store.backfill_delivered(gap, 0, 2, T0 + MIN)
        assert [n.seq for n in store.backfill_undelivered(gap)] == [1]
        (job,) = store.pending_backfills()
        assert (job.records, job.failures, job.retry_at) == (2, 0, None)  # a delivery ends the streak
        store.backfill_delivered(gap, 1, 1, T0 + MIN)
        store.finish_backfill(gap, "done")
        assert store.backfill_states() == {gap: ("done", 3)}
        assert list(store.pending_backfills()) == []


def test_a_new_request_starts_a_finished_backfill_afresh(tmp_path: Path) -> None:
    with Store(tmp_path / "wk.db") as store:
        gap = closed_gap(store)
        store.request_backfill([gap], T0)
        store.backfill_collected(gap, [("Deals", "update", ["1"])])
        store.finish_backfill(gap, "failed", "receiver", "HTTP 500")
        assert store.request_backfill([gap], T0 + MIN) == 1
        (job,) = store.pending_backfills()
        assert (job.state, job.collected, job.reason, job.error) == ("pending", False, None, None)
        assert store.backfill_undelivered(gap) == []


def test_the_progress_survives_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "wk.db"
    with Store(db) as store:
        gap = closed_gap(store)
        store.request_backfill([gap], T0)
        store.backfill_collected(gap, [("Deals", "update", ["1"])])
    with Store(db) as store:
        assert [n.ids for n in store.backfill_undelivered(gap)] == [("1",)]
    tables = {row[0] for row in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert {"backfills", "backfill_notifications"} <= tables
