"""WatchClient against the emulator over real HTTP on 127.0.0.1: paging, batching, per-item results,
error classes, clock skew, local refusals, and that no secret leaks into an error; and against a
hostile loopback server for what no emulator does: trickled bodies, gzip bombs, broken encodings."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import structlog
from watchkeeper.model import (
    AccessToken,
    ChannelSpec,
    ItemResult,
    WatchItem,
    canonical_json,
    parse_events,
)
from watchkeeper.zoho.auth import Credentials, OAuth, StaticToken
from watchkeeper.zoho.client import Limits, WatchClient
from watchkeeper.zoho.errors import (
    AuthError,
    RateLimited,
    RequestRefused,
    TerminalError,
    TransientError,
    ZohoError,
)
from watchkeeper.zoho.regions import Endpoint
from watchkeeper.zoho.results import CallResult

from tests.helpers import SimClock
from tests.test_zoho_auth import SECRETS, MemoryCache, assert_no_secret, oauth_for, refreshes

if TYPE_CHECKING:
    from watchkeeper.emulator import Call, Emulator

HOOK_SECRET = "hook-query-secret"
NOTIFY_URL = f"https://hooks.example.com/zoho?source=crm&key={HOOK_SECRET}"
CHANNEL_TOKEN = "channel-verification-token"
ALL_SECRETS = (*SECRETS, HOOK_SECRET, CHANNEL_TOKEN)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def endpoint_for(emu: Emulator, version: str = "v8") -> Endpoint:
    return Endpoint.resolve("crm", version, api_domain=emu.url, accounts_url=emu.url)


@pytest.fixture
def client(emulator: Emulator, http: httpx.Client, sim_clock: SimClock) -> Iterator[WatchClient]:
    watch = WatchClient(endpoint_for(emulator), oauth_for(emulator, http, sim_clock), clock=sim_clock)
    yield watch
    watch.close()


def item(
    channel_id: str,
    events: tuple[str, ...] = ("Deals.all",),
    *,
    expires_at: datetime,
    notify_url: str = NOTIFY_URL,
    token: str | None = CHANNEL_TOKEN,
    **flags: Any,
) -> WatchItem:
    spec = ChannelSpec(
        account="main",
        channel_id=channel_id,
        events=parse_events(events),
        notify_url=notify_url,
        ttl=timedelta(hours=6),
        token=token,
        **flags,
    )
    return WatchItem(spec, expires_at)


def settled(answer: CallResult) -> list[ItemResult]:
    """The results of a call that no error or stop cut short."""
    assert answer.error is None, answer.error
    assert answer.unsent == ()
    return list(answer.results)


def calls(emu: Emulator, method: str) -> list[Call]:
    return [call for call in emu.calls if call.method == method]


def channel_ids(n: int, start: int = 1000000068001) -> list[str]:
    return [str(start + i) for i in range(n)]


# -- listing -------------------------------------------------------------------------------------


def test_list_pages_until_more_records_is_false(emulator: Emulator, client: WatchClient) -> None:
    ids = channel_ids(150)
    for channel_id in ids:  # three modules each: 450 rows
        emulator.add_foreign_channel(
            channel_id, ["Deals.create", "Contacts.edit", "Leads.delete"], NOTIFY_URL
        )
    observed = client.list()
    assert sorted(observed) == ids
    assert observed[ids[77]].events == parse_events(["Deals.create", "Contacts.edit", "Leads.delete"])
    gets = calls(emulator, "GET")
    assert [(c.query["page"], c.query["per_page"]) for c in gets] == [
        ("1", "200"),
        ("2", "200"),
        ("3", "200"),
    ]


def test_empty_listing_is_204(emulator: Emulator, client: WatchClient) -> None:
    assert client.list() == {}
    assert [c.status for c in calls(emulator, "GET")] == [204]


def test_all_is_expanded_and_merged_with_the_other_rows(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    condition = [{"type": "field_selection", "module": {"api_name": "Deals", "id": "1"}}]
    wanted = item(
        "1000000068001",
        ("Deals.all", "Contacts.create"),
        expires_at=sim_clock.now() + timedelta(hours=6),
        notify_on_related_action=True,
        return_affected_field_values=True,
        notification_condition=canonical_json(condition),
    )
    client.write("POST", [wanted])
    seen = client.list()["1000000068001"]
    assert seen.events == wanted.spec.events
    assert len(seen.events) == 4
    assert seen.notify_url == NOTIFY_URL
    assert seen.token == CHANNEL_TOKEN
    assert seen.notify_on_related_action is True
    assert seen.return_affected_field_values is True
    assert seen.notification_condition == wanted.spec.notification_condition
    assert seen.expires_at == wanted.expires_at


def test_expiries_written_in_the_org_offset_come_back_as_utc(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    emulator.add_foreign_channel("1000000068001", ["Deals.edit"], NOTIFY_URL, ttl=timedelta(hours=6))
    observed = client.list()["1000000068001"]  # written as 2026-01-05T20:30:00+05:30
    assert (
        observed.expires_at
        == datetime(2026, 1, 5, 15, 0, 0, tzinfo=UTC)
        == sim_clock.now() + timedelta(hours=6)
    )
    assert observed.expires_at.utcoffset() == timedelta(0)


def test_an_org_west_of_utc(emulator: Emulator, http: httpx.Client, sim_clock: SimClock) -> None:
    emulator.add_org(
        "west", client_id="west-id", client_secret="west-secret", tz_offset=-timedelta(hours=11)
    )
    auth = OAuth(
        Credentials(emulator.url, "west-id", "west-secret", "emu-refresh-token-west"),
        http=http,
        clock=sim_clock,
    )
    west = WatchClient(endpoint_for(emulator), auth, clock=sim_clock)
    expiry = sim_clock.now() + timedelta(hours=3)  # 2026-01-04T23:00:00-11:00 on Zoho's side
    [result] = settled(west.write("POST", [item("1000000068009", expires_at=expiry)]))
    assert result.ok
    assert result.expires_at == expiry
    assert west.list()["1000000068009"].expires_at == expiry
    assert "1000000068009" in emulator.channels("west")
    assert "1000000068009" not in emulator.channels()
    west.close()


# -- writes --------------------------------------------------------------------------------------


def test_250_items_go_in_three_requests_and_answer_in_order(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    expiry = sim_clock.now() + timedelta(days=6)
    ids = channel_ids(250)
    results = settled(client.write("POST", [item(channel_id, expires_at=expiry) for channel_id in ids]))
    assert [r.channel_id for r in results] == ids
    assert all(r.ok and r.code == "SUCCESS" and r.expires_at == expiry for r in results)
    posts = calls(emulator, "POST")
    assert [(c.status, c.items) for c in posts] == [(201, 100), (201, 100), (201, 50)]
    assert len(emulator.channels()) == 250


@pytest.mark.parametrize("emulator", [{"max_items": 50}], indirect=True)
def test_a_zoho_capped_at_50_items_halves_the_batch_and_remembers(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    expiry = sim_clock.now() + timedelta(days=6)
    ids = channel_ids(120)
    results = settled(client.write("POST", [item(channel_id, expires_at=expiry) for channel_id in ids]))
    assert [r.channel_id for r in results] == ids
    assert all(r.ok for r in results)
    assert [(c.status, c.items) for c in calls(emulator, "POST")] == [
        (400, 100),
        (201, 50),
        (201, 50),
        (201, 20),
    ]
    renewals = [item(channel_id, expires_at=expiry) for channel_id in ids[:60]]
    assert all(r.ok for r in settled(client.write("PATCH", renewals)))
    assert [(c.status, c.items) for c in calls(emulator, "PATCH")] == [(200, 50), (200, 10)]


def test_a_size_complaint_that_halving_does_not_cure_is_not_remembered(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    from watchkeeper.emulator import Fault

    items = [
        item(channel_id, expires_at=sim_clock.now() + timedelta(hours=1))
        for channel_id in channel_ids(4)
    ]
    emulator.add_fault(Fault(status=400, code="LIMIT_REACHED", methods=frozenset({"POST"})))
    answer = client.write("POST", items)
    assert isinstance(answer.error, TerminalError)
    assert "LIMIT_REACHED" in str(answer.error)
    assert answer.results == ()
    assert [c.items for c in calls(emulator, "POST")] == [4, 2, 1]
    emulator.clear_faults()
    emulator.clear_calls()
    assert all(r.ok for r in settled(client.write("POST", items)))
    assert [c.items for c in calls(emulator, "POST")] == [4]


def test_a_failed_later_batch_returns_the_completed_results(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    from watchkeeper.emulator import Fault

    def fail_from_now_on(response: httpx.Response) -> None:
        emulator.add_fault(Fault(status=503, methods=frozenset({"POST"})))

    hooked = httpx.Client(event_hooks={"response": [fail_from_now_on]})
    auth = oauth_for(emulator, http, sim_clock)
    slept: list[float] = []
    watch = WatchClient(endpoint_for(emulator), auth, http=hooked, clock=sim_clock, sleep=slept.append)
    expiry = sim_clock.now() + timedelta(days=6)
    ids = channel_ids(150)
    answer = watch.write("POST", [item(channel_id, expires_at=expiry) for channel_id in ids])
    assert type(answer.error) is TransientError
    assert answer.error.status == 503
    assert [r.channel_id for r in answer.results] == ids[:100]
    assert all(r.ok for r in answer.results)
    assert answer.unsent == ()
    # the failed chunk was retried in place, after each of the default delays, then given up
    assert [c.status for c in calls(emulator, "POST")] == [201, 503, 503, 503, 503]
    assert slept == [0.5, 1.0, 2.0]
    watch.close()
    assert not hooked.is_closed  # a client passed in belongs to the caller
    hooked.close()


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT", "DELETE"])
def test_a_chunk_that_fails_transiently_is_retried_in_place_and_the_rest_goes_on(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock, method: str
) -> None:
    """One 5xx on the first of three chunks costs one more call and a short wait, not the channels
    of every chunk (which would back off together until a later pass)."""
    from watchkeeper.emulator import Fault

    slept: list[float] = []
    auth = oauth_for(emulator, http, sim_clock)
    watch = WatchClient(endpoint_for(emulator), auth, http=http, clock=sim_clock, sleep=slept.append)
    expiry = sim_clock.now() + timedelta(hours=6)
    ids = channel_ids(250)
    items = [item(channel_id, expires_at=expiry) for channel_id in ids]
    if method != "POST":
        assert all(r.ok for r in settled(watch.write("POST", items)))
    emulator.clear_calls()
    emulator.add_fault(Fault(status=502, methods=frozenset({method}), count=1))
    answer = watch.delete(ids) if method == "DELETE" else watch.write(method, items)  # type: ignore[arg-type]
    assert answer.error is None
    assert answer.unsent == ()
    assert [r.channel_id for r in answer.results] == ids
    assert all(r.ok for r in answer.results)
    made = calls(emulator, method)
    assert made[0].status == 502
    assert made[1].items == made[0].items
    assert all(200 <= c.status < 300 for c in made[1:])
    assert slept == [0.5]


def test_while_zoho_fails_a_chunk_is_tried_once_until_an_answer_succeeds(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    """Retrying in place is for a failure among answers: once a chunk failed through its retries,
    every later attempt is one call (an outage of hours is not met with four calls an attempt),
    until Zoho answers again; then a failure is retried in place again."""
    from watchkeeper.emulator import Fault

    slept: list[float] = []
    auth = oauth_for(emulator, http, sim_clock)
    watch = WatchClient(endpoint_for(emulator), auth, http=http, clock=sim_clock, sleep=slept.append)
    expiry = sim_clock.now() + timedelta(hours=6)
    items = [item(channel_id, expires_at=expiry) for channel_id in channel_ids(3)]
    emulator.add_fault(Fault(status=503, methods=frozenset({"POST"}), count=6))
    for tries in (4, 1, 1):
        emulator.clear_calls()
        assert type(watch.write("POST", items).error) is TransientError
        assert len(calls(emulator, "POST")) == tries
    assert slept == [0.5, 1.0, 2.0]
    # a refusal is an answer too: Zoho is up, and the next transient failure is retried in place
    emulator.add_fault(Fault(status=400, methods=frozenset({"POST"}), code="INVALID_REQUEST"))
    assert type(watch.write("POST", items).error) is TerminalError
    emulator.clear_faults()
    emulator.add_fault(Fault(status=503, methods=frozenset({"POST"}), count=1))
    emulator.clear_calls()
    assert all(r.ok for r in settled(watch.write("POST", items)))
    assert [c.status for c in calls(emulator, "POST")] == [503, 201]


def test_a_chunk_is_not_retried_after_a_429_nor_once_a_stop_is_asked(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    """A 429 pauses the account (retrying in place would press on a limit), and a stop asked for
    while a chunk fails ends the call rather than waiting out the retries."""
    from watchkeeper.emulator import Fault

    slept: list[float] = []
    auth = oauth_for(emulator, http, sim_clock)
    watch = WatchClient(endpoint_for(emulator), auth, http=http, clock=sim_clock, sleep=slept.append)
    expiry = sim_clock.now() + timedelta(hours=6)
    items = [item(channel_id, expires_at=expiry) for channel_id in channel_ids(3)]
    emulator.add_fault(Fault(status=429, methods=frozenset({"POST"}), retry_after=30, count=1))
    limited = watch.write("POST", items)
    assert type(limited.error) is RateLimited
    assert slept == []
    assert len(calls(emulator, "POST")) == 1
    emulator.clear_calls()
    emulator.add_fault(Fault(status=503, methods=frozenset({"POST"})))
    stops = iter([False, False, True])  # before the chunk, before the first wait, after it
    stopped = watch.write("POST", items, should_stop=lambda: next(stops))
    assert type(stopped.error) is TransientError
    assert slept == [0.5]
    assert len(calls(emulator, "POST")) == 1  # the stop came during the wait: nothing more


def test_per_item_errors_map_to_their_channels(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    expiry = sim_clock.now() + timedelta(hours=6)
    items = [
        item("1000000068001", expires_at=expiry),
        item("not-a-number", expires_at=expiry),
        item("1000000068003", expires_at=expiry, notify_url="ftp://hooks.example.com/"),
        item("1000000068004", ("Contacts.create",), expires_at=expiry),
    ]
    results = settled(client.write("POST", items))
    assert [(r.channel_id, r.ok, r.code, r.api_name) for r in results] == [
        ("1000000068001", True, "SUCCESS", None),
        ("not-a-number", False, "INVALID_DATA", "channel_id"),
        ("1000000068003", False, "INVALID_DATA", "notify_url"),
        ("1000000068004", True, "SUCCESS", None),
    ]
    assert results[1].json_path == "$.watch[1].channel_id"
    assert results[3].expires_at == expiry
    assert [c.status for c in calls(emulator, "POST")] == [202]


def test_patch_of_a_channel_zoho_lost_is_reported_not_found(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    expiry = sim_clock.now() + timedelta(hours=6)
    client.write(
        "POST", [item("1000000068001", expires_at=expiry), item("1000000068003", expires_at=expiry)]
    )
    later = expiry + timedelta(hours=1)
    ids = ("1000000068001", "1000000068002", "1000000068003")
    results = settled(client.write("PATCH", [item(channel_id, expires_at=later) for channel_id in ids]))
    assert [(r.channel_id, r.ok, r.code, r.not_found) for r in results] == [
        ("1000000068001", True, "SUCCESS", False),
        ("1000000068002", False, "NOT_SUBSCRIBED", True),
        ("1000000068003", True, "SUCCESS", False),
    ]
    assert results[0].expires_at == later


def test_patch_carries_the_full_item(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    expiry = sim_clock.now() + timedelta(hours=6)
    client.write("POST", [item("1000000068001", expires_at=expiry, notify_on_related_action=True)])
    renewed = expiry + timedelta(hours=2)
    client.write("PATCH", [item("1000000068001", expires_at=renewed, notify_on_related_action=True)])
    [patch] = calls(emulator, "PATCH")
    assert patch.body is not None
    sent = patch.body["watch"][0]
    assert set(sent) == {
        "channel_id",
        "events",
        "notify_url",
        "channel_expiry",
        "token",
        "notify_on_related_action",
        "return_affected_field_values",
    }
    assert sent["channel_expiry"] == "2026-01-05T17:00:00+00:00"
    assert sent["events"] == ["Deals.all"]
    channel = emulator.channels()["1000000068001"]
    assert channel.token == CHANNEL_TOKEN  # an omitted token would have been nulled
    assert channel.expires_at == renewed


def test_put_replaces_the_configuration(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    expiry = sim_clock.now() + timedelta(hours=6)
    client.write("POST", [item("1000000068001", ("Deals.all",), expires_at=expiry)])
    [result] = settled(
        client.write("PUT", [item("1000000068001", ("Contacts.create",), expires_at=expiry, token=None)])
    )
    assert result.ok
    seen = client.list()["1000000068001"]
    assert seen.events == {("Contacts", "create")}
    assert seen.token is None


# -- delete --------------------------------------------------------------------------------------


def test_delete_treats_not_subscribed_as_already_gone(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    expiry = sim_clock.now() + timedelta(hours=6)
    ours = ("1000000068001", "1000000068002")
    client.write(
        "POST",
        [item(channel_id, ("Deals.all", "Leads.create"), expires_at=expiry) for channel_id in ours],
    )
    results = settled(client.delete(["1000000068001", "1000000068555", "1000000068002"]))
    assert [(r.channel_id, r.ok, r.code) for r in results] == [
        ("1000000068001", True, "SUCCESS"),
        ("1000000068555", True, "NOT_SUBSCRIBED"),
        ("1000000068002", True, "SUCCESS"),
    ]
    assert emulator.channels() == {}
    assert [c.status for c in calls(emulator, "DELETE")] == [202]


def test_delete_keeps_each_id_list_short(emulator: Emulator, client: WatchClient) -> None:
    short = [str(n) for n in range(1, 251)]
    assert all(r.ok for r in settled(client.delete(short)))
    assert [len(c.query["channel_ids"].split(",")) for c in calls(emulator, "DELETE")] == [100, 100, 50]
    emulator.clear_calls()
    long_ids = channel_ids(60, start=4_000_000_000_000_000_000)  # 19 digits: 25 fit in 512 characters
    results = settled(client.delete(long_ids))
    assert [r.channel_id for r in results] == long_ids
    deletes = calls(emulator, "DELETE")
    assert [len(c.query["channel_ids"].split(",")) for c in deletes] == [25, 25, 10]
    assert all(len(c.query["channel_ids"]) <= 512 for c in deletes)


def test_whole_request_4xx_is_terminal(emulator: Emulator, client: WatchClient) -> None:
    from watchkeeper.emulator import Fault

    emulator.add_fault(Fault(status=400, code="REQUIRED_PARAM_MISSING", methods=frozenset({"DELETE"})))
    error = client.delete(["1000000068001"]).error
    assert type(error) is TerminalError
    assert error.code == "REQUIRED_PARAM_MISSING"
    assert error.status == 400
    assert "DELETE /crm/v8/actions/watch" in str(error)


# -- auth ----------------------------------------------------------------------------------------


def test_expired_access_token_is_refreshed_and_the_call_retried(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    now = sim_clock.now()
    cache = MemoryCache()  # a token the store kept, believed good for ten hours
    cache.save(
        AccessToken(emulator.issue_access_token(), expires_at=now + timedelta(hours=10), issued_at=now)
    )
    auth = oauth_for(emulator, http, sim_clock, cache=cache)
    watch = WatchClient(endpoint_for(emulator), auth, clock=sim_clock)
    sim_clock.advance(timedelta(minutes=61))  # Zoho expired it after its hour
    assert watch.list() == {}
    assert [(c.method, c.status) for c in emulator.calls] == [("GET", 401), ("TOKEN", 200), ("GET", 204)]
    assert len(cache.saved) == 2
    watch.close()


@pytest.mark.parametrize(
    ("code", "attempts"),
    [("INVALID_TOKEN", 2), ("AUTHENTICATION_FAILURE", 2), ("OAUTH_SCOPE_MISMATCH", 1)],
)
def test_a_401_that_persists_is_an_auth_error(
    emulator: Emulator, client: WatchClient, code: str, attempts: int
) -> None:
    from watchkeeper.emulator import Fault

    emulator.add_fault(Fault(status=401, code=code))
    with pytest.raises(AuthError) as caught:
        client.list()
    assert caught.value.code == code
    assert len(calls(emulator, "GET")) == attempts
    assert refreshes(emulator) == attempts
    assert_no_secret(caught.value, *ALL_SECRETS)


def test_a_rejected_static_token_is_an_auth_error(emulator: Emulator, sim_clock: SimClock) -> None:
    value = emulator.issue_access_token()
    watch = WatchClient(endpoint_for(emulator), StaticToken(value), clock=sim_clock)
    assert watch.list() == {}
    sim_clock.advance(timedelta(hours=2))
    with pytest.raises(AuthError) as caught:
        watch.list()
    assert [c.status for c in calls(emulator, "GET")] == [204, 401]
    assert_no_secret(caught.value, value)
    watch.close()


def test_requests_carry_the_zoho_headers(emulator: Emulator, sim_clock: SimClock) -> None:
    seen: list[httpx.Request] = []
    hooked = httpx.Client(event_hooks={"request": [seen.append]})
    value = emulator.issue_access_token()
    watch = WatchClient(endpoint_for(emulator), StaticToken(value), http=hooked, clock=sim_clock)
    watch.write("POST", [item("1000000068001", expires_at=sim_clock.now() + timedelta(hours=1))])
    [request] = seen
    assert request.headers["Authorization"] == f"Zoho-oauthtoken {value}"
    assert request.headers["User-Agent"].startswith("watchkeeper/")
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content)["watch"][0]["channel_id"] == "1000000068001"
    hooked.close()


# -- transient trouble ---------------------------------------------------------------------------


def test_429_honours_retry_after(emulator: Emulator, client: WatchClient) -> None:
    from watchkeeper.emulator import Fault

    emulator.add_fault(Fault(status=429, retry_after=7))
    with pytest.raises(RateLimited) as caught:
        client.list()
    assert caught.value.retry_after == 7
    assert caught.value.status == 429


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500},
        {"status": 502, "body": "html"},
        {"status": 200, "body": "html"},
        {"status": 200, "body": "garbage"},
        {"status": 200, "body": "empty"},
        {"status": 200, "body": "json"},  # an error-shaped body without `watch`
        {"status": None, "latency": 1.0},
    ],
    ids=["500", "502-html", "200-html", "200-garbage", "200-empty", "200-no-watch", "timeout"],
)
@pytest.mark.parametrize("call", ["list", "write"])
def test_server_trouble_is_transient(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock, fault: dict[str, Any], call: str
) -> None:
    from watchkeeper.emulator import Fault

    auth = oauth_for(emulator, http, sim_clock)
    limits = Limits(timeout=httpx.Timeout(0.3), retries=())  # one exchange's error
    watch = WatchClient(endpoint_for(emulator), auth, clock=sim_clock, limits=limits)
    emulator.add_fault(Fault(**fault))
    expiry = sim_clock.now() + timedelta(hours=1)
    error = failure(watch, call, [item("1000000068001", expires_at=expiry)])
    assert type(error) is TransientError
    assert "/crm/v8/actions/watch" in str(error)
    assert_no_secret(error, *ALL_SECRETS)
    watch.close()


def failure(watch: WatchClient, call: str, items: list[WatchItem]) -> ZohoError:
    """The error a listing raises, or the one a write returns."""
    if call == "write":
        answer = watch.write("POST", items)
        assert answer.results == ()
        assert answer.error is not None
        return answer.error
    with pytest.raises(ZohoError) as caught:
        watch.list()
    return caught.value


def test_connection_refused_is_transient(sim_clock: SimClock) -> None:
    closed = Endpoint.resolve(
        "crm", "v8", api_domain="http://127.0.0.1:9", accounts_url="http://127.0.0.1:9"
    )
    watch = WatchClient(closed, StaticToken("1000.unused"), clock=sim_clock, limits=Limits(retries=()))
    with pytest.raises(TransientError, match="GET /crm/v8/actions/watch"):
        watch.list()
    watch.close()


# -- clock skew ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "emulator",
    [{"clock_skew": timedelta(minutes=3)}, {"clock_skew": -timedelta(seconds=90)}],
    indirect=True,
    ids=["ahead", "behind"],
)
def test_skew_is_estimated_from_the_date_header(emulator: Emulator, client: WatchClient) -> None:
    assert client.skew == timedelta(0)
    client.list()
    client.list()
    assert abs(client.skew - emulator.clock_skew) <= timedelta(seconds=2)
    assert abs(client.server_now() - emulator.now()) <= timedelta(seconds=2)


def test_a_stepped_clock_restarts_the_skew_estimate(emulator: Emulator, client: WatchClient) -> None:
    client.list()
    emulator.set_clock_skew(timedelta(hours=1))  # Zoho's clock jumps: old answers no longer agree
    client.list()  # the step also expired the token: the 401 and the retried GET agree on it
    assert abs(client.skew - timedelta(hours=1)) <= timedelta(seconds=2)


# -- refused locally -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"token": "x" * 51}, "51 characters"),
        ({"expires_at": datetime(2026, 1, 5, 15, 0)}, "no timezone"),
        ({"events": frozenset({("Deals", "merge")})}, "Deals.merge"),
        ({"events": frozenset({("Deals stuff!", "edit")})}, "not Module.op"),
        ({"events": frozenset()}, "no events"),
    ],
    ids=["long-token", "naive-expiry", "bad-op", "bad-module", "no-events"],
)
def test_items_zoho_would_reject_are_refused_before_sending(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock, change: dict[str, Any], complaint: str
) -> None:
    good = item("1000000068001", expires_at=sim_clock.now() + timedelta(hours=1))
    bad = item("1000000068002", expires_at=change.pop("expires_at", good.expires_at))
    bad = WatchItem(replace(bad.spec, **change), bad.expires_at)
    with pytest.raises(RequestRefused, match=complaint) as caught:
        client.write("POST", [good, bad])
    assert "1000000068002" in str(caught.value)
    assert_no_secret(caught.value, *ALL_SECRETS, "x" * 51)
    assert emulator.calls == []


def test_a_channel_twice_in_one_request_is_refused(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    twice = item("1000000068001", expires_at=sim_clock.now() + timedelta(hours=1))
    with pytest.raises(RequestRefused, match="1000000068001"):
        client.write("PATCH", [twice, twice])
    assert emulator.calls == []


def test_construction_refuses_what_zoho_would(emulator: Emulator) -> None:
    auth = StaticToken("1000.unused")
    with pytest.raises(ValueError, match="max_items"):
        WatchClient(endpoint_for(emulator), auth, limits=Limits(max_items=101))
    plain = Endpoint("crm", "v8", "http://www.zohoapis.com", "https://accounts.zoho.com")
    with pytest.raises(ValueError, match="https"):
        WatchClient(plain, auth)


# -- a hostile server on 127.0.0.1 ---------------------------------------------------------------


Script = Callable[[BaseHTTPRequestHandler], None]


class Hostile:
    """A real HTTP server on 127.0.0.1 answering every request by ``script``: the shapes and
    pacing no emulator produces (trickles, gzip bombs, broken encodings)."""

    def __init__(self, script: Script) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with contextlib.suppress(OSError):  # the client may hang up: that is the point
                    script(self)

            do_GET = do_POST = do_PATCH = do_DELETE = do_any

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hostile:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def client(self, **limits: Any) -> WatchClient:
        """A client whose listing pages are tried once: these scripts test one exchange."""
        endpoint = Endpoint.resolve("crm", "v8", "com", self.url, self.url)
        bounds = Limits(**{"retries": (), **limits})
        return WatchClient(endpoint, StaticToken("t" * 20), limits=bounds)


def head(handler: BaseHTTPRequestHandler, length: int, **headers: str) -> None:
    handler.send_response_only(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(length))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()


def test_a_body_that_cannot_be_decoded_is_transient() -> None:
    """A proxy answering ``Content-Encoding: gzip`` with a body that is not gzip."""

    def broken_gzip(handler: BaseHTTPRequestHandler) -> None:
        head(handler, 15, Content_Encoding="gzip")
        handler.wfile.write(b"not really gzip")

    with Hostile(broken_gzip) as server:
        client = server.client()
        with pytest.raises(TransientError, match=r"answer cannot be decoded \(gzip\)"):
            client.list()
        client.close()


def trickle(handler: BaseHTTPRequestHandler) -> None:
    """A valid listing, one byte every 0.25 s: never silent long enough for a read timeout."""
    body = b'{"watch": [], "info": {"more_records": false}}'
    head(handler, len(body))
    for byte in body:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.25)


def test_a_trickled_answer_is_cut_at_the_deadline() -> None:
    with Hostile(trickle) as server:
        client = server.client(deadline=1.0, timeout=httpx.Timeout(5.0))
        started = time.monotonic()
        with pytest.raises(TransientError, match="deadline exceeded") as caught:
            client.list()
        elapsed = time.monotonic() - started
        client.close()
    assert 1.0 <= elapsed < 2.0, f"the 12-second trickle was read for {elapsed:.1f}s"
    assert "GET /crm/v8/actions/watch" in str(caught.value)


def gzip_bomb(decoded: int) -> bytes:
    """``decoded`` zero bytes (a JSON-looking start) gzipped: about 1,000 to 1 for zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    parts = [packer.compress(b'{"watch": ["')]
    block = b"0" * (1 << 20)
    parts += [packer.compress(block) for _ in range(decoded >> 20)]
    return b"".join(parts) + packer.flush()


