"""watchkeeper.outcome: what an answer means, table-driven, no HTTP and no database."""

from __future__ import annotations

import json
import random
from dataclasses import replace
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
    at = situation({"1": given or entry()}, names={"1": "one"}, last_seen={"1": NOW - MIN})
    action = Action(kind, "main", "1", SPEC, "due")  # type: ignore[arg-type]
    request = outcome.Request(method, [action], [WatchItem(SPEC, NOW + SPEC.ttl)])
    return outcome.written(at, request, result, NOW)


def situation(entries: dict[str, RegistryEntry], **kw: object) -> Situation:
    return Situation("main", entries, NOW, timedelta(0), POLICY, random.Random(1), **kw)  # type: ignore[arg-type]


def events(change: Transition) -> list[str]:
    return [e.event for e in change.events]


def levelled(change: Transition) -> list[str]:
    return [f"{e.level} {e.event}" for e in change.events]


# (id, method, answer, entry) -> (state, held until at most, list soon, recreate, events)
CASES = [
    (
        "renewed",
        "PATCH",
        answer(ok()),
        None,
        ("active", None, False, False, ["debug channel.renewed", "info channels.renewed"]),
    ),
    (
        "renewed-ends-the-gap",
        "POST",
        answer(ok()),
        entry(state="lapsed", lapsed_since=NOW - HOUR),
        (
            "active",
            None,
            False,
            False,
            ["warning channel.recovered", "debug channel.renewed", "info channels.renewed"],
        ),
    ),
    (
        "gone-on-patch",
        "PATCH",
        answer(refused("NOT_SUBSCRIBED")),
        None,
        ("lapsed", None, False, True, ["error channel.lapsed"]),
    ),
    (
        # Zoho's answer to a PATCH of an unknown channel is UNCONFIRMED: held, but the account is
        # listed at once, and never past the emergency point (10 min left of 2 h: 4 min left).
        "invalid-data-on-patch",
        "PATCH",
        answer(refused("INVALID_DATA")),
        None,
        ("failed", NOW + 4 * MIN, True, False, ["error channel.rejected"]),
    ),
    (
        "invalid-data-on-post",
        "POST",
        answer(refused("INVALID_DATA")),
        entry(expires_at=None, lifetime=None, state="pending"),
        ("failed", NOW + HOUR, False, False, ["error channel.rejected"]),
    ),
    (
        "internal-error-backs-off",
        "PATCH",
        answer(refused("INTERNAL_ERROR")),
        None,
        ("active", NOW + 10 * MIN - POLICY.retry_margin, False, False, ["warning api.retry"]),
    ),
    (
        "no-answer-backs-off",
        "PATCH",
        answer(),
        None,
        ("active", NOW + 10 * MIN, False, False, ["warning api.retry"]),
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
        ("active", NOW + 10 * MIN, False, False, ["warning api.retry"]),
    ),
    (
        "auth-failed-holds-until-the-emergency-point",
        "PATCH",
        answer(error=AuthError("PATCH: HTTP 401 INVALID_TOKEN", code="INVALID_TOKEN")),
        None,
        ("failed", NOW + 4 * MIN, False, False, ["error auth.failed"]),
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
    assert levelled(change) == logged


BASE = 10**18
"""Channel ids as long as Zoho's: 19 digits."""
LETTERS = {
    "r": ("renew", "due"),
    "a": ("renew", "at_risk"),
    "c": ("create", "new"),
    "p": ("repair", "changed"),
    "d": ("adopt", "found"),
}


def batch(kinds: str, results: dict[int, ItemResult | None]) -> Transition:
    """A request of one action a letter of ``kinds`` (r renew, a renew at risk, c create, p
    repair, d adopt), channel ids counted from BASE; ``results`` answers by position (none: not
    answered)."""
    actions, items, entries = [], [], {}
    for i, letter in enumerate(kinds):
        cid = str(BASE + i)
        spec = ChannelSpec("main", cid, SPEC.events, SPEC.notify_url, SPEC.ttl, name=f"c{i}")
        kind, reason = LETTERS[letter]
        actions.append(Action(kind, "main", cid, spec, reason, at_risk=letter == "a"))  # type: ignore[arg-type]
        items.append(WatchItem(spec, NOW + spec.ttl))
        if kind != "create":
            entries[cid] = entry(channel_id=cid)
    request = outcome.Request("PATCH", actions, items)
    answered = tuple(r for r in results.values() if r is not None)
    return outcome.written(situation(entries), request, answer(*answered), NOW)


def granted(i: int, expires_at: datetime = NOW + 2 * HOUR) -> ItemResult:
    return ItemResult(str(BASE + i), True, "SUCCESS", expires_at=expires_at)


def channel_ids(n: int) -> list[str]:
    return [str(BASE + i) for i in range(n)]


# (id, kinds, answers) -> (per-channel success lines as "level event", summary fields or None)
SUMMARY_CASES = [
    (
        "one-renewal",
        "r",
        {0: granted(0)},
        (
            ["debug channel.renewed"],
            {"count": 1, "channel_ids": channel_ids(1), "earliest_expires_at": NOW + 2 * HOUR},
        ),
    ),
    (
        "earliest-of-the-new-expiries",
        "rrr",
        {0: granted(0, NOW + 3 * HOUR), 1: granted(1, NOW + HOUR), 2: granted(2, NOW + 2 * HOUR)},
        (
            ["debug channel.renewed"] * 3,
            {"count": 3, "channel_ids": channel_ids(3), "earliest_expires_at": NOW + HOUR},
        ),
    ),
    (
        "at-risk-renewal-keeps-its-info-line",
        "ar",
        {0: granted(0), 1: granted(1)},
        (
            ["info channel.renewed", "debug channel.renewed"],
            {"count": 2, "channel_ids": channel_ids(2), "earliest_expires_at": NOW + 2 * HOUR},
        ),
    ),
    (
        "only-what-zoho-granted",
        "rrr",
        {0: ItemResult(str(BASE), False, "INVALID_DATA"), 1: granted(1), 2: None},
        (
            ["debug channel.renewed"],
            {"count": 1, "channel_ids": [str(BASE + 1)], "earliest_expires_at": NOW + 2 * HOUR},
        ),
    ),
    ("nothing-granted-no-summary", "rr", {}, ([], None)),
    (
        "creations-repairs-adoptions-stay-info-unsummarised",
        "cpd",
        {0: granted(0), 1: granted(1), 2: granted(2)},
        (["info channel.created", "info channel.repaired", "info channel.adopted"], None),
    ),
    (
        "a-hundred-name-ten",
        "r" * 100,
        {i: granted(i, NOW + HOUR + i * MIN) for i in range(100)},
        (
            ["debug channel.renewed"] * 100,
            {
                "count": 100,
                "channel_ids": channel_ids(outcome.SUMMARY_IDS),
                "earliest_expires_at": NOW + HOUR,
            },
        ),
    ),
]

SUCCESS_LINES = {"channel.renewed", "channel.created", "channel.repaired", "channel.adopted"}


@pytest.mark.parametrize(
    ("kinds", "results", "expected"), [pytest.param(*c[1:], id=c[0]) for c in SUMMARY_CASES]
)
def test_renewals_are_summarised_once_a_request(
    kinds: str,
    results: dict[int, ItemResult | None],
    expected: tuple[list[str], dict[str, object] | None],
) -> None:
    lines, summary = expected
    change = batch(kinds, results)
    assert [f"{e.level} {e.event}" for e in change.events if e.event in SUCCESS_LINES] == lines
    summaries = [e for e in change.events if e.event == "channels.renewed"]
    if summary is None:
        assert summaries == []
        return
    (line,) = summaries
    assert line.level == "info"
    assert dict(line.fields) == {"account": "main", **summary}


@pytest.mark.parametrize("size", [1, outcome.SUMMARY_IDS, 100, 1000])
def test_the_summary_line_is_bounded_whatever_the_request_size(size: int) -> None:
    """With ids as long as Zoho's (19 digits), a few hundred bytes of JSON for any request."""
    change = batch("r" * size, {i: granted(i) for i in range(size)})
    (line,) = [e for e in change.events if e.event == "channels.renewed"]
    assert line.fields["count"] == size
    assert line.fields["channel_ids"] == channel_ids(min(size, outcome.SUMMARY_IDS))
    assert len(json.dumps(dict(line.fields), default=str)) < 512


TWO_MODULES = ChannelSpec(
    "main", "2", frozenset({("Deals", "edit"), ("Leads", "create")}), "https://x.example/", 2 * HOUR
)
LISTED = frozenset({"1"})
"""What the account's last listing showed: channel 1 (of one module), not channel 2 (of two)."""


def as_2(result: ItemResult) -> ItemResult:
    return replace(result, channel_id="2")


# (id, method, channel, answer, listed) -> the rows the write added to the account's listing
ROWS_CASES = [
    ("renewal", "PATCH", SPEC, answer(ok()), LISTED, 0),
    ("renewal-unanswered", "PATCH", SPEC, answer(), LISTED, 0),
    ("renewal-refused-lists-in-full", "PATCH", SPEC, answer(refused("INVALID_DATA")), LISTED, None),
    ("created-one-row-a-module", "POST", TWO_MODULES, answer(as_2(ok())), LISTED, 2),
    ("creation-refused", "POST", TWO_MODULES, answer(as_2(refused("INVALID_DATA"))), LISTED, 0),
    ("creation-unsent", "POST", TWO_MODULES, answer(unsent=("2",)), LISTED, 0),
    ("creation-unanswered", "POST", TWO_MODULES, answer(), LISTED, None),
    ("re-created-while-listed", "POST", SPEC, answer(ok()), LISTED, None),
    ("created-before-any-listing", "POST", TWO_MODULES, answer(as_2(ok())), None, None),
    ("replaced", "PUT", SPEC, answer(ok()), LISTED, None),
]


@pytest.mark.parametrize(
    ("method", "spec", "result", "listed", "rows"), [pytest.param(*c[1:], id=c[0]) for c in ROWS_CASES]
)
def test_the_rows_a_write_added(
    method: Method,
    spec: ChannelSpec,
    result: CallResult,
    listed: frozenset[str] | None,
    rows: int | None,
) -> None:
    """What keeps the tally's expected row count right after the daemon's own writes."""
    cid = spec.channel_id
    at = situation({cid: entry(channel_id=cid)}, listed=listed)
    kind = "create" if method == "POST" else "renew"
    request = outcome.Request(method, [Action(kind, "main", cid, spec, "due")], [WatchItem(spec, NOW)])
    assert outcome.written(at, request, result, NOW).rows_added == rows


def test_a_delete_leaves_the_row_count_to_a_full_listing() -> None:
    change = outcome.deleted(situation({"1": entry()}), answer(ItemResult("1", True, "SUCCESS")), ["1"])
    assert change.rows_added is None


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
    assert levelled(change) == ["warning api.rate_limited"]


def test_a_pause_past_the_emergency_point_probes_every_minute() -> None:
    late = entry(expires_at=NOW + 2 * MIN)
    change = write("PATCH", answer(error=RateLimited("PATCH: HTTP 429", retry_after=3600)), late)
    assert change.pause_until == NOW + POLICY.probe_every


def test_a_listing_answered_ends_transient_holds_and_marks_seen() -> None:
    held = entry(retry_at=NOW + 10 * MIN, failures=2)
    terminal = entry(channel_id="2", retry_at=NOW + HOUR, terminal=True, state="failed")
    at = situation({"1": held, "2": terminal})
    listing = {
        "1": outcome.ObservedChannel("1", frozenset(), "https://x.example/", NOW + HOUR),
        "2": outcome.ObservedChannel("2", frozenset(), "https://x.example/", NOW + HOUR),
    }
    change = outcome.observed(at, listing, frozenset({"1", "2"}))
    assert change.entries["1"].retry_at is None
    assert "2" not in change.entries or change.entries["2"].retry_at == NOW + HOUR
    assert change.seen == ["1", "2"]


def test_a_pass_without_a_listing_asks_the_ledger_only_about_the_expired_it_is_given() -> None:
    """The unit's index names the channels whose expiry may have passed; the ledger still checks
    each (a stale name changes nothing), and leaves every other entry alone, even one that
    expired (it would be named: the index is what knows)."""
    gone = entry(expires_at=NOW - MIN)
    live = entry(channel_id="2", expires_at=NOW + HOUR)
    unnamed = entry(channel_id="3", expires_at=NOW - MIN)
    lapsed = entry(channel_id="4", expires_at=NOW - HOUR, state="lapsed", lapsed_since=NOW - HOUR)
    at = situation({"1": gone, "2": live, "3": unnamed, "4": lapsed})
    watched = frozenset({"1", "2", "3", "4"})
    change = outcome.observed(at, None, watched, expired={"1", "2", "4", "9"})
    assert sorted(change.entries) == ["1"]
    assert [(g.channel_id, g.start, g.cause) for g in change.opened] == [("1", NOW - MIN, "expired")]
    assert outcome.observed(at, None, watched, expired=()).entries == {}
    with pytest.raises(ValueError, match="needs the channels whose expiry came"):
        outcome.observed(at, None, watched)  # forgetting them would miss every lapse


HELD = entry(retry_at=NOW + 10 * MIN, failures=9)
LISTED = {"1": outcome.ObservedChannel("1", frozenset(), "https://x.example/", NOW + HOUR)}


# (id, the listing ends an outage, entry) -> failures after the listing
@pytest.mark.parametrize(
    ("outage_over", "given", "failures"),
    [
        pytest.param(True, HELD, 0, id="the-outage-is-over-the-streak-starts-again"),
        pytest.param(False, HELD, 9, id="a-routine-listing-keeps-the-streak"),
        pytest.param(
            True,
            entry(retry_at=NOW + HOUR, failures=9, terminal=True, state="failed"),
            9,
            id="a-terminal-failure-keeps-its-hold-and-count",
        ),
    ],
)
def test_the_listing_that_ends_an_outage_restarts_the_backoff(
    outage_over: bool, given: RegistryEntry, failures: int
) -> None:
    change = outcome.observed(situation({"1": given}), LISTED, frozenset({"1"}), outage_over=outage_over)
    assert change.entries.get("1", given).failures == failures


@pytest.mark.parametrize("outage_over", [True, False])
def test_a_5xx_right_after_an_outage_retries_on_the_first_backoff_step(outage_over: bool) -> None:
    """The soak's slowest recoveries: the POST that re-creates the lapsed channels meets one 5xx,
    and every channel of the request waited up to ``retry_max`` on the outage's streak."""
    lapsed = entry(
        state="lapsed", expires_at=NOW - HOUR, lapsed_since=NOW - HOUR, retry_at=NOW + 10 * MIN
    )
    lapsed = replace(lapsed, failures=12)
    freed = outcome.observed(
        situation({"1": lapsed}), {}, frozenset({"1"}), outage_over=outage_over
    ).entries["1"]
    assert freed.retry_at is None
    change = write("POST", answer(error=TransientError("POST: HTTP 500")), freed, kind="create")
    retry_at = change.entries["1"].retry_at
    assert retry_at is not None
    # random.Random(1) draws 0.134 of the cap: 4 s on the first step, 2 minutes on the 13th
    assert (retry_at <= NOW + POLICY.retry_initial) == outage_over


def test_a_delete_answered_removes_the_channel_and_closes_its_gap() -> None:
    gone = entry(state="lapsed", lapsed_since=NOW - HOUR)
    change = outcome.deleted(situation({"1": gone}), answer(ItemResult("1", True, "SUCCESS")), ["1"])
    assert change.removed == ["1"]
    assert "1" not in change.entries
    assert [c.end for c in change.closed] == [NOW]
    assert levelled(change) == ["warning channel.recovered", "info channel.deleted"]


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
