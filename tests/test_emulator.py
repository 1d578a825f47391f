"""The emulator's Zoho behaviour, faults and ground truth, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import watchkeeper.emulator as emulator_package
from watchkeeper.emulator import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    Emulator,
    Fault,
)
from watchkeeper.emulator.formats import format_expiry, parse_expiry
from watchkeeper.model import format_instant, parse_instant

from tests.helpers import SimClock

CRM = "/crm/v8/actions/watch"
V3 = "/crm/v3/actions/watch"
HOOK = "https://hooks.example.com/zoho?source=crm"
HOUR = timedelta(hours=1)
TOKEN = "/oauth/v2/token"


@pytest.fixture
def api(emulator: Emulator) -> Iterator[httpx.Client]:
    """A client with a month-long access token, so tests can move the clock freely."""
    token = emulator.issue_access_token(lifetime=timedelta(days=30))
    headers = {"Authorization": f"Zoho-oauthtoken {token}"}
    with httpx.Client(base_url=emulator.url, headers=headers) as client:
        yield client


@pytest.fixture
def web(emulator: Emulator) -> Iterator[httpx.Client]:
    """A client without credentials (the token endpoint, the admin API, other orgs)."""
    with httpx.Client(base_url=emulator.url) as client:
        yield client


def item(channel_id: str, events: list[str], **extra: Any) -> dict[str, Any]:
    return {"channel_id": channel_id, "events": events, "notify_url": HOOK, **extra}


def expiry_in(clock: SimClock, delta: timedelta) -> str:
    return format_instant(clock.now() + delta)


def listed(api: httpx.Client, path: str = CRM) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    page = 1
    while True:
        response = api.get(path, params={"page": page})
        if response.status_code == 204:
            return rows
        assert response.status_code == 200
        body = response.json()
        rows.extend(body["watch"])
        if not body["info"]["more_records"]:
            return rows
        page += 1


def token_form(**overrides: str) -> dict[str, str]:
    form = {
        "grant_type": "refresh_token",
        "refresh_token": DEFAULT_REFRESH_TOKEN,
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
    }
    return {**form, **overrides}


# ---- listing -----------------------------------------------------------------------------------


def test_listing_pages_450_rows_in_three_pages(emulator: Emulator, api: httpx.Client) -> None:
    for n in range(225):
        emulator.add_foreign_channel(str(1000 + n), ["Deals.create", "Leads.edit"], HOOK)

    pages = [api.get(CRM, params={"page": p}) for p in (1, 2, 3, 4)]

    assert [p.status_code for p in pages] == [200, 200, 200, 204]
    infos = [p.json()["info"] for p in pages[:3]]
    assert [i["count"] for i in infos] == [200, 200, 50]
    assert [i["more_records"] for i in infos] == [True, True, False]
    assert [i["page"] for i in infos] == [1, 2, 3]
    assert all(i["per_page"] == 200 for i in infos)
    rows = [row for p in pages[:3] for row in p.json()["watch"]]
    assert len({(r["channel_id"], r["resource_name"]) for r in rows}) == 450
    assert pages[3].content == b""
    assert api.get(CRM, params={"per_page": 1000}).json()["info"]["per_page"] == 200
    assert api.get(CRM, params={"per_page": 7}).json()["info"]["count"] == 7
    assert api.get(CRM, params={"page": "zero"}).status_code == 400


def test_listing_is_204_without_channels(api: httpx.Client) -> None:
    response = api.get(CRM)
    assert response.status_code == 204
    assert response.content == b""


def test_listing_filters_by_module_and_channel(emulator: Emulator, api: httpx.Client) -> None:
    emulator.add_foreign_channel("1", ["Deals.all", "Leads.create"], HOOK)
    emulator.add_foreign_channel("2", ["Deals.create"], HOOK)
    assert [r["channel_id"] for r in api.get(CRM, params={"module": "Deals"}).json()["watch"]] == [
        "1",
        "2",
    ]
    assert [r["resource_name"] for r in api.get(CRM, params={"channel_id": "1"}).json()["watch"]] == [
        "Leads",
        "Deals",
    ]


def test_expired_channels_vanish(emulator: Emulator, api: httpx.Client, sim_clock: SimClock) -> None:
    assert api.post(
        CRM, json={"watch": [item("7", ["Deals.create"], channel_expiry=expiry_in(sim_clock, HOUR))]}
    )

    sim_clock.advance(HOUR - timedelta(seconds=1))
    assert [r["channel_id"] for r in listed(api)] == ["7"]
    sim_clock.advance(timedelta(seconds=1))
    assert api.get(CRM).status_code == 204
    assert emulator.channels() == {}


def test_listing_10000_channels_is_fast(emulator: Emulator, api: httpx.Client) -> None:
    for n in range(10_000):
        emulator.add_foreign_channel(str(10**12 + n), ["Deals.create", "Leads.edit"], HOOK)
    started = time.perf_counter()
    rows = listed(api)
    elapsed = time.perf_counter() - started
    assert len(rows) == 20_000
    assert elapsed < 2.0, f"100 pages took {elapsed:.2f}s"


# ---- expiry ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "maximum"),
    [
        ("/crm/v3/actions/watch", timedelta(days=1)),
        (CRM, timedelta(days=7)),
        ("/bigin/v2/actions/watch", timedelta(days=1)),
    ],
)
def test_expiry_is_granted_up_to_the_version_maximum_else_defaulted(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock, path: str, maximum: timedelta
) -> None:
    now = sim_clock.now()
    requests = {
        "max": format_instant(now + maximum),
        "over": format_instant(now + maximum + timedelta(seconds=1)),
        "past": format_instant(now - HOUR),
        "garbled": "2018-02-02T10:30:00 05:30",
        "missing": None,
    }
    body = {
        "watch": [
            item(str(n), ["Deals.create"], channel_expiry=e) for n, e in enumerate(requests.values())
        ]
    }
    response = api.post(path, json=body)

    assert response.status_code == 201
    granted = {
        name: parse_instant(answer["details"]["events"][0]["channel_expiry"])
        for name, answer in zip(requests, response.json()["watch"], strict=True)
    }
    default = now + emulator.default_lifetime
    assert granted == {
        "max": now + maximum,
        "over": default,
        "past": default,
        "garbled": default,
        "missing": default,
    }
    written = response.json()["watch"][0]["details"]["events"][0]["channel_expiry"]
    assert written.endswith("+05:30")


def test_grant_only_default_window(emulator: Emulator, api: httpx.Client, sim_clock: SimClock) -> None:
    now = sim_clock.now()
    emulator.grant_only_default(now, now + HOUR)
    asked = {"watch": [item("1", ["Deals.create"], channel_expiry=expiry_in(sim_clock, 5 * HOUR))]}
    inside = api.post(CRM, json=asked).json()["watch"][0]["details"]["events"][0]["channel_expiry"]
    sim_clock.advance(HOUR)
    asked = {"watch": [item("1", ["Deals.create"], channel_expiry=expiry_in(sim_clock, 5 * HOUR))]}
    after = api.post(CRM, json=asked).json()["watch"][0]["details"]["events"][0]["channel_expiry"]
    assert parse_instant(inside) == now + emulator.default_lifetime
    assert parse_instant(after) == sim_clock.now() + 5 * HOUR


# ---- writes ------------------------------------------------------------------------------------


def test_patch_keeps_what_it_does_not_name_but_nulls_an_omitted_token(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    created = item("5", ["Deals.all"], token="tok-5", notify_on_related_action=False)
    assert api.post(V3, json={"watch": [created]}).status_code == 201

    patch = {"channel_id": "5", "channel_expiry": expiry_in(sim_clock, 20 * HOUR)}
    response = api.patch(V3, json={"watch": [patch]})

    assert response.status_code == 200
    answer = response.json()["watch"][0]
    assert answer["message"] == "Successfully updated the subscribe details"
    channel = emulator.channels()["5"]
    assert channel.token is None
    assert channel.notify_url == HOOK
    assert channel.notify_on_related_action is False
    assert {op for _, op in channel.events} == {"create", "edit", "delete"}
    assert channel.expires_at == sim_clock.now() + 20 * HOUR


def test_patch_on_v6_and_later_needs_notify_url_and_events(api: httpx.Client) -> None:
    assert api.post(CRM, json={"watch": [item("5", ["Deals.create"])]}).status_code == 201
    response = api.patch(CRM, json={"watch": [{"channel_id": "5", "notify_url": HOOK}]})
    assert response.status_code == 202
    assert response.json()["watch"][0]["code"] == "MANDATORY_NOT_FOUND"
    assert response.json()["watch"][0]["details"] == {
        "api_name": "events",
        "json_path": "$.watch[0].events",
    }


@pytest.mark.parametrize("emulator", [{"patch_events": "merge"}], indirect=True)
def test_patch_events_can_merge(emulator: Emulator, api: httpx.Client) -> None:
    assert api.post(CRM, json={"watch": [item("5", ["Deals.create"])]}).status_code == 201
    assert api.patch(CRM, json={"watch": [item("5", ["Leads.edit"])]}).status_code == 200
    assert emulator.channels()["5"].events == {("Deals", "create"), ("Leads", "edit")}


def test_patch_of_an_unknown_channel_is_not_subscribed_by_default(
    emulator: Emulator, api: httpx.Client
) -> None:
    response = api.patch(CRM, json={"watch": [item("404", ["Deals.create"])]})
    assert response.status_code == 202
    assert response.json()["watch"] == [
        {
            "code": "NOT_SUBSCRIBED",
            "details": {"channel_id": "404"},
            "message": "the channel is not subscribed",
            "status": "error",
        }
    ]
    assert emulator.channels() == {}


@pytest.mark.parametrize("emulator", [{"patch_unknown": "create"}], indirect=True)
def test_patch_of_an_unknown_channel_can_create_it(emulator: Emulator, api: httpx.Client) -> None:
    response = api.patch(CRM, json={"watch": [item("404", ["Deals.create"])]})
    assert response.status_code == 200
    assert response.json()["watch"][0]["code"] == "SUCCESS"
    assert list(emulator.channels()) == ["404"]


def test_put_replaces_the_whole_channel(emulator: Emulator, api: httpx.Client) -> None:
    created = item("5", ["Deals.all", "Leads.create"], token="tok-5", return_affected_field_values=True)
    assert api.post(CRM, json={"watch": [created]}).status_code == 201
    response = api.put(CRM, json={"watch": [item("5", ["Leads.edit"])]})
    assert response.status_code == 200
    channel = emulator.channels()["5"]
    assert channel.events == {("Leads", "edit")}
    assert channel.token is None
    assert channel.return_affected_field_values is False
    unknown = api.put(CRM, json={"watch": [item("6", ["Leads.edit"])]})
    assert unknown.status_code == 202
    assert unknown.json()["watch"][0]["code"] == "NOT_SUBSCRIBED"


def test_delete_events_removes_only_the_listed_events(emulator: Emulator, api: httpx.Client) -> None:
    assert api.post(CRM, json={"watch": [item("5", ["Deals.all", "Leads.create"])]}).status_code == 201

    body = {"watch": [{"channel_id": "5", "events": ["Deals.edit"], "_delete_events": True}]}
    response = api.patch(CRM, json=body)

    assert response.status_code == 200
    answer = response.json()["watch"][0]
    assert answer["message"] == "Successfully removed the subscribe details"
    assert [e["resource_name"] for e in answer["details"]["events"]] == ["Deals"]
    assert emulator.channels()["5"].events == {
        ("Deals", "create"),
        ("Deals", "delete"),
        ("Leads", "create"),
    }
    rest = {
        "watch": [{"channel_id": "5", "events": ["Deals.all", "Leads.create"], "_delete_events": True}]
    }
    assert api.patch(CRM, json=rest).status_code == 200
    assert emulator.channels() == {}


def test_item_validation(api: httpx.Client) -> None:
    body = {
        "watch": [
            item("1", ["Deals.create", "Deals.explode"]),
            item("not-a-number", ["Deals.create"]),
            {"channel_id": "3", "events": ["Deals.create"]},
            item("4", ["Deals.create"], token="x" * 50),
            "not an object",
        ]
    }
    response = api.post(CRM, json=body)
    assert response.status_code == 202
    answers = response.json()["watch"]
    assert [a["code"] for a in answers] == [
        "INVALID_DATA",
        "INVALID_DATA",
        "MANDATORY_NOT_FOUND",
        "SUCCESS",
        "INVALID_DATA",
    ]
    assert answers[0]["details"] == {"api_name": "events", "json_path": "$.watch[0].events[1]"}
    assert answers[1]["details"]["api_name"] == "channel_id"
    assert answers[2]["details"] == {"api_name": "notify_url", "json_path": "$.watch[2].notify_url"}


@pytest.mark.parametrize("emulator", [{"max_items": 3}], indirect=True)
def test_more_than_max_items_refuses_the_whole_request(emulator: Emulator, api: httpx.Client) -> None:
    four = {"watch": [item(str(n), ["Deals.create"]) for n in range(4)]}
    refused = api.post(CRM, json=four)
    assert refused.status_code == 400
    assert refused.json()["status"] == "error"
    assert emulator.channels() == {}
    assert api.post(CRM, json={"watch": four["watch"][:3]}).status_code == 201


def test_malformed_bodies_are_400(api: httpx.Client) -> None:
    assert api.post(CRM, content=b"{not json").status_code == 400
    assert api.post(CRM, json={"nothing": []}).json()["code"] == "MANDATORY_NOT_FOUND"


def test_delete_answers_per_channel_and_module(emulator: Emulator, api: httpx.Client) -> None:
    emulator.add_foreign_channel("1", ["Deals.create", "Leads.edit"], HOOK)
    emulator.add_foreign_channel("2", ["Deals.create"], HOOK)

    response = api.delete(CRM, params={"channel_ids": "1,999"})

    assert response.status_code == 202
    answers = response.json()["watch"]
    assert [(a["code"], a["details"].get("channel_id")) for a in answers] == [
        ("SUCCESS", "1"),
        ("SUCCESS", "1"),
        ("NOT_SUBSCRIBED", None),
    ]
    assert answers[2]["details"] == {}
    assert list(emulator.channels()) == ["2"]
    assert api.delete(CRM, params={"channel_ids": "2"}).status_code == 200
    missing = api.delete(CRM)
    assert missing.status_code == 400
    assert missing.json()["code"] == "REQUIRED_PARAM_MISSING"
    assert missing.json()["details"] == {"param": "channel_ids"}


def test_reposting_a_live_channel_renews_and_replaces_it(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    assert api.post(CRM, json={"watch": [item("5", ["Deals.create"], token="a")]}).status_code == 201
    sim_clock.advance(timedelta(minutes=30))
    again = item("5", ["Leads.create"], channel_expiry=expiry_in(sim_clock, 6 * HOUR))
    assert api.post(CRM, json={"watch": [again]}).status_code == 201
    channel = emulator.channels()["5"]
    assert channel.events == {("Leads", "create")}
    assert channel.expires_at == sim_clock.now() + 6 * HOUR
    assert channel.token is None


# ---- OAuth -------------------------------------------------------------------------------------


def test_token_refresh_success(emulator: Emulator, web: httpx.Client) -> None:
    response = web.post(TOKEN, data=token_form())
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "api_domain", "token_type", "expires_in"}
    assert body["api_domain"] == emulator.url
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    for scheme in ("Zoho-oauthtoken", "Bearer"):
        headers = {"Authorization": f"{scheme} {body['access_token']}"}
        assert web.get(CRM, headers=headers).status_code == 204
    as_query = web.post(TOKEN, params=token_form())
    assert "access_token" in as_query.json()
    call = emulator.calls[0]
    assert (call.method, call.org, call.status) == ("TOKEN", "org1", 200)


@pytest.mark.parametrize(
    ("form", "error"),
    [
        (token_form(client_secret="wrong"), "invalid_client"),
        (token_form(client_id="other"), "invalid_client"),
        (token_form(refresh_token="revoked"), "invalid_code"),
        (token_form(grant_type="authorization_code"), "unsupported_grant_type"),
    ],
)
def test_token_refresh_errors_come_with_http_200(
    emulator: Emulator, form: dict[str, str], error: str, web: httpx.Client
) -> None:
    response = web.post(TOKEN, data=form)
    assert response.status_code == 200
    assert response.json() == {"error": error}
    assert emulator.refreshes() == 0


def test_more_than_ten_refreshes_in_ten_minutes_is_refused(
    emulator: Emulator, sim_clock: SimClock, web: httpx.Client
) -> None:
    t0 = sim_clock.now()
    for _ in range(10):
        assert "access_token" in web.post(TOKEN, data=token_form()).json()
        sim_clock.advance(timedelta(seconds=30))
    assert emulator.refreshes() == 10

    refused = web.post(TOKEN, data=token_form())

    assert refused.status_code == 400
    assert refused.json()["error"] == "Access Denied"
    assert "too many requests" in refused.json()["error_description"]
    sim_clock.set(t0 + timedelta(minutes=10) - timedelta(seconds=1))
    assert web.post(TOKEN, data=token_form()).status_code == 400
    sim_clock.set(t0 + timedelta(minutes=10))  # the first refresh leaves the rolling window
    assert emulator.refreshes() == 9
    assert "access_token" in web.post(TOKEN, data=token_form()).json()


def test_expired_access_token_is_invalid_token(
    emulator: Emulator, sim_clock: SimClock, web: httpx.Client
) -> None:
    token = web.post(TOKEN, data=token_form()).json()["access_token"]
    headers = {"Authorization": f"Zoho-oauthtoken {token}"}
    sim_clock.advance(HOUR - timedelta(seconds=1))
    assert web.get(CRM, headers=headers).status_code == 204
    sim_clock.advance(timedelta(seconds=1))
    response = web.get(CRM, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "code": "INVALID_TOKEN",
        "details": {},
        "message": "invalid oauth token",
        "status": "error",
    }


def test_the_eleventh_access_token_revokes_the_oldest(emulator: Emulator, web: httpx.Client) -> None:
    tokens = [emulator.issue_access_token() for _ in range(11)]
    first, last = ({"Authorization": f"Zoho-oauthtoken {t}"} for t in (tokens[0], tokens[-1]))
    assert web.get(CRM, headers=first).json()["code"] == "INVALID_TOKEN"
    assert web.get(CRM, headers=last).status_code == 204


def test_orgs_are_separate(emulator: Emulator, web: httpx.Client) -> None:
    emulator.add_org("org2", tz_offset=timedelta(hours=-11))
    form = token_form(refresh_token=f"{DEFAULT_REFRESH_TOKEN}-org2")
    token = web.post(TOKEN, data=form).json()["access_token"]
    headers = {"Authorization": f"Zoho-oauthtoken {token}"}
    emulator.add_foreign_channel("1", ["Deals.create"], HOOK)
    assert web.get(CRM, headers=headers).status_code == 204
    emulator.add_foreign_channel("2", ["Deals.create"], HOOK, org="org2")
    row = web.get(CRM, headers=headers).json()["watch"][0]
    assert row["channel_id"] == "2"
    assert row["channel_expiry"].endswith("-11:00")


# ---- faults ------------------------------------------------------------------------------------


def test_fault_window(emulator: Emulator, api: httpx.Client, sim_clock: SimClock) -> None:
    start = sim_clock.now() + HOUR
    emulator.add_fault(Fault(status=503, start=start, end=start + HOUR))
    assert api.get(CRM).status_code == 204
    sim_clock.set(start)
    failed = api.get(CRM)
    assert failed.status_code == 503
    assert failed.json()["code"] == "INTERNAL_ERROR"
    sim_clock.set(start + HOUR)
    assert api.get(CRM).status_code == 204
    assert [c.status for c in emulator.calls] == [204, 503, 204]


def test_fault_fraction_is_seeded(emulator: Emulator, api: httpx.Client) -> None:
    def outcomes(emu: Emulator, client: httpx.Client) -> list[int]:
        emu.add_fault(Fault(status=500, fraction=0.3))
        return [client.get(CRM).status_code for _ in range(100)]

    first = outcomes(emulator, api)
    with Emulator(seed=0).start() as twin, httpx.Client(base_url=twin.url) as other:
        other.headers["Authorization"] = f"Zoho-oauthtoken {twin.issue_access_token()}"
        second = outcomes(twin, other)
    assert first == second
    assert 15 <= first.count(500) <= 45
    assert set(first) == {204, 500}


def test_429_with_retry_after_and_count(emulator: Emulator, api: httpx.Client) -> None:
    emulator.add_fault(Fault(status=429, retry_after=30, count=2, methods=frozenset({"patch"})))
    assert api.get(CRM).status_code == 204
    first, second, third = (
        api.patch(CRM, json={"watch": [item("1", ["Deals.create"])]}) for _ in range(3)
    )
    assert (first.status_code, second.status_code) == (429, 429)
    assert first.headers["Retry-After"] == "30"
    assert first.json()["code"] == "TOO_MANY_REQUESTS"
    assert third.status_code == 202  # through to Zoho: not subscribed
    assert emulator.faults[0].hits == 2


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("html", "text/html"), ("garbage", "application/json"), ("empty", "application/json")],
)
def test_fault_bodies_that_are_not_zoho_json(
    emulator: Emulator, api: httpx.Client, body: Any, content_type: str
) -> None:
    emulator.add_fault(Fault(status=502, body=body))
    response = api.get(CRM)
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith(content_type)
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


def test_token_path_faults(emulator: Emulator, web: httpx.Client) -> None:
    emulator.add_fault(Fault(status=200, paths="token", code="invalid_code", count=1))
    assert web.post(TOKEN, data=token_form()).json() == {"error": "invalid_code"}
    assert "access_token" in web.post(TOKEN, data=token_form()).json()


def test_latency_only_fault_delays_a_request_that_still_takes_effect(
    emulator: Emulator, api: httpx.Client
) -> None:
    emulator.add_fault(Fault(status=None, latency=0.3, count=1))
    started = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        api.post(CRM, json={"watch": [item("1", ["Deals.create"])]}, timeout=0.1)
    assert list(emulator.channels()) == ["1"]  # Zoho acted; only the answer was late
    assert time.perf_counter() - started < 1.0


def test_org_filtered_fault(emulator: Emulator, api: httpx.Client, web: httpx.Client) -> None:
    emulator.add_org("org2")
    emulator.add_fault(Fault(status=500, org="org2"))
    other = {"Authorization": f"Zoho-oauthtoken {emulator.issue_access_token('org2')}"}
    assert api.get(CRM).status_code == 204
    assert web.get(CRM, headers=other).status_code == 500


# ---- ground truth ------------------------------------------------------------------------------


def test_live_intervals_follow_renewals_lapses_and_deletes(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    t0 = sim_clock.now()

    def post(ttl: timedelta) -> None:
        body = {"watch": [item("9", ["Deals.create"], channel_expiry=expiry_in(sim_clock, ttl))]}
        assert api.post(CRM, json=body).status_code == 201

    post(HOUR)
    sim_clock.advance(timedelta(minutes=30))
    patch = {"watch": [item("9", ["Deals.create"], channel_expiry=expiry_in(sim_clock, HOUR))]}
    assert api.patch(CRM, json=patch).status_code == 200  # renewed before expiry: one interval
    assert emulator.live_intervals("9") == [(t0, None)]

    sim_clock.set(t0 + 2 * HOUR)  # lapsed at t0 + 1h30m
    assert emulator.live_intervals("9") == [(t0, t0 + timedelta(minutes=90))]
    post(HOUR)  # re-created after the lapse: a new interval
    sim_clock.advance(timedelta(minutes=30))
    assert api.delete(CRM, params={"channel_ids": "9"}).status_code == 200

    assert emulator.live_intervals("9") == [
        (t0, t0 + timedelta(minutes=90)),
        (t0 + 2 * HOUR, t0 + timedelta(minutes=150)),
    ]
    assert emulator.live_intervals("unknown") == []


def test_foreign_channels_and_changes_behind_the_back(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    t0 = sim_clock.now()
    emulator.add_foreign_channel("77", ["Deals.all"], HOOK, ttl=6 * HOUR, token="theirs")
    assert {(r["channel_id"], r["resource_name"]) for r in listed(api)} == {("77", "Deals")}

    sim_clock.advance(HOUR)
    emulator.change_channel("77", events=["Deals.create"], notify_url="https://elsewhere.example/x")
    row = listed(api)[0]
    assert row["events"] == ["Deals.create"]
    assert row["notify_url"] == "https://elsewhere.example/x"
    assert row["token"] == "theirs"
    assert emulator.live_intervals("77") == [(t0, None)]
    assert emulator.live_intervals("77", event="Deals.edit") == [(t0, t0 + HOUR)]
    assert emulator.live_intervals("77", event="Deals.create") == [(t0, None)]

    sim_clock.advance(HOUR)
    assert emulator.delete_channel("77") is True
    assert emulator.delete_channel("77") is False
    assert api.get(CRM).status_code == 204
    gone = api.patch(CRM, json={"watch": [item("77", ["Deals.create"])]})
    assert gone.json()["watch"][0]["code"] == "NOT_SUBSCRIBED"
    assert emulator.live_intervals("77") == [(t0, t0 + 2 * HOUR)]


def test_change_channel_can_shorten_or_end_a_channel(emulator: Emulator, sim_clock: SimClock) -> None:
    emulator.add_foreign_channel("1", ["Deals.create"], HOOK)
    emulator.change_channel("1", expires_at=sim_clock.now() + timedelta(minutes=5), token=None)
    assert emulator.channels()["1"].expires_at == sim_clock.now() + timedelta(minutes=5)
    emulator.change_channel("1", expires_at=sim_clock.now())
    assert emulator.channels() == {}
    with pytest.raises(KeyError):
        emulator.change_channel("1", events=["Deals.edit"])


def test_calls_record_what_was_asked(emulator: Emulator, api: httpx.Client) -> None:
    body = {"watch": [item("1", ["Deals.create"]), item("2", ["Deals.create"])]}
    api.post(CRM, json=body)
    api.delete(CRM, params={"channel_ids": "1,2,3"})
    post, delete = emulator.calls
    assert (post.method, post.path, post.status, post.org, post.items, post.channel_ids) == (
        "POST",
        CRM,
        201,
        "org1",
        2,
        ("1", "2"),
    )
    assert post.body == body
    assert (delete.method, delete.items, delete.channel_ids, delete.status) == (
        "DELETE",
        3,
        ("1", "2", "3"),
        202,
    )
    emulator.clear_calls()
    assert emulator.calls == []


@pytest.mark.parametrize("emulator", [{"clock_skew": timedelta(seconds=90)}], indirect=True)
def test_clock_skew_shows_in_the_date_header_and_expiries(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    response = api.post(CRM, json={"watch": [item("1", ["Deals.create"])]})
    zoho_now = sim_clock.now() + timedelta(seconds=90)
    assert parsedate_to_datetime(response.headers["Date"]) == zoho_now
    expiry = response.json()["watch"][0]["details"]["events"][0]["channel_expiry"]
    assert parse_instant(expiry) == zoho_now + emulator.default_lifetime
    emulator.set_clock_skew(timedelta(0))
    assert parsedate_to_datetime(api.get(CRM).headers["Date"]) == sim_clock.now()


# ---- deliveries --------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append((self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    received: list[tuple[str, dict[str, Any]]] = []
    server.received = received  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_record_change_is_delivered_to_subscribed_live_channels(
    emulator: Emulator, sim_clock: SimClock, receiver: tuple[str, list[tuple[str, dict[str, Any]]]]
) -> None:
    url, received = receiver
    emulator.add_foreign_channel("1", ["Deals.all"], f"{url}/hook?source=crm&k=v", token="tok-1")
    emulator.add_foreign_channel("2", ["Deals.create"], f"{url}/other")
    emulator.add_foreign_channel("3", ["Deals.edit"], f"{url}/lapsed", ttl=timedelta(minutes=1))
    emulator.add_foreign_channel("4", ["Deals.edit"], "http://127.0.0.1:9/unreachable")
    sim_clock.advance(timedelta(minutes=2))

    deliveries = emulator.simulate_record_change("Deals", "edit", ["555"])

    assert [(d.channel_id, d.status) for d in deliveries] == [("1", 200), ("4", None)]
    assert deliveries[1].error is not None
    assert len(received) == 1
    path, payload = received[0]
    assert path == "/hook?source=crm&k=v"
    assert payload == {
        "server_time": int(sim_clock.now().timestamp() * 1000),
        "query_params": {"source": "crm", "k": "v"},
        "module": "Deals",
        "resource_uri": f"{emulator.url}/crm/v2/Deals",
        "ids": ["555"],
        "affected_fields": [{"555": []}],
        "operation": "update",
        "channel_id": "1",
        "token": "tok-1",
    }
    created = emulator.simulate_record_change("Deals", "create", ["556"])
    assert [d.channel_id for d in created] == ["1", "2"]
    assert received[-1][1]["operation"] == "insert"
    assert received[-1][1]["token"] is None


# ---- admin over HTTP ---------------------------------------------------------------------------


def test_admin_endpoints(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock, web: httpx.Client
) -> None:
    admin = "/__emulator"
    added = web.post(
        f"{admin}/channels",
        json={
            "channel_id": "5",
            "events": ["Deals.all"],
            "notify_url": HOOK,
            "ttl_seconds": 600,
            "token": "s3",
        },
    ).json()["channel"]
    assert added["token"] == "***"
    assert added["notify_url"] == "https://hooks.example.com/zoho?source=***"
    assert [c["channel_id"] for c in web.get(f"{admin}/channels").json()["channels"]] == ["5"]
    changed = web.patch(f"{admin}/channels/5", json={"events": ["Deals.create"]}).json()["channel"]
    assert changed["events"] == ["Deals.create"]

    fault = web.post(
        f"{admin}/faults", json={"status": 429, "retry_after": 5, "methods": ["GET"], "count": 1}
    )
    assert fault.json()["fault"]["methods"] == ["GET"]
    assert api.get(CRM).status_code == 429
    assert web.get(f"{admin}/faults").json()["faults"][0]["hits"] == 1
    web.delete(f"{admin}/faults")
    assert emulator.faults == []

    calls = web.get(f"{admin}/calls").json()["calls"]
    assert [(c["method"], c["status"]) for c in calls] == [("GET", 429)]
    skew = web.post(f"{admin}/clock", json={"skew_seconds": 3600}).json()
    assert parse_instant(skew["now"]) == sim_clock.now() + HOUR
    intervals = web.get(f"{admin}/live_intervals", params={"channel_id": "5"}).json()["intervals"]
    assert intervals == [
        [sim_clock.now().isoformat(), (sim_clock.now() + timedelta(seconds=600)).isoformat()]
    ]
    assert web.delete(f"{admin}/channels/5").json() == {"deleted": False}  # lapsed at the skewed clock
    assert web.get(f"{admin}/refreshes").json() == {"refreshes": 0}
    assert web.get(f"{admin}/").json()["url"] == emulator.url
    assert web.post(f"{admin}/faults", json={"fraction": 2}).status_code == 400
    assert web.get(f"{admin}/nothing").status_code == 404
    assert web.put(f"{admin}/faults").status_code == 405

    token = web.post(f"{admin}/access_token", json={}).json()["access_token"]
    assert web.get(CRM, headers={"Authorization": f"Zoho-oauthtoken {token}"}).status_code == 204
    window = {"start": sim_clock.now().isoformat(), "end": (sim_clock.now() + 2 * HOUR).isoformat()}
    assert web.post(f"{admin}/grant_only_default", json=window).status_code == 200
    closed = "http://127.0.0.1:9/hook"  # the discard port: nothing listens
    six = item("6", ["Leads.edit"], notify_url=closed, channel_expiry=expiry_in(sim_clock, 5 * HOUR))
    asked = {"watch": [six]}
    granted = api.post(CRM, json=asked).json()["watch"][0]["details"]["events"][0]["channel_expiry"]
    assert parse_instant(granted) == emulator.now() + emulator.default_lifetime
    change = {"module": "Leads", "op": "edit", "record_ids": [1]}
    deliveries = web.post(f"{admin}/record_change", json=change).json()["deliveries"]
    assert [(d["channel_id"], d["status"], d["error"]) for d in deliveries] == [
        ("6", None, "ConnectError")
    ]
    web.delete(f"{admin}/calls")
    assert emulator.calls == []


def test_a_real_clock_by_default() -> None:
    with Emulator() as emu:
        before = datetime.now(UTC)
        assert before - timedelta(seconds=5) <= emu.now() <= datetime.now(UTC)
        assert emu.now().tzinfo is not None
        assert emu.now().astimezone(UTC).utcoffset() == timedelta(0)


def test_serve_runs_in_the_foreground_until_sigterm() -> None:
    root = Path(__file__).resolve().parent.parent
    code = "from watchkeeper.emulator import serve; serve('127.0.0.1', 0)"
    env = {**os.environ, "PYTHONPATH": str(root / "daemon")}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=root
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            url = re.search(r"listening on (http://127\.0\.0\.1:\d+)", banner)
            assert url is not None, banner
            assert f"client_id={DEFAULT_CLIENT_ID}" in banner
            answer = httpx.post(url.group(1) + TOKEN, data=token_form())
            assert answer.json()["api_domain"] == url.group(1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()


@pytest.mark.parametrize("emulator", [{"forbidden_modules": frozenset({"Invoices"})}], indirect=True)
def test_a_module_without_permission_is_refused_per_item(emulator: Emulator) -> None:
    token = emulator.issue_access_token()
    body = {
        "watch": [
            {"channel_id": "1", "events": ["Deals.create"], "notify_url": "https://h.example/"},
            {"channel_id": "2", "events": ["Invoices.all"], "notify_url": "https://h.example/"},
        ]
    }
    resp = httpx.post(
        f"{emulator.url}/crm/v8/actions/watch",
        json=body,
        headers={"Authorization": f"Zoho-oauthtoken {token}"},
    )
    assert resp.status_code == 202
    ok, refused = resp.json()["watch"]
    assert ok["code"] == "SUCCESS"
    assert refused["code"] == "INVALID_DATA"
    assert refused["details"] == {"api_name": "events", "json_path": "$.watch[1].events"}
    assert set(emulator.channels()) == {"1"}


# ---- an independent oracle ---------------------------------------------------------------------

EMULATOR_DIR = Path(emulator_package.__file__).parent


def _imported(tree: ast.Module, package: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import anywhere in the tree (nested and TYPE_CHECKING
    ones too); ``from a import b`` yields ``a`` and ``a.b``, since b may be a module; a string
    naming a watchkeeper module counts too (``importlib.import_module``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Constant) and re.fullmatch(r"watchkeeper(\.\w+)+", str(node.value)):
            yield node.lineno, str(node.value)


def foreign_imports(package_dir: Path, package: str = "watchkeeper.emulator") -> list[str]:
    """``file:line module`` for each watchkeeper module outside ``package`` that it imports."""
    found: list[tuple[str, int, str]] = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir)
        here = ".".join((package, *relative.parent.parts))
        for line, name in _imported(ast.parse(path.read_text()), here):
            daemon = name == "watchkeeper" or name.startswith("watchkeeper.")
            if daemon and not (name == package or name.startswith(f"{package}.")):
                found.append((str(relative), line, name))
    return [f"{file}:{line} {name}" for file, line, name in sorted(found)]


def test_the_emulator_imports_nothing_from_the_daemon() -> None:
    """A fake that shares the parsers and tables it checks cannot catch their mistakes."""
    assert len(list(EMULATOR_DIR.glob("*.py"))) >= 10  # the walk sees the package
    assert foreign_imports(EMULATOR_DIR) == []


def test_foreign_imports_finds_every_form(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text(
        "from watchkeeper.emulator import watch\n"
        "from . import state\n"
        "import watchkeeper.model\n"
        "from .. import config\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from watchkeeper.zoho.regions import VERSIONS\n"
    )
    (tmp_path / "sub" / "b.py").write_text(
        "def f():\n    from ...zoho import wire\n    return wire\n"
        "import importlib\nimportlib.import_module('watchkeeper.store')\n"
        "from .. import faults\n"
    )
    assert foreign_imports(tmp_path) == [
        "a.py:3 watchkeeper.model",
        "a.py:4 watchkeeper",
        "a.py:4 watchkeeper.config",
        "a.py:7 watchkeeper.zoho.regions",
        "a.py:7 watchkeeper.zoho.regions.VERSIONS",
        "sub/b.py:2 watchkeeper.zoho",
        "sub/b.py:2 watchkeeper.zoho.wire",
        "sub/b.py:5 watchkeeper.store",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-02-02T10:30:00+05:30", datetime(2023, 2, 2, 5, 0, tzinfo=UTC)),
        ("2023-02-02T10:30:00-11:00", datetime(2023, 2, 2, 21, 30, tzinfo=UTC)),
        ("2024-02-29T00:00:00+00:00", datetime(2024, 2, 29, tzinfo=UTC)),
        ("2023-02-02T10:30:00 05:30", None),  # the Chilkat sample's lost "+"
        ("2023-02-02T10:30:00Z", None),  # UNCONFIRMED in the docs: "send +00:00"
        ("2023-02-02T10:30:00", None),  # no offset
        ("2023-02-02T10:30+05:30", None),  # no seconds
        ("2023-02-02T10:30:00.5+05:30", None),  # fractions: "seconds precision"
        ("2023-02-02 10:30:00+05:30", None),
        ("2023-02-02", None),
        ("2023-02-30T10:30:00+05:30", None),
        ("2023-02-02T24:00:00+05:30", None),
        ("2023-02-02T10:30:00+24:00", None),
        ("٢٠٢٣-02-02T10:30:00+05:30", None),  # digits Python's int() reads but Zoho does not
        (1675314000, None),
        (None, None),
    ],
)
def test_expiry_parsing_reads_what_zoho_documents(text: object, expected: datetime | None) -> None:
    assert parse_expiry(text) == expected


def test_expiries_are_written_in_the_org_offset() -> None:
    instant = datetime(2021, 5, 3, 14, 57, 17, 999_999, tzinfo=UTC)
    assert format_expiry(instant, timedelta(hours=5, minutes=30)) == "2021-05-03T20:27:17+05:30"
    assert format_expiry(instant, timedelta(hours=-11)) == "2021-05-03T03:57:17-11:00"
    assert format_expiry(instant, timedelta(hours=-3, minutes=-30)) == "2021-05-03T11:27:17-03:30"
    with pytest.raises(ValueError, match="naive"):
        format_expiry(instant.replace(tzinfo=None), timedelta(0))


# ---- CRM and Bigin -----------------------------------------------------------------------------

BIGIN = "/bigin/v2/actions/watch"


def test_crm_and_bigin_keep_separate_stores(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock, web: httpx.Client
) -> None:
    assert api.post(CRM, json={"watch": [item("5", ["Deals.create"], token="crm")]}).status_code == 201
    assert api.get(BIGIN).status_code == 204  # not listed through Bigin
    unknown = api.patch(BIGIN, json={"watch": [item("5", ["Deals.edit"])]})
    assert unknown.json()["watch"][0]["code"] == "NOT_SUBSCRIBED"

    # the same id on Bigin is another channel
    bigin = item("5", ["Pipelines.edit"], token="bigin")
    assert api.post(BIGIN, json={"watch": [bigin]}).status_code == 201
    assert [(r["resource_name"], r["token"]) for r in listed(api, BIGIN)] == [("Pipelines", "bigin")]
    assert [(r["resource_name"], r["token"]) for r in listed(api, CRM)] == [("Deals", "crm")]
    assert emulator.channels()["5"].events == {("Deals", "create")}
    assert emulator.channels(product="bigin")["5"].events == {("Pipelines", "edit")}

    sim_clock.advance(HOUR / 2)
    assert api.delete(CRM, params={"channel_ids": "5"}).status_code == 200
    assert [r["resource_name"] for r in listed(api, BIGIN)] == ["Pipelines"]
    assert emulator.live_intervals("5") == [(sim_clock.now() - HOUR / 2, sim_clock.now())]
    assert emulator.live_intervals("5", product="bigin") == [(sim_clock.now() - HOUR / 2, None)]

    admin = "/__emulator/channels"
    web.post(
        admin, json={"channel_id": "6", "events": ["Calls.all"], "notify_url": HOOK, "product": "bigin"}
    )
    assert [c["channel_id"] for c in web.get(admin, params={"product": "bigin"}).json()["channels"]] == [
        "5",
        "6",
    ]
    assert web.get(admin).json()["channels"] == []
    assert web.delete(f"{admin}/6").json() == {"deleted": False}  # CRM has no channel 6
    assert web.delete(f"{admin}/6", params={"product": "bigin"}).json() == {"deleted": True}
    assert web.get(admin, params={"product": "zoho desk"}).status_code == 400
    status = web.get("/__emulator/").json()
    assert (status["live_channels"], status["live_channels_by_product"]) == (1, {"crm": 0, "bigin": 1})


def test_record_changes_reach_only_the_products_channels(
    emulator: Emulator, receiver: tuple[str, list[tuple[str, dict[str, Any]]]]
) -> None:
    url, received = receiver
    emulator.add_foreign_channel("1", ["Contacts.create"], f"{url}/crm")
    emulator.add_foreign_channel("2", ["Contacts.create"], f"{url}/bigin", product="bigin")
    delivered = emulator.simulate_record_change("Contacts", "create", ["9"], product="bigin")
    assert [d.channel_id for d in delivered] == ["2"]
    assert [(path, body["resource_uri"]) for path, body in received] == [
        ("/bigin", f"{emulator.url}/bigin/v1/Contacts")
    ]


# ---- the default lifetime ----------------------------------------------------------------------


@pytest.mark.parametrize("emulator", [{"default_lifetime": 2 * HOUR}], indirect=True)
def test_the_default_lifetime_is_a_constructor_argument(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    answer = api.post(CRM, json={"watch": [item("1", ["Deals.create"])]}).json()["watch"][0]
    granted = datetime.fromisoformat(answer["details"]["events"][0]["channel_expiry"])
    assert granted == sim_clock.now() + 2 * HOUR
    assert emulator.default_lifetime == emulator.options.default_lifetime == 2 * HOUR


def _emulate(*args: str) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root / "daemon")}
    command = [sys.executable, "-m", "watchkeeper", "emulate", "--port", "0", *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root
    )


def test_emulate_grants_the_default_lifetime_it_is_given() -> None:
    with _emulate("--default-lifetime", "2h") as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", banner)
            assert found is not None, banner
            url = found.group(1)
            token = httpx.post(f"{url}/__emulator/access_token", json={}).json()["access_token"]
            headers = {"Authorization": f"Zoho-oauthtoken {token}"}
            past = {"watch": [item("1", ["Deals.create"], channel_expiry="2018-02-02T10:30:00+05:30")]}
            answer = httpx.post(url + CRM, json=past, headers=headers)
            granted = answer.json()["watch"][0]["details"]["events"][0]["channel_expiry"]
            date = parsedate_to_datetime(answer.headers["Date"])
            assert datetime.fromisoformat(granted) == date + 2 * HOUR
            options = httpx.get(f"{url}/__emulator/options").json()["options"]
            assert options["default_lifetime"] == 7200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            process.kill()


@pytest.mark.parametrize("value", ["soon", "0s", "-1h"])
def test_emulate_refuses_a_default_lifetime_that_is_not_a_duration(value: str) -> None:
    with _emulate(f"--default-lifetime={value}") as process:
        _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "--default-lifetime" in err
    assert repr(value) in err


# ---- options for every plausible Zoho ----------------------------------------------------------


@pytest.mark.parametrize("emulator", [{"patch_unknown": "invalid_data"}], indirect=True)
@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_an_unknown_channel_can_be_invalid_data(
    emulator: Emulator, api: httpx.Client, method: str
) -> None:
    assert api.post(CRM, json={"watch": [item("1", ["Deals.create"])]}).status_code == 201
    body = {"watch": [item("1", ["Deals.edit"]), item("404", ["Deals.edit"])]}
    response = api.request(method, CRM, json=body)
    assert response.status_code == 202
    known, unknown = response.json()["watch"]
    assert known["code"] == "SUCCESS"
    assert unknown == {
        "code": "INVALID_DATA",
        "details": {"api_name": "channel_id", "json_path": "$.watch[1].channel_id"},
        "message": "invalid data",
        "status": "error",
    }
    assert list(emulator.channels()) == ["1"]
    removal = {"watch": [{"channel_id": "404", "events": ["Deals.edit"], "_delete_events": True}]}
    gone = api.patch(CRM, json=removal).json()["watch"][0]
    assert (gone["code"], gone["details"]["api_name"]) == ("INVALID_DATA", "channel_id")


REFUSED_EXPIRIES = {
    "past": "2018-02-02T10:30:00+05:30",
    "garbled": "2018-02-02T10:30:00 05:30",
    "zulu": "2026-01-05T12:00:00Z",
    "date": "2026-01-06",
    "number": 1767600000,
}


@pytest.mark.parametrize("emulator", [{"bad_expiry": "refuse"}], indirect=True)
def test_bad_expiries_can_be_refused(emulator: Emulator, api: httpx.Client, sim_clock: SimClock) -> None:
    now = sim_clock.now()
    good = {
        "asked": format_instant(now + 5 * HOUR),
        "missing": None,
        "over": format_instant(now + timedelta(days=8)),
    }
    asked = [*REFUSED_EXPIRIES.values(), *good.values()]
    body = {"watch": [item(str(n), ["Deals.create"], channel_expiry=e) for n, e in enumerate(asked)]}
    response = api.post(CRM, json=body)
    assert response.status_code == 202
    answers = response.json()["watch"]
    refused = answers[: len(REFUSED_EXPIRIES)]
    assert [a["code"] for a in refused] == ["INVALID_DATA"] * len(REFUSED_EXPIRIES)
    assert [a["details"] for a in refused] == [
        {"api_name": "channel_expiry", "json_path": f"$.watch[{n}].channel_expiry"}
        for n in range(len(REFUSED_EXPIRIES))
    ]
    granted = [
        datetime.fromisoformat(a["details"]["events"][0]["channel_expiry"])
        for a in answers[len(REFUSED_EXPIRIES) :]
    ]
    default = now + emulator.default_lifetime
    assert granted == [now + 5 * HOUR, default, default]  # the unasked and too long still default
    assert sorted(emulator.channels()) == ["5", "6", "7"]
    renewal = {"watch": [item("5", ["Deals.create"], channel_expiry=REFUSED_EXPIRIES["past"])]}
    assert api.patch(CRM, json=renewal).json()["watch"][0]["code"] == "INVALID_DATA"
    assert emulator.channels()["5"].expires_at == now + 5 * HOUR  # a refused item changes nothing


def test_bad_expiries_are_defaulted_by_default(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    body = {
        "watch": [
            item(str(n), ["Deals.create"], channel_expiry=e)
            for n, e in enumerate(REFUSED_EXPIRIES.values())
        ]
    }
    response = api.post(CRM, json=body)
    assert response.status_code == 201
    default = sim_clock.now() + emulator.default_lifetime
    assert {ch.expires_at for ch in emulator.channels().values()} == {default}
    assert len(emulator.channels()) == len(REFUSED_EXPIRIES)


@pytest.mark.parametrize(
    "emulator", [{"unknown_modules": "refuse", "custom_modules": frozenset({"Ships"})}], indirect=True
)
def test_unknown_modules_can_be_refused(emulator: Emulator, api: httpx.Client) -> None:
    crm = {
        "watch": [
            item("1", ["Deals.create", "Pipelines.edit"]),  # a Bigin module
            item("2", ["Deals.all", "Ships.create", "Notes.edit"]),
            item("3", ["deals.create"]),  # API names are case-sensitive
        ]
    }
    answers = api.post(CRM, json=crm).json()["watch"]
    assert [a["code"] for a in answers] == ["INVALID_DATA", "SUCCESS", "INVALID_DATA"]
    assert answers[0]["details"] == {"api_name": "events", "json_path": "$.watch[0].events[1]"}
    assert answers[2]["details"] == {"api_name": "events", "json_path": "$.watch[2].events[0]"}
    bigin = {"watch": [item("1", ["Pipelines.edit", "Contacts.all"]), item("2", ["Deals.create"])]}
    answers = api.post(BIGIN, json=bigin).json()["watch"]
    assert [a["code"] for a in answers] == ["SUCCESS", "INVALID_DATA"]
    assert answers[1]["details"] == {"api_name": "events", "json_path": "$.watch[1].events[0]"}
    patch = {"watch": [item("2", ["Dealz.edit"])]}
    assert api.patch(CRM, json=patch).json()["watch"][0]["code"] == "INVALID_DATA"
    assert emulator.channels()["2"].events == {
        ("Deals", "create"),
        ("Deals", "edit"),
        ("Deals", "delete"),
        ("Ships", "create"),
        ("Notes", "edit"),
    }


def test_unknown_modules_are_accepted_by_default(api: httpx.Client) -> None:
    body = {"watch": [item("1", ["Dealz.create"]), item("2", ["Pipelines.edit"])]}
    assert api.post(CRM, json=body).status_code == 201


def test_options_over_the_admin_api(emulator: Emulator, api: httpx.Client, web: httpx.Client) -> None:
    options = "/__emulator/options"
    assert web.get(options).json()["options"] == {
        "default_lifetime": 3600.0,
        "access_token_lifetime": 3600.0,
        "max_items": 100,
        "patch_unknown": "error",
        "patch_events": "replace",
        "bad_expiry": "default",
        "unknown_modules": "accept",
        "custom_modules": [],
        "forbidden_modules": [],
        "expired_listed_for": 0.0,
        "records_empty": "204",
        "page_tokens": "v5+",
    }
    change = {
        "patch_unknown": "invalid_data",
        "bad_expiry": "refuse",
        "unknown_modules": "refuse",
        "custom_modules": ["Ships"],
        "default_lifetime": 7200,
    }
    changed = web.patch(options, json=change).json()["options"]
    assert {k: changed[k] for k in change} == change
    assert emulator.options.custom_modules == {"Ships"}

    body = {
        "watch": [
            item("1", ["Ships.create"]),
            item("2", ["Dealz.create"]),
            item("3", ["Deals.create"], channel_expiry="2018-02-02T10:30:00+05:30"),
        ]
    }
    answers = api.post(CRM, json=body).json()["watch"]
    assert [(a["code"], a["details"].get("api_name")) for a in answers] == [
        ("SUCCESS", None),
        ("INVALID_DATA", "events"),
        ("INVALID_DATA", "channel_expiry"),
    ]
    granted = datetime.fromisoformat(answers[0]["details"]["events"][0]["channel_expiry"])
    assert granted == emulator.now() + 2 * HOUR
    unknown = api.put(CRM, json={"watch": [item("404", ["Deals.create"])]}).json()["watch"][0]
    assert (unknown["code"], unknown["details"]["api_name"]) == ("INVALID_DATA", "channel_id")

    for bad in (
        {"patch_unknown": "maybe"},
        {"default_lifetime": -1},
        {"default_lifetime": "2h"},
        {"custom_modules": "Ships"},
        {"max_items": 0},
        {"colour": "blue"},
    ):
        refused = web.patch(options, json=bad)
        assert refused.status_code == 400, bad
        assert next(iter(bad)) in refused.json()["error"]
    assert emulator.options.patch_unknown == "invalid_data"  # a refused change changes nothing


def test_options_are_checked_in_python() -> None:
    with pytest.raises(ValueError, match="patch_unknown is one of error, create, invalid_data"):
        Emulator(patch_unknown="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="default_lifetime must be positive"):
        Emulator(default_lifetime=timedelta(0))
    emu = Emulator()
    assert emu.set_options(bad_expiry="refuse").bad_expiry == "refuse"
    with pytest.raises(ValueError, match="unknown_modules"):
        emu.set_options(unknown_modules="reject")  # type: ignore[arg-type]
    assert emu.options.unknown_modules == "accept"


def test_a_mistyped_keyword_is_refused(emulator: Emulator) -> None:
    with pytest.raises(TypeError, match="prodcut"):
        emulator.add_foreign_channel("1", ["Deals.create"], HOOK, prodcut="bigin")  # type: ignore[call-arg]
    emulator.add_foreign_channel("1", ["Deals.create"], HOOK)
    with pytest.raises(TypeError, match="expiry"):
        emulator.change_channel("1", expiry=datetime.now(UTC))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="product is one of crm, bigin"):
        emulator.channels(product="desk")  # type: ignore[arg-type]
    assert emulator.channels()["1"].events == {("Deals", "create")}