def test_a_gzip_bomb_stops_at_the_size_cap_without_inflating() -> None:
    bomb = gzip_bomb(300 << 20)  # 300 MiB decoded from some 300 KB
    assert len(bomb) < 400_000

    def bombing(handler: BaseHTTPRequestHandler) -> None:
        head(handler, len(bomb), Content_Encoding="gzip")
        handler.wfile.write(bomb)

    with Hostile(bombing) as server:
        client = server.client(max_answer_bytes=4 << 20)
        tracemalloc.start()
        try:
            with pytest.raises(TransientError, match="answer too large") as caught:
                client.list()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        client.close()
    assert peak < 16 << 20, f"reading the bomb peaked at {peak >> 20} MiB"
    assert str(4 << 20) in str(caught.value)


def test_the_default_cap_is_16_mib_a_page() -> None:
    assert Limits().max_answer_bytes == 16 * 1024 * 1024
    assert Limits().deadline == 60.0


def test_each_failure_says_its_reason(emulator: Emulator, sim_clock: SimClock) -> None:
    """``api.retry`` logs str(exc): a timeout, a cut body, a missing ``watch``, a deadline and a
    too-large answer must not read alike, and none may carry a secret."""
    from watchkeeper.emulator import Fault

    def cut(handler: BaseHTTPRequestHandler) -> None:
        head(handler, 14)
        handler.wfile.write(b'{"watch": [{"c')

    def large(handler: BaseHTTPRequestHandler) -> None:
        body = b'{"watch": []}' + b" " * 2000
        head(handler, len(body))
        handler.wfile.write(body)

    messages = {}
    for name, script, limits in (
        ("truncated", cut, {}),
        ("deadline", trickle, {"deadline": 0.5}),
        ("too large", large, {"max_answer_bytes": 1000}),
    ):
        with Hostile(script) as server:
            client = server.client(**limits)
            with pytest.raises(TransientError) as caught:
                client.list()
            messages[name] = str(caught.value)
            client.close()
    for name, fault in (
        ("timed out", Fault(status=None, latency=1.0)),
        ("no watch list", Fault(status=200, body="json")),
    ):
        emulator.clear_faults()
        emulator.add_fault(fault)
        value = emulator.issue_access_token()
        watch = WatchClient(
            endpoint_for(emulator),
            StaticToken(value),
            clock=sim_clock,
            limits=Limits(timeout=httpx.Timeout(0.3), retries=()),
        )
        with pytest.raises(TransientError) as caught:
            watch.list()
        messages[name] = str(caught.value)
        watch.close()
    assert "not JSON (Unterminated string" in messages["truncated"]
    assert "deadline exceeded" in messages["deadline"]
    assert "answer too large" in messages["too large"]
    assert "timed out (ReadTimeout)" in messages["timed out"]
    assert "answer has no watch list" in messages["no watch list"]
    assert len(set(messages.values())) == 5
    for message in messages.values():
        assert not any(secret in message for secret in (*ALL_SECRETS, "t" * 20))


