"""The pure backfill decisions, table-driven: the window, the queries, records -> notifications by
the subscribed events, the 100-id split, Zoho's body plus ``backfill``, and the retry horizon."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from watchkeeper.backfill_plan import (
    MAX_IDS,
    Notification,
    Query,
    Window,
    body,
    next_attempt,
    notifications,
    queries,
)
from watchkeeper.model import ChannelSpec, parse_events
from watchkeeper.policy import Policy
from watchkeeper.zoho.records import DeletedRecord, Record

T = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
WINDOW = Window(T, T + timedelta(hours=2))  # queried from T-1m to T+2h+1m


def rec(record_id: str, created: timedelta, modified: timedelta) -> Record:
    return Record(record_id, T + created, T + modified)


def gone(record_id: str, at: timedelta) -> DeletedRecord:
    return DeletedRecord(record_id, T + at)


def test_the_window_is_the_gap_widened_by_a_minute_and_due_once_its_end_passed() -> None:
    assert (WINDOW.start, WINDOW.end) == (T - MIN, T + timedelta(hours=2) + MIN)
    assert WINDOW.holds(T - MIN)
    assert WINDOW.holds(WINDOW.end)
    assert not WINDOW.holds(T - MIN - timedelta(seconds=1))
    assert not WINDOW.due(T + timedelta(hours=2))
    assert WINDOW.due(WINDOW.end)


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (["Deals.all"], [Query("Deals", True, True)]),
        (["Deals.create"], [Query("Deals", True, False)]),
        (["Deals.edit", "Leads.delete"], [Query("Deals", True, False), Query("Leads", False, True)]),
        (
            ["Leads.delete", "Contacts.create", "Contacts.edit"],
            [Query("Contacts", True, False), Query("Leads", False, True)],
        ),
    ],
)
def test_one_query_per_module_by_what_is_subscribed(events: list[str], expected: list[Query]) -> None:
    assert queries(parse_events(events)) == expected


CASES = [
    # (subscribed, modified, deleted, expected (operation, ids))
    pytest.param(
        ["Deals.all"],
        [rec("1", 10 * MIN, 10 * MIN), rec("2", -timedelta(days=3), 20 * MIN)],
        [gone("3", 30 * MIN)],
        [("insert", ("1",)), ("update", ("2",)), ("delete", ("3",))],
        id="all: created in the window is an insert, older an update, deleted a delete",
    ),
    pytest.param(
        ["Deals.edit"],
        [rec("1", 10 * MIN, 10 * MIN), rec("2", -timedelta(days=3), 20 * MIN)],
        [gone("3", 30 * MIN)],
        [("update", ("1", "2"))],
        id="edit only: a creation in the window is reported as the update it also is",
    ),
    pytest.param(
        ["Deals.create"],
        [rec("1", 10 * MIN, 50 * MIN), rec("2", -timedelta(days=3), 20 * MIN)],
        [],
        [("insert", ("1",))],
        id="create only: an edit of an older record is not subscribed",
    ),
    pytest.param(
        ["Deals.delete"],
        [rec("1", 10 * MIN, 10 * MIN)],
        [gone("3", 30 * MIN), gone("4", -2 * MIN), gone("5", timedelta(hours=3))],
        [("delete", ("3",))],
        id="delete only: deletions outside the window are not this gap's",
    ),
    pytest.param(
        ["Deals.all"],
        [
            rec("1", -2 * MIN, -30 * timedelta(seconds=1)),
            rec("2", -5 * MIN, timedelta(hours=2, minutes=2)),
        ],
        [],
        [("update", ("1",))],
        id="the margins: a change 30 s before the gap is in, one 2 min after it is out",
    ),
    pytest.param(
        ["Deals.all"],
        [rec("2", 0 * MIN, 40 * MIN), rec("1", 0 * MIN, 20 * MIN)],
        [],
        [("insert", ("1", "2"))],
        id="oldest change first, whatever order Zoho answered in",
    ),
    pytest.param(["Deals.all"], [], [], [], id="nothing changed: nothing sent"),
]


@pytest.mark.parametrize(("events", "modified", "deleted", "expected"), CASES)
def test_records_become_notifications_by_the_subscribed_events(
    events: list[str],
    modified: list[Record],
    deleted: list[DeletedRecord],
    expected: list[tuple[str, tuple[str, ...]]],
) -> None:
    found = notifications("Deals", WINDOW, parse_events(events), modified, deleted)
    assert [(n.operation, n.ids) for n in found] == expected
    assert {n.module for n in found} <= {"Deals"}


def test_one_notification_per_100_ids() -> None:
    many = [rec(str(n), -timedelta(days=1), MIN + timedelta(seconds=n)) for n in range(1, 251)]
    found = notifications("Deals", WINDOW, parse_events(["Deals.edit"]), many, [])
    assert [len(n.ids) for n in found] == [MAX_IDS, MAX_IDS, 50]
    assert [i for n in found for i in n.ids] == [str(n) for n in range(1, 251)]


def test_the_body_is_zohos_callback_plus_backfill() -> None:
    spec = ChannelSpec(
        account="main",
        channel_id="1000000068001",
        events=parse_events(["Deals.all"]),
        notify_url="https://hooks.example.com/zoho?source=crm&key=abc&empty=",
        ttl=timedelta(hours=23),
        token="channel-token",
    )
    note = Notification("Deals", "update", ("11", "12"))
    sent = body(
        note,
        spec,
        WINDOW,
        T + timedelta(hours=3, milliseconds=250),
        "https://www.zohoapis.com/crm/v8/Deals",
    )
    assert sent == {
        "server_time": int((T + timedelta(hours=3)).timestamp() * 1000) + 250,
        "query_params": {"source": "crm", "key": "abc", "empty": ""},
        "module": "Deals",
        "resource_uri": "https://www.zohoapis.com/crm/v8/Deals",
        "ids": ["11", "12"],
        "affected_fields": [],
        "operation": "update",
        "channel_id": "1000000068001",
        "token": "channel-token",
        "backfill": {"gap_start": "2026-11-20T03:00:00+00:00", "gap_end": "2026-11-20T05:00:00+00:00"},
    }
    tokenless = ChannelSpec("main", "1", spec.events, "https://h.example.com/", spec.ttl)
    assert body(note, tokenless, WINDOW, T, "u")["token"] is None
    assert body(note, tokenless, WINDOW, T, "u")["query_params"] == {}


@pytest.mark.parametrize(
    ("failures", "since_first", "gives_up"),
    [
        (1, timedelta(0), False),
        (8, timedelta(hours=23), False),
        (9, timedelta(days=1), True),
        (3, timedelta(days=2), True),
    ],
)
def test_refused_deliveries_back_off_for_a_day_then_fail(
    failures: int, since_first: timedelta, gives_up: bool
) -> None:
    tuning = Policy()
    first = T
    now = T + since_first
    at = next_attempt(failures, first, now, tuning, random.Random(1))
    if gives_up:
        assert at is None
    else:
        assert at is not None
        assert now <= at <= first + timedelta(days=1)
        assert at - now <= tuning.retry_max
