"""watchkeeper.outcome: what an answer means, table-driven, no HTTP and no database."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from watchkeeper import outcome
from watchkeeper.model import ChannelSpec, ItemResult, RegistryEntry, WatchItem
from watchkeeper.outcome import Situation, Transition
from watchkeeper.planner import Action, Method
from watchkeeper.policy import Policy
from watchkeeper.zoho.errors import AuthError, RateLimited, TransientError, ZohoError
from watchkeeper.zoho.results import CallResult

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
POLICY = Policy()
SPEC = ChannelSpec(
    "main", "1", frozenset({("Deals", "edit")}), "https://x.example/?k=v", 2 * HOUR, name="one"
)


def entry(**kw: object) -> RegistryEntry:
    base: dict[str, object] = {
        "account": "main",
        "channel_id": "1",
        "state": "active",
        "expires_at": NOW + 10 * MIN,
        "lifetime": 2 * HOUR,
        "renew_at": NOW,
    }
    base.update(kw)
    return RegistryEntry(**base)  # type: ignore[arg-type]


def answer(
    *results: ItemResult, error: ZohoError | None = None, unsent: tuple[str, ...] = ()
) -> CallResult:
    return CallResult(results, error, unsent)


def ok(expires_at: datetime | None = NOW + 2 * HOUR) -> ItemResult:
    return ItemResult("1", True, "SUCCESS", expires_at=expires_at)


def refused(code: str) -> ItemResult:
    return ItemResult("1", False, code, api_name="channel_id")


def write(
    method: Method,
    result: CallResult,
    given: RegistryEntry | None = None,
    kind: str = "renew",
) -> Transition:
    at = Situation("main", {"1": given or entry()}, NOW, timedelta(0), POLICY, {"1": "one"})
    action = Action(kind, "main", "1", SPEC, "due")  # type: ignore[arg-type]
    item = WatchItem(SPEC, NOW + SPEC.ttl)
    return outcome.written(at, method, [action], [item], result, NOW, {"1": NOW - MIN}, random.Random(1))


def events(change: Transition) -> list[str]:
    return [e.event for e in change.events]


# (id, method, answer, entry) -> (state, held until at most, list soon, recreate, events)
CASES = [
    ("renewed", "PATCH", answer(ok()), None, ("active", None, False, False, ["channel.renewed"])),
    (
        "renewed-ends-the-gap",
        "POST",
        answer(ok()),
        entry(state="lapsed", lapsed_since=NOW - HOUR),
        ("active", None, False, False, ["channel.recovered", "channel.renewed"]),
    ),
    (
        "gone-on-patch",
        "PATCH",
        answer(refused("NOT_SUBSCRIBED")),
        None,
        ("lapsed", None, False, True, ["channel.lapsed"]),
    ),
    (
        # Zoho's answer to a PATCH of an unknown channel is UNCONFIRMED: held, but the account is
        # listed at once, and never past the emergency point (10 min left of 2 h: 4 min left).
        "invalid-data-on-patch",
        "PATCH",
        answer(refused("INVALID_DATA")),
        None,
        ("failed", NOW + 4 * MIN, True, False, ["channel.rejected"]),
    ),
    (
        "invalid-data-on-post",
        "POST",
        answer(refused("INVALID_DATA")),
        entry(expires_at=None, lifetime=None, state="pending"),
        ("failed", NOW + HOUR, False, False, ["channel.rejected"]),
    ),
    (
        "internal-error-backs-off",
        "PATCH",
        answer(refused("INTERNAL_ERROR")),
        None,
        ("active", NOW + 10 * MIN - POLICY.retry_margin, False, False, ["api.retry"]),
    ),
    (
        "no-answer-backs-off",
        "PATCH",
        answer(),
        None,
        ("active", NOW + 10 * MIN, False, False, ["api.retry"]),
    ),
    (
        "unsent-is-not-a-failure",
        "PATCH",
        answer(unsent=("1",)),
        None,
        ("active", None, False, False, []),
    ),
    (
        "request-failed",
        "PATCH",
        answer(error=TransientError("PATCH: HTTP 503 server error")),
        None,
        ("active", NOW + 10 * MIN, False, False, ["api.retry"]),
    ),
    (
        "auth-failed-holds-until-the-emergency-point",
        "PATCH",
        answer(error=AuthError("PATCH: HTTP 401 INVALID_TOKEN", code="INVALID_TOKEN")),
        None,
        ("failed", NOW + 4 * MIN, False, False, ["auth.failed"]),
    ),
]


@pytest.mark.parametrize(
    ("method", "result", "given", "expected"), [pytest.param(*c[1:], id=c[0]) for c in CASES]
)
def test_written(
    method: Method,
    result: CallResult,
    given: RegistryEntry | None,
    expected: tuple[str, datetime | None, bool, bool, list[str]],
) -> None:
    state, held_until, list_soon, recreate, logged = expected
    change = write(method, result, given)
    after = change.entries.get("1", given or entry())
    assert after.state == state
    if held_until is None:
        assert after.retry_at is None
    else:
        assert after.retry_at is not None
        assert after.retry_at <= held_until
    assert change.list_soon is list_soon
    assert bool(change.recreate) is recreate
    assert events(change) == logged


def test_a_grant_records_the_spec_digests_and_a_renewal_time_in_the_window() -> None:
    change = write("PATCH", answer(ok()))
    granted = change.entries["1"]
    assert granted.applied is not None
    assert granted.applied.token is None  # the store never keeps tokens
    assert granted.applied_url_digest is not None
    assert granted.renew_at is not None
    assert NOW + 0.6 * 2 * HOUR <= granted.renew_at <= NOW + 0.7 * 2 * HOUR
    assert change.renewed_at == {"1": NOW}
    assert change.seen == ["1"]
    assert change.events[0].fields["name"] == "one"


def test_a_success_without_an_expiry_assumes_no_more_than_the_documented_default() -> None:
    granted = write("PATCH", answer(ok(expires_at=None))).entries["1"]
    assert granted.expires_at == NOW + POLICY.unknown_expiry_cap


def test_a_clamped_grant_is_announced_once() -> None:
    first = write("PATCH", answer(ok(NOW + 30 * MIN)))
    assert "channel.expiry_clamped" in events(first)
    again = write("PATCH", answer(ok(NOW + 30 * MIN)), first.entries["1"])
    assert "channel.expiry_clamped" not in events(again)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        pytest.param(30.0, NOW + 30 * timedelta(seconds=1), id="honoured"),
        pytest.param(1e14, NOW + 4 * MIN, id="huge-capped-by-the-emergency-point"),
        pytest.param(float("nan"), NOW + POLICY.retry_initial, id="nan-is-no-retry-after"),
        pytest.param(None, NOW + POLICY.retry_initial, id="absent"),
    ],
)
def test_a_rate_limit_pauses_the_account(retry_after: float | None, expected: datetime) -> None:
    change = write("PATCH", answer(error=RateLimited("PATCH: HTTP 429", retry_after=retry_after)))
    assert change.pause_until == expected
    assert events(change) == ["api.rate_limited"]


def test_a_pause_past_the_emergency_point_probes_every_minute() -> None:
    late = entry(expires_at=NOW + 2 * MIN)
    change = write("PATCH", answer(error=RateLimited("PATCH: HTTP 429", retry_after=3600)), late)
    assert change.pause_until == NOW + POLICY.probe_every


def test_a_listing_answered_ends_transient_holds_and_marks_seen() -> None:
    held = entry(retry_at=NOW + 10 * MIN, failures=2)
    terminal = entry(channel_id="2", retry_at=NOW + HOUR, terminal=True, state="failed")
    at = Situation("main", {"1": held, "2": terminal}, NOW, timedelta(0), POLICY)
    listing = {
        "1": outcome.ObservedChannel("1", frozenset(), "https://x.example/", NOW + HOUR),
        "2": outcome.ObservedChannel("2", frozenset(), "https://x.example/", NOW + HOUR),
    }
    change = outcome.observed(at, listing, {}, frozenset({"1", "2"}))
    assert change.entries["1"].retry_at is None
    assert "2" not in change.entries or change.entries["2"].retry_at == NOW + HOUR
    assert change.seen == ["1", "2"]


def test_a_delete_answered_removes_the_channel_and_closes_its_gap() -> None:
    gone = entry(state="lapsed", lapsed_since=NOW - HOUR)
    at = Situation("main", {"1": gone}, NOW, timedelta(0), POLICY)
    change = outcome.deleted(at, answer(ItemResult("1", True, "SUCCESS")), ["1"], random.Random(1))
    assert change.removed == ["1"]
    assert "1" not in change.entries
    assert [c.end for c in change.closed] == [NOW]
    assert events(change) == ["channel.recovered", "channel.deleted"]


@pytest.mark.parametrize(
    ("given", "known", "usable"),
    [
        pytest.param(entry(applied=SPEC), SPEC, True, id="known-spec"),
        pytest.param(entry(applied=None), None, False, id="nothing-applied"),
        pytest.param(entry(applied=SPEC, applied_token_digest="d"), None, False, id="had-a-token"),
        pytest.param(entry(applied=SPEC, applied_url_digest="other"), None, False, id="url-masked"),
        pytest.param(entry(applied=SPEC), None, True, id="faithful-without-digest"),
    ],
)
def test_spec_for_retained(given: RegistryEntry, known: ChannelSpec | None, usable: bool) -> None:
    assert (outcome.spec_for_retained(given, known) is not None) is usable