# -- stopping between chunks ---------------------------------------------------------------------


def test_a_stop_sends_no_further_chunk(
    emulator: Emulator, client: WatchClient, sim_clock: SimClock
) -> None:
    expiry = sim_clock.now() + timedelta(days=6)
    ids = channel_ids(250)
    asked = []

    def stop_after_first_chunk() -> bool:
        asked.append(len(calls(emulator, "POST")))
        return len(calls(emulator, "POST")) >= 1

    items = [item(channel_id, expires_at=expiry) for channel_id in ids]
    answer = client.write("POST", items, should_stop=stop_after_first_chunk)
    assert [r.channel_id for r in answer.results] == ids[:100]
    assert all(r.ok for r in answer.results)
    assert answer.error is None
    assert answer.unsent == tuple(ids[100:])
    assert asked == [0, 1]
    assert [c.items for c in calls(emulator, "POST")] == [100]
    assert len(emulator.channels()) == 100

    gone = client.delete(ids, should_stop=lambda: True)
    assert gone == CallResult((), unsent=tuple(ids))
    assert calls(emulator, "DELETE") == []


# -- implausible clocks --------------------------------------------------------------------------


def test_a_date_ten_years_ahead_moves_no_expiry_and_is_logged_once(
    emulator: Emulator, http: httpx.Client, sim_clock: SimClock
) -> None:
    watch = WatchClient(endpoint_for(emulator), StaticToken(_long_lived(emulator)), clock=sim_clock)
    watch.list()
    before = watch.skew
    emulator.set_clock_skew(timedelta(days=3652))
    with structlog.testing.capture_logs() as logs:
        watch.list()
        watch.list()
    assert watch.skew == before
    assert watch.server_now() - sim_clock.now() == before
    [warning] = [e for e in logs if e["event"] == "clock.skew_implausible"]
    assert warning["log_level"] == "warning"
    assert warning["url"] == "/crm/v8/actions/watch"
    assert warning["skew_seconds"] == pytest.approx(3652 * 86400, abs=2)
    watch.close()


def _long_lived(emulator: Emulator) -> str:
    """An access token the emulator keeps accepting while its clock runs ten years ahead."""
    return emulator.issue_access_token(lifetime=timedelta(days=4000))
