"""The pure codec (zoho/wire.py) and the skew estimate (zoho/skew.py), table-driven, no HTTP:
hostile numbers, answers about channels never sent, listings that lie about paging."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from watchkeeper.model import ObservedChannel, format_instant, parse_events, parse_instant
from watchkeeper.zoho.errors import TransientError
from watchkeeper.zoho.skew import MAX_JUMP, SkewEstimate
from watchkeeper.zoho.wire import (
    MAX_RETRY_AFTER,
    UNKNOWN_CHANNEL,
    RowMerger,
    json_object,
    listing_page,
    map_delete_results,
    map_write_results,
    retry_after_seconds,
)

NOW = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
NOTIFY_URL = "https://hooks.example.com/zoho?key=hook-query-secret"
ROW = {"channel_id": "1", "channel_expiry": "2026-01-05T15:00:00+05:30", "notify_url": NOTIFY_URL}


def success(channel_id: str, expiry: str = "2026-01-05T20:30:00+05:30") -> dict[str, Any]:
    return {
        "code": "SUCCESS",
        "status": "success",
        "message": "Successfully subscribed for actions-watch of the given module",
        "details": {"events": [{"channel_expiry": expiry, "channel_id": channel_id}]},
    }


# -- numbers from Zoho ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("12", 12.0),
        (" 7 ", 7.0),
        ("-5", 0.0),
        ("1e14", MAX_RETRY_AFTER),
        ("100000000000000", MAX_RETRY_AFTER),
        ("nan", None),
        ("inf", None),
        ("-inf", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("Mon, 05 Jan 2026 09:01:30 GMT", 90.0),
        ("Mon, 05 Jan 2026 08:00:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
        ("Fri, 31 Dec 99999 23:59:59 GMT", None),
    ],
)
def test_retry_after_is_clamped_or_ignored(raw: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(raw, NOW) == seconds


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not JSON (empty)"),
        (b'{"watch": [{"channel_id": "1', "not JSON (Unterminated string"),
        (b"<html>Bad gateway</html>", "not JSON (Expecting value at char 0)"),
        (b"[1, 2]", "not a JSON object"),
        (b"1" * 5000, "not readable JSON"),  # over Python's 4,300-digit integer limit
        (b"[" * 100_000, "not readable JSON"),  # nesting beyond the recursion limit
        (b"\xff\xfe{", "not readable JSON"),
    ],
    ids=["empty", "truncated", "html", "array", "huge-int", "deep", "bad-bytes"],
)
def test_json_object_says_why_a_body_is_unusable(content: bytes, reason: str) -> None:
    with pytest.raises(TransientError) as caught:
        json_object(content, "GET /crm/v8/actions/watch: HTTP 200", 200)
    assert reason in str(caught.value)
    assert caught.value.status == 200


# -- listings ------------------------------------------------------------------------------------


def merge_rows(rows: list[Any], now: datetime) -> dict[str, ObservedChannel]:
    """A listing of one page."""
    merger = RowMerger(now)
    merger.add(rows)
    return merger.result()


def test_rows_merge_across_pages_and_count_rows_from_the_first_page() -> None:
    merger = RowMerger(NOW)
    merger.add([{**ROW, "events": ["Deals.create"]}, {**ROW, "channel_id": "2"}])
    merger.add([{**ROW, "events": ["Contacts.edit"], "channel_expiry": "2026-01-05T14:00:00+05:30"}])
    merged = merger.result()
    assert merged["1"].events == {("Deals", "create"), ("Contacts", "edit")}
    assert merged["1"].expires_at == parse_instant("2026-01-05T14:00:00+05:30")
    merger.add([ROW])
    with pytest.raises(TransientError, match="row 4 has no channel_id"):
        merger.add([{"channel_expiry": ROW["channel_expiry"]}])


def test_merge_rows_is_linear_and_keeps_the_earliest_expiry() -> None:
    """10,000 channels on two modules each, every row with its own expiry (no memo help)."""
    rows = []
    for n in range(10_000):
        for module, minutes in (("Deals", n), ("Contacts", n + 30)):
            expiry = NOW + timedelta(hours=6, minutes=minutes)
            rows.append(
                {
                    "channel_id": str(1000000068001 + n),
                    "resource_name": module,
                    "events": [f"{module}.edit", f"{module}.create", f"{module}.delete"],
                    "channel_expiry": format_instant(expiry, timedelta(hours=5, minutes=30)),
                    "notify_url": NOTIFY_URL,
                    "token": None,
                    "notify_on_related_action": False,
                    "notification_condition": None,
                }
            )
    started = time.perf_counter()
    merged = merge_rows(rows, NOW)
    elapsed = time.perf_counter() - started
    assert len(merged) == 10_000
    last = merged[str(1000000068001 + 9_999)]
    assert last.expires_at == NOW + timedelta(hours=6, minutes=9_999)
    assert last.events == parse_events(["Deals.all", "Contacts.all"])
    assert elapsed < 2.0, f"merging 20,000 rows took {elapsed:.2f}s"


def test_events_this_daemon_cannot_express_are_left_out() -> None:
    merged = merge_rows([{**ROW, "events": ["Deals.create", "Deals.merge", 7, None]}], NOW)
    assert merged["1"].events == {("Deals", "create")}


@pytest.mark.parametrize(
    "expiry",
    [
        "soon",
        12345,
        None,
        "9999-12-31T23:59:59-14:00",  # overflows on conversion to UTC
        "0001-01-01T00:00:00+14:00",
        "2036-01-05T15:00:00+00:00",  # ten years ahead
        "2025-12-01T15:00:00+00:00",  # expired a month ago, still listed
    ],
)
def test_a_listing_row_with_an_absurd_expiry_fails_the_listing(expiry: object) -> None:
    with pytest.raises(TransientError, match="row 1 has an unreadable or implausible channel_expiry"):
        merge_rows([ROW, {**ROW, "channel_id": "2", "channel_expiry": expiry}], NOW)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, ([], False)),
        ({"watch": [ROW], "info": {"more_records": True}}, ([ROW], True)),
        ({"watch": [ROW], "info": {"more_records": False}}, ([ROW], False)),
        ({"watch": [ROW]}, ([ROW], False)),
        ({"watch": [], "info": {"more_records": True}}, ([], False)),  # an empty page ends it
        ({"watch": [ROW], "info": {"more_records": "true"}}, "info.more_records is not true or false"),
        ({"watch": [ROW], "info": {"more_records": 1}}, "info.more_records is not true or false"),
        ({"watch": [ROW], "info": [True]}, "info is not an object"),
        ({"data": []}, "answer has no watch list"),
        ({"watch": {"0": ROW}}, "answer has no watch list"),
    ],
)
def test_listing_pages(body: dict[str, Any] | None, expected: object) -> None:
    if isinstance(expected, str):
        with pytest.raises(TransientError, match=expected):
            listing_page(body, "GET /crm/v8/actions/watch (page 1)")
    else:
        assert listing_page(body, "GET /crm/v8/actions/watch (page 1)") == expected


# -- write answers -------------------------------------------------------------------------------


def test_a_channel_missing_from_the_answer_is_not_taken_as_done() -> None:
    answer = [success("1000000068002")]
    answer[0]["details"]["events"].append(
        {"channel_expiry": "2026-01-05T20:29:00+05:30", "channel_id": "1000000068002"}
    )
    first, second = map_write_results(["1000000068001", "1000000068002"], answer, NOW)
    assert (first.channel_id, first.ok, first.code) == ("1000000068001", False, "NO_RESULT")
    assert (second.channel_id, second.ok) == ("1000000068002", True)
    assert second.expires_at == datetime(2026, 1, 5, 14, 59, tzinfo=UTC)  # the earlier module wins


def test_items_are_matched_by_the_id_they_name_not_their_position() -> None:
    answer = [success("3"), success("1"), success("2")]
    results = map_write_results(["1", "2", "3"], answer, NOW)
    assert [(r.channel_id, r.ok) for r in results] == [("1", True), ("2", True), ("3", True)]


def test_an_error_item_naming_no_channel_is_placed_by_json_path_then_position() -> None:
    error = {
        "code": "INVALID_DATA",
        "status": "error",
        "message": "invalid data",
        "details": {"api_name": "notify_url", "json_path": "$.watch[1].notify_url"},
    }
    anonymous = {"code": "INTERNAL_ERROR", "status": "error", "message": "", "details": {}}
    results = map_write_results(["1", "2", "3"], [success("1"), error, anonymous], NOW)
    assert [(r.channel_id, r.code) for r in results] == [
        ("1", "SUCCESS"),
        ("2", "INVALID_DATA"),
        ("3", "INTERNAL_ERROR"),
    ]
    assert results[1].api_name == "notify_url"


@pytest.mark.parametrize(
    "answer",
    [
        [success("7"), success("8"), success("9")],  # "3 created" while Zoho made none of them
        [success("1"), success("2"), success("9")],
        [{"code": "INVALID_DATA", "status": "error", "details": {"channel_id": "9"}}],
    ],
    ids=["all-strangers", "one-stranger", "error-for-a-stranger"],
)
def test_an_answer_naming_a_channel_never_sent_settles_nothing(answer: list[Any]) -> None:
    results = map_write_results(["1", "2", "3"], answer, NOW)
    assert [(r.channel_id, r.ok, r.code) for r in results] == [
        (cid, False, UNKNOWN_CHANNEL) for cid in ("1", "2", "3")
    ]
    assert "channel 9" in results[0].message or "channel 7" in results[0].message


def test_a_stranger_id_is_quoted_safely() -> None:
    [result] = map_write_results(["1"], [success("x\n" * 100)], NOW)
    assert result.code == UNKNOWN_CHANNEL
    assert "\n" not in result.message
    assert len(result.message) < 200


@pytest.mark.parametrize(
    "expiry",
    ["9999-12-31T23:59:59-14:00", "2036-01-05T15:00:00+00:00", "tomorrow", "2025-01-01T00:00:00Z"],
)
def test_a_success_with_an_absurd_expiry_keeps_no_expiry(expiry: str) -> None:
    [result] = map_write_results(["1"], [success("1", expiry)], NOW)
    assert result.ok
    assert result.expires_at is None


def test_messages_from_zoho_are_cut_short() -> None:
    item = {"code": "X" * 10_000, "status": "error", "message": "m" * 10_000, "details": {}}
    [result] = map_write_results(["1"], [item], NOW)
    assert len(result.code) <= 200
    assert len(result.message) <= 200


# -- delete answers ------------------------------------------------------------------------------


def test_a_refusal_naming_no_channel_claims_no_delete() -> None:
    """An anonymous refusal beside NOT_SUBSCRIBED: no requested id may be taken as already gone."""
    answer = [
        {"code": "NOT_SUBSCRIBED", "status": "error", "message": "not subscribed", "details": {}},
        {"code": "NO_PERMISSION", "status": "error", "message": "permission denied", "details": {}},
    ]
    results = map_delete_results(["1000000068001", "1000000068002"], answer, NOW)
    assert [(r.ok, r.code) for r in results] == [(False, "NO_PERMISSION"), (False, "NO_PERMISSION")]


def test_a_delete_answer_about_another_channel_deletes_nothing() -> None:
    answer = [{"code": "SUCCESS", "status": "success", "details": {"channel_id": 1000000068999}}]
    results = map_delete_results(["1000000068001"], answer, NOW)
    assert [(r.ok, r.code) for r in results] == [(False, UNKNOWN_CHANNEL)]


# -- clock skew ----------------------------------------------------------------------------------


def date_of(instant: datetime) -> str:
    return instant.strftime("%a, %d %b %Y %H:%M:%S GMT")


def observe(skew: SkewEstimate, zoho_ahead: timedelta, at: datetime = NOW) -> float | None:
    return skew.observe(date_of(at + zoho_ahead), at, at + timedelta(milliseconds=200))


def test_a_single_date_ten_years_ahead_leaves_the_skew_unchanged() -> None:
    skew = SkewEstimate()
    observe(skew, timedelta(seconds=30))
    before = skew.value
    reported = observe(skew, timedelta(days=3652), NOW + timedelta(seconds=5))
    assert skew.value == before
    assert reported == pytest.approx(3652 * 86400, abs=2)
    assert observe(skew, timedelta(days=3652), NOW + timedelta(seconds=6)) is None  # reported once
    assert skew.value == before


def test_a_first_date_over_a_day_off_is_never_believed() -> None:
    skew = SkewEstimate()
    for n in range(3):
        observe(skew, timedelta(days=2), NOW + timedelta(seconds=n))
    assert skew.value == timedelta(0)


def test_a_jump_is_believed_once_the_next_answer_confirms_it() -> None:
    skew = SkewEstimate()
    observe(skew, timedelta(0))
    jump = MAX_JUMP + timedelta(minutes=50)
    assert observe(skew, jump, NOW + timedelta(seconds=5)) is not None
    assert abs(skew.value) < timedelta(seconds=2)  # one answer alone moves nothing
    observe(skew, timedelta(0), NOW + timedelta(seconds=6))  # the stray header was alone
    observe(skew, jump, NOW + timedelta(seconds=7))
    assert abs(skew.value) < timedelta(seconds=2)
    observe(skew, jump, NOW + timedelta(seconds=8))  # two in a row: the clock was stepped
    assert abs(skew.value - jump) < timedelta(seconds=2)


def test_a_small_step_is_followed_at_once() -> None:
    skew = SkewEstimate()
    observe(skew, timedelta(0))
    observe(skew, timedelta(minutes=3), NOW + timedelta(seconds=5))
    assert abs(skew.value - timedelta(minutes=3)) < timedelta(seconds=2)


@pytest.mark.parametrize("header", [None, "", "yesterday", "Mon, 05 Jan 99999 09:00:00 GMT"])
def test_an_unreadable_date_is_ignored(header: str | None) -> None:
    skew = SkewEstimate()
    assert skew.observe(header, NOW, NOW) is None
    assert skew.value == timedelta(0)
