"""RecordsClient against the emulator over real HTTP on 127.0.0.1 (paging past 2,000 records both
ways, empty answers, the shared session's error classes and skew), and its codec table-driven."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from watchkeeper.emulator import Emulator, Fault
from watchkeeper.model import parse_instant
from watchkeeper.zoho.client import WatchClient
from watchkeeper.zoho.errors import AuthError, RateLimited, TerminalError, TransientError
from watchkeeper.zoho.records import (
    MissingScope,
    RecordsClient,
    parse_deleted,
    parse_record,
    records_page,
)
from watchkeeper.zoho.regions import Endpoint

from tests.helpers import SimClock
from tests.test_zoho_auth import SECRETS, oauth_for

MINUTE = timedelta(minutes=1)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def clients(
    emu: Emulator, http: httpx.Client, clock: SimClock, product: Any = "crm", version: str = "v8"
) -> tuple[WatchClient, RecordsClient]:
    endpoint = Endpoint.resolve(product, version, api_domain=emu.url, accounts_url=emu.url)
    watch = WatchClient(endpoint, oauth_for(emu, http, clock), http=http, clock=clock)
    return watch, RecordsClient(watch.session)


def record_calls(emu: Emulator) -> list[tuple[str, str, str | None]]:
    return [
        (c.path, c.query.get("page", ""), c.query.get("page_token"))
        for c in emu.calls
        if c.method == "GET" and "actions" not in c.path
    ]


def test_modified_returns_the_window_oldest_first_and_stops_past_its_end(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    _, records = clients(emulator, http, sim_clock)
    emulator.simulate_record_change("Deals", "create", ["1"])
    sim_clock.advance(MINUTE)
    start = sim_clock()
    emulator.simulate_record_change("Deals", "create", ["2"])
    sim_clock.advance(MINUTE)
    emulator.simulate_record_change("Deals", "edit", ["1"])
    end = sim_clock()
    sim_clock.advance(MINUTE)
    emulator.simulate_record_change("Deals", "create", ["3", "4"])  # after the window: the stop
    found = records.modified("Deals", start - timedelta(seconds=1), end)
    assert [(r.id, r.modified_time) for r in found] == [("2", start), ("1", end)]
    assert found[1].created_time == start - MINUTE
    call = next(c for c in emulator.calls if c.path == "/crm/v8/Deals")
    assert call.query == {
        "fields": "Created_Time,Modified_Time",
        "sort_by": "Modified_Time",
        "sort_order": "asc",
        "per_page": "200",
        "page": "1",
    }


@pytest.mark.parametrize(
    ("version", "tokens", "expected"),
    [
        # v8 hands out page tokens: ten pages, then the token
        ("v8", "v5+", [str(n) for n in range(1, 11)] + ["token"]),
        # v4 does not: ten pages, then the query starts again from the last Modified_Time
        ("v4", "v5+", [str(n) for n in range(1, 11)] + ["1"]),
    ],
)
def test_every_record_past_2000_is_reached_with_or_without_page_tokens(
    emulator: Emulator,
    http: httpx.Client,
    sim_clock: SimClock,
    version: str,
    tokens: Any,
    expected: list[str],
) -> None:
    emulator.set_options(page_tokens=tokens)
    start = sim_clock()
    made = [str(5000 + n) for n in range(2100)]
    for chunk in range(0, 2100, 3):  # three records a second: the restart repeats some, by id once
        emulator.simulate_record_change("Contacts", "create", made[chunk : chunk + 3])
        sim_clock.advance(timedelta(seconds=1))
    _, records = clients(emulator, http, sim_clock, version=version)
    emulator.clear_calls()
    found = records.modified("Contacts", start - MINUTE, sim_clock())
    assert [r.id for r in found] == made
    pages = [("token" if token else page) for _, page, token in record_calls(emulator)]
    assert pages == expected


@pytest.mark.parametrize("emulator", [{"records_empty": "204"}, {"records_empty": "304"}], indirect=True)
def test_204_and_304_both_mean_no_records(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    _, records = clients(emulator, http, sim_clock)
    emulator.simulate_record_change("Deals", "create", ["1"])
    emulator.simulate_record_change("Deals", "delete", ["1"])
    later = sim_clock() + timedelta(hours=1)
    assert records.modified("Deals", later, later + MINUTE) == []
    assert records.deleted("Deals", later) == []
    statuses = {c.status for c in emulator.calls if "Deals" in c.path}
    assert statuses == {int(emulator.options.records_empty)}


def test_deleted_pages_until_no_more(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    _, records = clients(emulator, http, sim_clock)
    start = sim_clock()
    gone = [str(n) for n in range(1, 451)]
    emulator.simulate_record_change("Leads", "create", gone)
    sim_clock.advance(MINUTE)
    emulator.simulate_record_change("Leads", "delete", gone)
    found = records.deleted("Leads", start)
    assert sorted(int(d.id) for d in found) == list(range(1, 451))
    assert {d.deleted_time for d in found} == {start + MINUTE}
    assert [page for _, page, _ in record_calls(emulator)] == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("product", "version", "scope"),
    [
        ("crm", "v8", "ZohoCRM.modules.READ or ZohoCRM.modules.deals.READ"),
        ("bigin", "v2", "ZohoBigin.modules.READ"),
    ],
)
def test_missing_read_scope_names_the_scope_and_is_not_retried_with_a_new_token(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock, product: str, version: str, scope: str
) -> None:
    _, records = clients(emulator, http, sim_clock, product, version)
    emulator.add_fault(Fault(status=401, code="OAUTH_SCOPE_MISMATCH", paths="records"))
    with pytest.raises(MissingScope) as caught:
        records.modified("Deals", sim_clock(), sim_clock())
    assert caught.value.scope == scope
    assert scope in str(caught.value)
    assert "Deals" in str(caught.value)
    assert isinstance(caught.value, AuthError)
    for secret in (*SECRETS, *emulator.access_tokens()):
        assert secret not in str(caught.value)
    assert emulator.refreshes() == 1  # the first token only: a scope is not fixed by refreshing


def test_rate_limits_and_server_errors_keep_the_watch_classes(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    _, records = clients(emulator, http, sim_clock)
    emulator.add_fault(Fault(status=429, retry_after=30, paths="records", count=1))
    with pytest.raises(RateLimited) as limited:
        records.deleted("Deals", sim_clock())
    assert limited.value.retry_after == 30
    emulator.add_fault(Fault(status=503, paths="records", count=1))
    with pytest.raises(TransientError):
        records.modified("Deals", sim_clock(), sim_clock())
    with pytest.raises(TerminalError) as invalid:
        records.modified("Dealz", sim_clock(), sim_clock())
    assert invalid.value.code == "INVALID_MODULE"


@pytest.mark.parametrize("emulator", [{"clock_skew": timedelta(minutes=4)}], indirect=True)
def test_a_records_answer_refines_the_skew_the_watch_client_uses(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    watch, records = clients(emulator, http, sim_clock)
    assert watch.skew == timedelta(0)
    records.deleted("Deals", sim_clock())
    assert abs(watch.skew - timedelta(minutes=4)) <= timedelta(seconds=2)


def test_the_if_modified_since_header_is_whole_seconds_with_an_offset(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    seen: list[str] = []

    def hook(request: httpx.Request) -> None:
        seen.append(request.headers.get("If-Modified-Since", ""))

    with httpx.Client(event_hooks={"request": [hook]}) as hooked:
        _, records = clients(emulator, hooked, sim_clock)
        records.deleted("Deals", parse_instant("2026-11-20T03:11:09.750+00:00"))
    assert seen[-1] == "2026-11-20T03:11:09+00:00"


GOOD = {
    "id": "4150868000001",
    "Created_Time": "2026-01-05T14:30:00+05:30",
    "Modified_Time": "2026-01-05T14:31:00+05:30",
}


@pytest.mark.parametrize(
    ("row", "culprit"),
    [
        ("not a row", "is not an object"),
        ({**GOOD, "id": None}, ".id"),
        ({**GOOD, "id": "12a"}, ".id"),
        ({**GOOD, "id": "9" * 20}, ".id"),
        ({**GOOD, "id": "١٢"}, ".id"),  # Arabic-Indic digits are digits to str.isdigit
        ({**GOOD, "Modified_Time": "2026-01-05T14:31:00"}, ".Modified_Time"),  # no offset
        ({**GOOD, "Created_Time": 1767600000}, ".Created_Time"),
        ({**GOOD, "Modified_Time": "9999-12-31T23:59:59-23:59"}, ".Modified_Time"),
        ({**GOOD, "Modified_Time": "x" * 5000}, ".Modified_Time"),
    ],
)
def test_a_hostile_row_names_its_field(row: object, culprit: str) -> None:
    with pytest.raises(TransientError) as caught:
        parse_record(row, "GET /crm/v8/Deals (page 1) data[0]")
    assert culprit in str(caught.value)
    assert "x" * 50 not in str(caught.value)


def test_codec_reads_good_rows_and_pages() -> None:
    record = parse_record({**GOOD, "id": 4150868000001}, "r")
    assert record.id == "4150868000001"
    assert record.modified_time == parse_instant("2026-01-05T09:01:00+00:00")
    assert parse_deleted({"id": "5", "deleted_time": "2026-01-05T09:01:00+00:00"}, "d").id == "5"
    page = records_page({"data": [GOOD], "info": {"more_records": True, "next_page_token": "abc"}}, "p")
    assert (len(page.rows), page.more, page.next_token) == (1, True, "abc")
    assert records_page(None, "p").rows == []
    assert records_page({"data": [], "info": {"more_records": True}}, "p").more is False


@pytest.mark.parametrize(
    "body",
    [
        {"info": {}},
        {"data": {}, "info": {}},
        {"data": [], "info": []},
        {"data": [], "info": {"more_records": "yes"}},
        {"data": [], "info": {"more_records": True, "next_page_token": 7}},
        {"data": [], "info": {"more_records": True, "next_page_token": "t" * 2000}},
    ],
)
def test_a_hostile_page_is_transient(body: dict[str, Any]) -> None:
    with pytest.raises(TransientError):
        records_page(body, "GET /crm/v8/Deals (page 1)")
