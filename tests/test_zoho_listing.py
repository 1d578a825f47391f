"""A resilient listing: a failed page retried in place, no fixed page cap, a server that loops
stopped, and the one-page probe an account makes while Zoho fails. The client runs against the
emulator over real HTTP (and a scripted loopback server for what no emulator does); the engine's
use of the probe against the emulator with a real SQLite store."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from watchkeeper import config
from watchkeeper.emulator import Emulator, Fault
from watchkeeper.engine import Engine
from watchkeeper.runtime import open_engine
from watchkeeper.zoho import client as client_module
from watchkeeper.zoho.client import WatchClient
from watchkeeper.zoho.errors import AuthError, RateLimited, TransientError

from tests.helpers import SimClock
from tests.statefiles import Chan, env, write_state
from tests.test_zoho_auth import oauth_for, refreshes
from tests.test_zoho_client import NOTIFY_URL, Hostile, channel_ids, endpoint_for

Sleeps = list[float]


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


@pytest.fixture
def slept() -> Sleeps:
    return []


@pytest.fixture
def client(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock, slept: Sleeps
) -> Iterator[WatchClient]:
    def sleep(seconds: float) -> None:
        slept.append(seconds)
        sim_clock.sleep(seconds)

    auth = oauth_for(emulator, http, sim_clock)
    watch = WatchClient(endpoint_for(emulator), auth, http=http, clock=sim_clock, sleep=sleep)
    yield watch
    watch.close()


def gets(emu: Emulator) -> list[tuple[str, str, int]]:
    """(page, per_page, status) of every GET, in order."""
    return [(c.query["page"], c.query["per_page"], c.status) for c in emu.calls if c.method == "GET"]


def foreign(emu: Emulator, n: int) -> list[str]:
    """``n`` channels of three modules each (three rows a channel) that the emulator lists."""
    ids = channel_ids(n)
    for channel_id in ids:
        emu.add_foreign_channel(
            channel_id, ["Deals.create", "Contacts.edit", "Leads.delete"], NOTIFY_URL
        )
    return ids


def fail_page(emu: Emulator, http: httpx.Client, page: str, times: int) -> None:
    """The first request for ``page`` arms a fault that fails it (and its retries) ``times``."""
    armed: list[bool] = []

    def arm(request: httpx.Request) -> None:
        if request.method == "GET" and request.url.params.get("page") == page and not armed:
            armed.append(True)
            emu.add_fault(Fault(status=500, methods=frozenset({"GET"}), count=times))

    http.event_hooks["request"] = [arm]


def test_a_failed_page_is_retried_in_place_keeping_the_pages_before(
    emulator: Emulator, http: httpx.Client, client: WatchClient, slept: Sleeps
) -> None:
    ids = foreign(emulator, 150)  # 450 rows: three pages
    fail_page(emulator, http, "2", times=2)
    assert sorted(client.list()) == ids
    assert gets(emulator) == [
        ("1", "200", 200),
        ("2", "200", 500),
        ("2", "200", 500),
        ("2", "200", 200),
        ("3", "200", 200),
    ]
    assert slept == [0.5, 1.0]


def test_a_page_that_keeps_failing_fails_the_listing_after_three_retries(
    emulator: Emulator, client: WatchClient, slept: Sleeps
) -> None:
    foreign(emulator, 10)
    emulator.add_fault(Fault(status=503, methods=frozenset({"GET"})))
    with pytest.raises(TransientError, match=r"HTTP 503"):
        client.list()
    assert gets(emulator) == [("1", "200", 503)] * 4
    assert slept == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(status=429, retry_after=7), RateLimited),
        (Fault(status=401, code="OAUTH_SCOPE_MISMATCH"), AuthError),
    ],
    ids=["429", "auth"],
)
def test_a_429_or_an_auth_error_is_not_retried_in_place(
    emulator: Emulator, client: WatchClient, slept: Sleeps, fault: Fault, error: type[Exception]
) -> None:
    emulator.add_fault(fault)
    with pytest.raises(error):
        client.list()
    assert len(gets(emulator)) == 1
    assert slept == []


@pytest.mark.parametrize("look", ["list", "tally"])
def test_a_stop_asked_while_a_page_fails_ends_the_look_without_waiting_out_its_retries(
    emulator: Emulator, client: WatchClient, slept: Sleeps, look: str
) -> None:
    """As for a chunk: a SIGTERM (or a lease's margin) reached during a wait sends nothing more."""
    foreign(emulator, 10)
    emulator.add_fault(Fault(status=503, methods=frozenset({"GET"})))
    stops = iter([False, True])  # before the first wait, after it

    def stop() -> bool:
        return next(stops)

    call = partial(client.list_counted, should_stop=stop)
    if look == "tally":
        call = partial(client.tally, 30, should_stop=stop)
    with pytest.raises(TransientError, match=r"HTTP 503"):
        call()
    assert len(gets(emulator)) == 1
    assert slept == [0.5]


def test_a_failed_token_refresh_is_not_retried_in_place(
    emulator: Emulator, client: WatchClient, slept: Sleeps
) -> None:
    """Each refresh may spend one of the refresh token's 10 in 10 minutes: the account's backoff
    spaces them, not four attempts in 3.5 s."""
    foreign(emulator, 10)
    emulator.add_fault(Fault(status=503, methods=frozenset({"TOKEN"}), paths="token"))
    with pytest.raises(TransientError, match=r"token refresh: POST /oauth/v2/token: HTTP 503"):
        client.list()
    assert refreshes(emulator) == 1
    assert gets(emulator) == []
    assert slept == []
    emulator.clear_faults()
    assert sorted(client.list()) == channel_ids(10)


def test_the_probe_is_one_row_of_one_page_tried_once(
    emulator: Emulator, client: WatchClient, slept: Sleeps
) -> None:
    foreign(emulator, 10)
    client.probe()
    emulator.add_fault(Fault(status=503, methods=frozenset({"GET"})))
    with pytest.raises(TransientError, match=r"HTTP 503"):
        client.probe()
    assert gets(emulator) == [("1", "1", 200), ("1", "1", 503)]
    assert slept == []


# -- what a server that misbehaves at length gets ------------------------------------------------

Pager = Callable[[int], tuple[list[dict[str, object]], bool]]


def serving(pages: Pager, asked: list[int]) -> Callable[[BaseHTTPRequestHandler], None]:
    """A script answering each GET with ``pages(page)``: (rows, more_records)."""

    def script(handler: BaseHTTPRequestHandler) -> None:
        page = int(parse_qs(urlsplit(handler.path).query)["page"][0])
        asked.append(page)
        rows, more = pages(page)
        body = json.dumps({"watch": rows, "info": {"more_records": more}}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        handler.wfile.write(head.encode() + b"\r\n\r\n" + body)  # one write: no delayed ACK

    return script


def row(n: int) -> dict[str, object]:
    return {
        "channel_id": str(1_000_000_000 + n),
        "events": ["Deals.create"],
        "notify_url": NOTIFY_URL,
        "channel_expiry": (datetime.now(UTC) + timedelta(hours=6)).isoformat(),
    }


def test_a_listing_longer_than_1000_pages_is_not_capped() -> None:
    """1,001 pages of one row: the old cap (1,000 pages) made such an account unlistable."""
    asked: list[int] = []
    with Hostile(serving(lambda page: ([row(page)], page < 1001), asked)) as server:
        watch = server.client(retries=(0.5, 1.0, 2.0))
        listed = watch.list()
        watch.close()
    assert len(listed) == 1001
    assert asked == list(range(1, 1002))


def test_a_server_that_ignores_page_is_stopped_at_the_first_repeat() -> None:
    asked: list[int] = []
    with Hostile(serving(lambda page: ([row(1), row(2)], True), asked)) as server:
        watch = server.client(retries=(0.5, 1.0, 2.0))
        with pytest.raises(TransientError, match=r"\(page 2\): every row repeats an earlier page"):
            watch.list()
        watch.close()
    assert asked == [1, 2]


def test_a_page_overlapping_the_one_before_is_kept() -> None:
    """A channel created between two pages shifts the rows by one: a repeat, not a loop."""
    asked: list[int] = []
    with Hostile(serving(lambda page: ([row(page), row(page + 1)], page < 3), asked)) as server:
        watch = server.client(retries=(0.5, 1.0, 2.0))
        listed = watch.list()
        watch.close()
    assert len(listed) == 4
    assert asked == [1, 2, 3]


def test_a_server_that_never_stops_inventing_rows_is_stopped_at_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "MAX_LISTING_ROWS", 50)
    asked: list[int] = []

    def fresh(page: int) -> tuple[list[dict[str, object]], bool]:
        return [row(10 * page + i) for i in range(10)], True

    with Hostile(serving(fresh, asked)) as server:
        watch = server.client(retries=(0.5, 1.0, 2.0))
        with pytest.raises(TransientError, match="more_records after 50 rows"):
            watch.list()
        watch.close()
    assert asked == [1, 2, 3, 4, 5]


# -- the engine probes while an account's listings fail ------------------------------------------


def test_while_listings_fail_the_account_is_probed_and_a_probe_that_answers_lists_at_once(
    tmp_path: Path, emulator: Emulator, sim_clock: SimClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)
    path = write_state(tmp_path / "channels.toml", emulator.url, [Chan("7000", ttl="6h")])
    outage = Fault(status=503, methods=frozenset({"GET"}))
    state = config.load(path)
    with open_engine(state, clock=sim_clock, rng=random.Random(3), sleep=sim_clock.sleep) as engine:
        engine.run_due()  # created
        emulator.add_fault(outage)
        engine.request_listing()
        engine.run_due()  # a full listing: four attempts at page 1
        assert gets(emulator)[-4:] == [("1", "200", 503)] * 4
        emulator.clear_calls()
        sim_clock.set(engine.next_due())
        engine.run_due()
        assert gets(emulator) == [("1", "1", 503)]  # one row of one page, not a listing
        emulator.clear_faults()
        emulator.clear_calls()
        sim_clock.set(engine.next_due())
        report = engine.run_due()
    assert report.listed
    assert not report.list_failed
    assert gets(emulator) == [("1", "1", 200), ("1", "200", 200)]


# -- the tally: one page that says whether the row count moved -----------------------------------

ADDED = "1999999999999"


def _move(emu: Emulator, ids: list[str], change: str | None) -> None:
    if change == "delete":
        emu.delete_channel(ids[0])
    elif change == "add":
        emu.add_foreign_channel(ADDED, ["Deals.create"], NOTIFY_URL)
    elif change == "modules":
        emu.change_channel(ids[-1], events=["Deals.create"])
    elif change == "notify_url":
        emu.change_channel(ids[-1], notify_url=NOTIFY_URL + "&moved=1")


@pytest.mark.parametrize(
    ("channels", "change", "answer"),
    [
        pytest.param(0, None, ("1", 204, True), id="nothing-listed"),
        pytest.param(67, None, ("2", 200, True), id="201-rows"),
        pytest.param(67, "delete", ("2", 204, False), id="201-rows-one-deleted"),
        pytest.param(67, "add", ("2", 200, False), id="201-rows-one-added"),
        pytest.param(200, None, ("3", 200, True), id="600-rows-last-page-full"),
        pytest.param(200, "delete", ("3", 200, False), id="600-rows-one-deleted"),
        pytest.param(200, "add", ("3", 200, False), id="600-rows-one-added"),
        pytest.param(200, "modules", ("3", 200, False), id="600-rows-modules-changed"),
        pytest.param(200, "notify_url", ("3", 200, True), id="a-change-that-keeps-the-count"),
    ],
)
def test_the_tally_reads_the_page_holding_the_last_row(
    emulator: Emulator,
    client: WatchClient,
    channels: int,
    change: str | None,
    answer: tuple[str, int, bool],
) -> None:
    """``answer``: the page read, its status, and whether the count still stands."""
    page, status, same = answer
    ids = foreign(emulator, channels)  # three rows a channel
    listed, rows = client.list_counted()
    assert (len(listed), rows) == (channels, 3 * channels)
    _move(emulator, ids, change)
    emulator.clear_calls()
    assert client.tally(rows) is same
    assert gets(emulator) == [(page, "200", status)]


def test_a_tally_page_that_fails_is_retried_in_place(
    emulator: Emulator, http: httpx.Client, client: WatchClient, slept: Sleeps
) -> None:
    foreign(emulator, 67)
    fail_page(emulator, http, "2", times=1)
    assert client.tally(201)
    assert gets(emulator) == [("2", "200", 500), ("2", "200", 200)]
    assert slept == [0.5]


# -- the engine tallies an account of several pages between its full listings --------------------


FLEET = [Chan(str(7000 + i), ttl="23h") for i in range(101)]
"""Two modules a channel (the Chan default): 202 rows, two pages; a tally reads page 2 alone."""


def look(engine: Engine, sim_clock: SimClock, emu: Emulator) -> tuple[list[str], list[int]]:
    """The account's next look: the pages it fetched, and the items of each POST after it."""
    emu.clear_calls()
    sim_clock.set(engine.next_due())
    engine.run_due()
    pages = [c.query["page"] for c in emu.calls if c.method == "GET"]
    return pages, [c.items for c in emu.calls if c.method == "POST"]


def test_between_its_full_listings_an_account_of_several_pages_is_tallied(
    tmp_path: Path, emulator: Emulator, sim_clock: SimClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)
    state = config.load(write_state(tmp_path / "channels.toml", emulator.url, FLEET))
    with open_engine(state, clock=sim_clock, rng=random.Random(3), sleep=sim_clock.sleep) as engine:
        assert look(engine, sim_clock, emulator) == (["1"], [100, 1])  # nothing yet: created
        assert look(engine, sim_clock, emulator) == (["2"], [])  # the POSTs added 202 rows
        emulator.delete_channel("7050")
        assert look(engine, sim_clock, emulator) == (["2", "1"], [1])  # 200 rows now; re-created
        listed_at = sim_clock()
        seen = [look(engine, sim_clock, emulator)]  # the count allows for the POST: a tally
        while sim_clock() < listed_at + state.policy.full_listing_every:
            seen.append(look(engine, sim_clock, emulator))
        assert seen[:-1] == [(["2"], [])] * (len(seen) - 1)
        assert seen[-1] == (["1", "2"], [])  # the full listing due every full_listing_every
        assert look(engine, sim_clock, emulator) == (["2"], [])
        emulator.clear_calls()
        engine.run_pass(sim_clock(), listing=True)  # a listing asked for (``apply``) is a full one
        assert [c.query["page"] for c in emulator.calls if c.method == "GET"] == ["1", "2"]
        assert look(engine, sim_clock, emulator) == (["2"], [])
        engine.reload(state)  # the reload may change what the account holds: listed in full
        assert look(engine, sim_clock, emulator) == (["1", "2"], [])
