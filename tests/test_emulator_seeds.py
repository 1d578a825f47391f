"""The emulator against Zoho's recorded answers (tests/fixtures/seeds, see SOURCES.md there).

Where the recording pins every value (the clock set to the recorded ``Date``, the recorded 2-hour
default lifetime), the emulator's body must equal the recorded one outright, apart from the api
domain; elsewhere the shapes (keys at every level, value types), codes and statuses must match.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from watchkeeper.emulator import Emulator, Fault

from tests.helpers import SimClock

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
RECORDED_DOMAIN = "https://www.zohoapis.com"
RECORDED_DEFAULT = {"default_lifetime": timedelta(hours=2)}
"""Seed 001 answered a past expiry with exactly Date + 2 h."""


def seed(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SEEDS / f"{name}.json").read_text())
    return data


def shape(value: Any) -> Any:
    """Keys at every level and the JSON type of every leaf; a list becomes its distinct shapes."""
    if isinstance(value, dict):
        return {key: shape(v) for key, v in value.items()}
    if isinstance(value, list):
        distinct: list[Any] = []
        for item in map(shape, value):
            if item not in distinct:
                distinct.append(item)
        return distinct
    return type(value).__name__


def as_recorded(emu: Emulator, response: httpx.Response) -> Any:
    """The body with the emulator's base URL written as Zoho's api domain."""
    return json.loads(response.text.replace(emu.url, RECORDED_DOMAIN))


@pytest.fixture
def api(emulator: Emulator) -> Iterator[httpx.Client]:
    token = emulator.issue_access_token(lifetime=timedelta(days=30))
    headers = {"Authorization": f"Zoho-oauthtoken {token}"}
    with httpx.Client(base_url=emulator.url, headers=headers) as client:
        yield client


def at_recorded_date(
    clock: SimClock, recording: dict[str, Any], earlier: timedelta = timedelta(0)
) -> None:
    clock.set(parsedate_to_datetime(recording["date"]) - earlier)


@pytest.mark.parametrize("emulator", [RECORDED_DEFAULT], indirect=True)
def test_post_of_the_recorded_request_answers_the_recorded_body(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    recording = seed("post_201_success")
    at_recorded_date(sim_clock, recording)
    response = api.post(recording["path"], json=recording["request_body"])
    assert response.status_code == recording["status"] == 201
    # 3 channels, past expiry -> the default lifetime, written in +05:30 like Zoho did
    assert as_recorded(emulator, response) == recording["body"]
    assert response.headers["Date"] == recording["date"]
    assert response.headers["X-ACCESSTOKEN-RESET"].endswith("+05:30")


@pytest.mark.parametrize("emulator", [RECORDED_DEFAULT], indirect=True)
def test_get_after_the_recorded_post_lists_the_recorded_rows(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    listing = seed("get_200_listing")
    # the recorded channels expired 1h59m57s after this listing: created 3 s before it
    at_recorded_date(sim_clock, listing, earlier=timedelta(seconds=3))
    created = api.post(listing["path"], json=seed("post_201_success")["request_body"])
    assert created.status_code == 201
    sim_clock.advance(timedelta(seconds=3))

    response = api.get(listing["path"])

    assert response.status_code == listing["status"] == 200
    body = as_recorded(emulator, response)
    assert shape(body) == shape(listing["body"])
    assert body == listing["body"]  # row order, `Deals.all` expanded as edit/create/delete, expiry
    deals = next(row for row in body["watch"] if row["resource_name"] == "Deals")
    assert deals["events"] == ["Deals.edit", "Deals.create", "Deals.delete"]


def test_newer_versions_add_the_documented_row_keys(api: httpx.Client) -> None:
    request = seed("post_201_success")["request_body"]
    assert api.post("/crm/v8/actions/watch", json=request).status_code == 201
    row = api.get("/crm/v8/actions/watch").json()["watch"][0]
    recorded = seed("get_200_listing")["body"]["watch"][0]
    assert set(row) - set(recorded) == {
        "return_affected_field_values",
        "fields",
        "notification_condition",
    }
    assert row["fields"] is None
    assert row["notification_condition"] is None


@pytest.mark.parametrize("name", ["post_202_invalid_data_token", "post_202_mandatory_not_found"])
def test_item_errors_answer_the_recorded_item(api: httpx.Client, name: str) -> None:
    recording = seed(name)
    response = api.post(recording["path"], json=recording["request_body"])
    assert response.status_code == recording["status"] == 202
    assert response.json() == recording["body"]


def test_wrong_path_answers_the_recorded_404(api: httpx.Client) -> None:
    recording = seed("get_404_invalid_url_pattern")
    assert recording["path"].endswith("/actions/watc")
    response = api.get(recording["path"])
    assert response.status_code == 404
    assert response.json() == recording["body"]


def test_unknown_method_answers_the_recorded_400(api: httpx.Client) -> None:
    recording = seed("get_400_invalid_request_method")
    response = api.request(recording["method"], recording["path"])
    assert recording["method"] == "COPY"
    assert response.status_code == 400
    assert response.json() == recording["body"]


@pytest.mark.parametrize("name", ["get_401_authentication_failure", "post_401_authentication_failure"])
def test_no_auth_answers_the_recorded_401(emulator: Emulator, name: str) -> None:
    recording = seed(name)
    response = httpx.request(
        recording["method"], emulator.url + recording["path"], json=recording["request_body"]
    )
    assert response.status_code == 401
    assert response.json() == recording["body"]
    assert emulator.channels() == {}


def test_scope_mismatch_fault_answers_the_recorded_401(emulator: Emulator, api: httpx.Client) -> None:
    recording = seed("get_401_oauth_scope_mismatch")
    emulator.add_fault(Fault(status=401, code="OAUTH_SCOPE_MISMATCH"))
    response = api.get(recording["path"])
    assert response.status_code == 401
    assert response.json() == recording["body"]


def test_delete_answers_the_documented_shapes(emulator: Emulator, api: httpx.Client) -> None:
    success, missing = seed("delete_200_success"), seed("delete_202_not_subscribed")
    emulator.add_foreign_channel("1000000068001", ["Contacts.create"], "https://hooks.example/cb")

    gone = api.delete(success["path"])
    assert gone.status_code == success["status"] == 200
    assert as_recorded(emulator, gone) == success["body"]

    unknown = api.delete(missing["path"])
    assert unknown.status_code == missing["status"] == 202
    item = unknown.json()["watch"][0]
    expected = missing["body"]["watch"][0]
    assert {k: item[k] for k in ("code", "details", "status")} == {
        k: expected[k] for k in ("code", "details", "status")
    }
    assert set(item) == set(expected)
    assert isinstance(item["message"], str)
