"""The emulator's records store and its two records APIs, over real HTTP on 127.0.0.1, checked
against the documented shapes copied into tests/fixtures/records_api.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from watchkeeper.emulator import Emulator, Fault
from watchkeeper.emulator.formats import format_expiry, parse_expiry

from tests.helpers import SimClock

SHAPES = json.loads((Path(__file__).parent / "fixtures" / "records_api.json").read_text())
FIELDS = {"fields": "Created_Time,Modified_Time"}
ASC = {**FIELDS, "sort_by": "Modified_Time", "sort_order": "asc"}


@pytest.fixture
def api(emulator: Emulator) -> Iterator[httpx.Client]:
    token = emulator.issue_access_token(lifetime=timedelta(days=30))
    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Zoho-oauthtoken {token}"}) as c:
        yield c


def since(instant: datetime) -> dict[str, str]:
    return {"If-Modified-Since": format_expiry(instant, timedelta(hours=5, minutes=30))}


def ids(answer: httpx.Response) -> list[str]:
    return [row["id"] for row in answer.json()["data"]]


def make(emu: Emulator, clock: SimClock, module: str, count: int, step: timedelta) -> list[str]:
    made = [str(1000 + n) for n in range(count)]
    for record_id in made:
        emu.simulate_record_change(module, "create", [record_id])
        clock.advance(step)
    return made


def test_record_change_feeds_the_store_and_the_list_answers_in_the_documented_shape(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    t0 = sim_clock()
    emulator.simulate_record_change("Contacts", "create", ["11", "12"])
    sim_clock.advance(timedelta(minutes=5))
    emulator.simulate_record_change("Contacts", "edit", ["11"])
    answer = api.get("/crm/v8/Contacts", params=ASC)
    assert answer.status_code == 200
    body = answer.json()
    assert list(body["info"]) == SHAPES["get_records"]["info_keys"]
    assert [list(row) for row in body["data"]] == [SHAPES["get_records"]["row_keys_asked"]] * 2
    assert ids(answer) == ["12", "11"]  # Modified_Time ascending
    first = body["data"][1]
    assert parse_expiry(first["Created_Time"]) == t0
    assert parse_expiry(first["Modified_Time"]) == t0 + timedelta(minutes=5)
    assert first["Modified_Time"].endswith("+05:30")  # the org's offset, whole seconds


def test_if_modified_since_keeps_only_later_changes_and_an_empty_answer_is_204(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    emulator.simulate_record_change("Deals", "create", ["1"])
    sim_clock.advance(timedelta(minutes=1))
    cut = sim_clock()
    sim_clock.advance(timedelta(seconds=1))
    emulator.simulate_record_change("Deals", "edit", ["2"])
    assert ids(api.get("/crm/v8/Deals", params=ASC, headers=since(cut))) == ["2"]
    later = since(cut + timedelta(hours=1))
    assert api.get("/crm/v8/Deals", params=ASC, headers=later).status_code == 204
    assert api.get("/crm/v8/Deals/deleted", params={"type": "all"}, headers=later).status_code == 204


@pytest.mark.parametrize("emulator", [{"records_empty": "304"}], indirect=True)
def test_records_empty_304_answers_not_modified(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    emulator.simulate_record_change("Deals", "create", ["1"])
    later = since(sim_clock() + timedelta(hours=1))
    assert api.get("/crm/v8/Deals", params=ASC, headers=later).status_code == 304
    assert api.get("/crm/v8/Deals/deleted", headers=later).status_code == 304
    assert api.get("/crm/v8/Leads", params=ASC).status_code == 204  # no header: nothing to compare


def test_an_edit_of_an_unknown_record_is_not_a_creation(emulator: Emulator, sim_clock: SimClock) -> None:
    emulator.simulate_record_change("Deals", "create", ["1"])
    sim_clock.advance(timedelta(hours=2))
    emulator.simulate_record_change("Deals", "edit", ["9"])
    live, _ = emulator.records("Deals")
    nine = next(r for r in live if r.id == "9")
    assert nine.created < nine.modified


def test_deleted_records_in_the_documented_shape_newest_first(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    emulator.simulate_record_change("Leads", "create", ["5", "6"])
    emulator.simulate_record_change("Leads", "delete", ["5"])
    sim_clock.advance(timedelta(seconds=30))
    emulator.simulate_record_change("Leads", "delete", ["6"])
    answer = api.get("/crm/v8/Leads/deleted", params={"type": "all", "per_page": 200})
    assert answer.status_code == 200
    rows = answer.json()["data"]
    assert [list(row) for row in rows] == [SHAPES["deleted_records"]["row_keys"]] * 2
    assert [row["id"] for row in rows] == ["6", "5"]
    assert api.get("/crm/v8/Leads", params=ASC).status_code == 204  # both gone from the list
    assert api.get("/crm/v8/Leads/deleted", params={"type": "nonsense"}).status_code == 400


def test_page_reaches_2000_records_then_page_token_is_mandatory(
    emulator: Emulator, api: httpx.Client, sim_clock: SimClock
) -> None:
    made = make(emulator, sim_clock, "Contacts", 2050, timedelta(seconds=1))
    pages = [api.get("/crm/v8/Contacts", params={**ASC, "page": n}) for n in range(1, 11)]
    assert all(p.status_code == 200 for p in pages)
    assert sum(len(ids(p)) for p in pages) == 2000
    assert pages[-1].json()["info"]["more_records"] is True
    eleventh = api.get("/crm/v8/Contacts", params={**ASC, "page": 11})
    assert (eleventh.status_code, eleventh.json()["code"]) == (400, "DISCRETE_PAGINATION_LIMIT_EXCEEDED")
    token = pages[-1].json()["info"]["next_page_token"]
    rest = api.get("/crm/v8/Contacts", params={**ASC, "page_token": token})
    assert ids(rest) == made[2000:]
    assert rest.json()["info"]["more_records"] is False
    other = api.get("/crm/v8/Contacts", params={**FIELDS, "page_token": token})  # another sort
    assert other.json()["code"] == "TOKEN_BOUND_DATA_MISMATCH"
    sim_clock.advance(timedelta(hours=25))
    expired = api.get("/crm/v8/Contacts", params={**ASC, "page_token": token})
    assert expired.json()["code"] == "EXPIRED_VALUE"


@pytest.mark.parametrize(
    ("version", "mode", "served"),
    [("v4", "v5+", False), ("v5", "v5+", True), ("v8", "none", False), ("v2", "all", True)],
)
def test_which_versions_hand_out_page_tokens(
    emulator: Emulator, api: httpx.Client, version: str, mode: Any, served: bool
) -> None:
    emulator.set_options(page_tokens=mode)
    emulator.simulate_record_change("Deals", "create", ["1", "2", "3"])
    info = api.get(f"/crm/{version}/Deals", params={**ASC, "per_page": 2}).json()["info"]
    assert (info["next_page_token"] is not None) is served


def test_refusals_follow_zoho(emulator: Emulator, api: httpx.Client, sim_clock: SimClock) -> None:
    missing = api.get("/crm/v8/Deals")
    assert (missing.status_code, missing.json()["code"]) == (400, "REQUIRED_PARAM_MISSING")
    unknown = api.get("/crm/v8/Dealz", params=FIELDS)
    assert (unknown.status_code, unknown.json()["code"]) == (400, "INVALID_MODULE")
    bad = api.get("/crm/v8/Deals", params=FIELDS, headers={"If-Modified-Since": "yesterday"})
    assert (bad.status_code, bad.json()["code"]) == (400, "INVALID_DATA")
    assert api.post("/crm/v8/Deals", params=FIELDS).json()["code"] == "INVALID_REQUEST_METHOD"
    assert api.get("/crm/v9/Deals", params=FIELDS).status_code == 404  # not a version Zoho serves
    anonymous = httpx.get(f"{emulator.url}/crm/v8/Deals", params=FIELDS)
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "AUTHENTICATION_FAILURE")


def test_bigin_and_crm_records_are_separate(emulator: Emulator, api: httpx.Client) -> None:
    emulator.simulate_record_change("Contacts", "create", ["7"], product="bigin")
    assert ids(api.get("/bigin/v2/Contacts", params=ASC)) == ["7"]
    assert api.get("/crm/v8/Contacts", params=ASC).status_code == 204


def test_faults_can_hit_the_records_paths_only(emulator: Emulator, api: httpx.Client) -> None:
    emulator.add_fault(Fault(status=401, code="OAUTH_SCOPE_MISMATCH", paths="records"))
    scope = api.get("/crm/v8/Deals", params=FIELDS)
    assert (scope.status_code, scope.json()["code"]) == (401, "OAUTH_SCOPE_MISMATCH")
    assert api.get("/crm/v8/actions/watch").status_code == 204  # the watch API is untouched
    calls = [(c.method, c.path, c.status) for c in emulator.calls]
    assert calls == [("GET", "/crm/v8/Deals", 401), ("GET", "/crm/v8/actions/watch", 204)]


def test_the_admin_api_shows_the_truth(emulator: Emulator, sim_clock: SimClock) -> None:
    emulator.simulate_record_change("Deals", "create", ["1", "2"])
    emulator.simulate_record_change("Deals", "delete", ["2"])
    truth = httpx.get(f"{emulator.url}/__emulator/records", params={"module": "Deals"}).json()
    assert [r["id"] for r in truth["records"]] == ["1"]
    assert [d["id"] for d in truth["deleted"]] == ["2"]
    changes = [(c.op, c.record_id) for c in emulator.record_changes()]
    assert changes == [("create", "1"), ("create", "2"), ("delete", "2")]
