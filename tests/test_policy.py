"""Timing rules of DESIGN.md section 3: renewal window, emergency tier, backoff, batching horizon."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from watchkeeper.policy import (
    Policy,
    backoff,
    batch_horizon,
    draw_renew_at,
    emergency_at,
    expiry_clamped,
    is_at_risk,
    listing_retry,
    next_reconcile,
    next_retry,
    tallies,
)

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))
S = timedelta(seconds=1)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
POLICY = Policy()
SEEDS = range(300)


class FixedRandom(random.Random):
    """random() always answers ``value``: pins full jitter to an end of its range."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("granted_at", "lifetime"),
    [
        pytest.param(NOW, HOUR, id="clamped-1h-grant"),
        pytest.param(NOW, timedelta(hours=23), id="23h"),
        pytest.param(NOW.astimezone(IST), 7 * timedelta(days=1), id="week-ist-offset"),
        pytest.param(NOW, 20 * S, id="20s"),
    ],
)
def test_renew_at_lies_in_the_window_of_the_granted_lifetime(
    granted_at: datetime, lifetime: timedelta
) -> None:
    draws = [draw_renew_at(granted_at, granted_at + lifetime, POLICY, random.Random(s)) for s in SEEDS]
    low, high = NOW + lifetime * 0.60, NOW + lifetime * 0.70
    assert all(low <= d <= high for d in draws)
    assert all(d.utcoffset() == timedelta(0) for d in draws)
    # Spread over the window, not stuck at one point.
    assert max(draws) - min(draws) > (high - low) * 0.8


@pytest.mark.parametrize(("value", "fraction"), [(0.0, 0.60), (1.0, 0.70), (0.5, 0.65)])
def test_renew_at_window_ends(value: float, fraction: float) -> None:
    got = draw_renew_at(NOW, NOW + 10 * HOUR, POLICY, FixedRandom(value))
    assert got == NOW + 10 * HOUR * fraction


def test_renew_at_of_a_lifetime_already_over_is_now() -> None:
    assert draw_renew_at(NOW, NOW - S, POLICY, random.Random(1)) == NOW


@pytest.mark.parametrize(
    ("expires_in", "lifetime", "at_risk"),
    [
        pytest.param(30 * MIN, 10 * HOUR, True, id="exactly-1/20-left"),
        pytest.param(30 * MIN + S, 10 * HOUR, False, id="just-over-1/20"),
        pytest.param(MIN, 10 * HOUR, True, id="a-minute-left"),
        pytest.param(-MIN, 10 * HOUR, True, id="already-expired"),
        pytest.param(3 * MIN, HOUR, True, id="1h-lifetime-3min-left"),
        pytest.param(4 * MIN, HOUR, False, id="1h-lifetime-4min-left"),
    ],
)
def test_emergency_tier(expires_in: timedelta, lifetime: timedelta, at_risk: bool) -> None:
    expires = NOW + expires_in
    assert emergency_at(expires, lifetime, POLICY) == expires - lifetime / 20
    assert is_at_risk(expires, lifetime, NOW, POLICY) is at_risk
    # The same instants written with Zoho's +05:30 offset decide the same way.
    assert is_at_risk(expires.astimezone(IST), lifetime, NOW.astimezone(IST), POLICY) is at_risk


@pytest.mark.parametrize(
    ("failures", "cap"),
    [
        (1, 30 * S),
        (2, 60 * S),
        (3, 120 * S),
        (4, 240 * S),
        (5, 480 * S),
        (6, 15 * MIN),
        (7, 15 * MIN),
        (10_000, 15 * MIN),
    ],
)
def test_backoff_is_full_jitter_under_a_doubling_cap(failures: int, cap: timedelta) -> None:
    draws = [backoff(failures, POLICY, random.Random(s)) for s in SEEDS]
    assert all(timedelta(0) <= d <= cap for d in draws)
    assert min(draws) < cap * 0.05
    assert max(draws) > cap * 0.95
    assert backoff(failures, POLICY, FixedRandom(0.0)) == timedelta(0)
    assert backoff(failures, POLICY, FixedRandom(0.5)) == cap / 2


def test_backoff_needs_a_failure() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        backoff(0, POLICY, random.Random(0))


@pytest.mark.parametrize(
    ("failures", "expires_in", "earliest", "latest"),
    [
        pytest.param(5, None, S, 480 * S, id="no-expiry-known"),
        pytest.param(5, -MIN, S, 480 * S, id="already-expired-not-capped"),
        pytest.param(5, HOUR, S, 480 * S, id="expiry-far-away"),
        pytest.param(5, 40 * S, S, 35 * S, id="capped-before-expiry"),
        pytest.param(1, 20 * S, S, 15 * S, id="expiry-tighter-than-backoff"),
        pytest.param(3, 3 * S, S, S, id="inside-margin-waits-the-floor"),
    ],
)
def test_next_retry_never_past_the_expiry(
    failures: int, expires_in: timedelta | None, earliest: timedelta, latest: timedelta
) -> None:
    expires = None if expires_in is None else NOW + expires_in
    for seed in SEEDS:
        got = next_retry(NOW, failures, expires, POLICY, random.Random(seed))
        assert NOW + earliest <= got <= NOW + latest


def test_next_retry_spreads_up_to_the_expiry_cap() -> None:
    expires = NOW + 40 * S
    draws = [next_retry(NOW, 5, expires, POLICY, random.Random(s)) for s in SEEDS]
    assert max(draws) == expires - POLICY.retry_margin


def test_terminal_failure_waits_the_terminal_retry_whatever_the_expiry() -> None:
    got = next_retry(NOW, 3, NOW + 5 * MIN, POLICY, random.Random(0), terminal=True)
    assert got == NOW + HOUR


@pytest.mark.parametrize(
    ("lifetime", "horizon"), [(10 * HOUR, HOUR), (HOUR, 6 * MIN), (7 * 24 * HOUR, 16 * HOUR + 48 * MIN)]
)
def test_batch_horizon_is_a_tenth_of_the_lifetime(lifetime: timedelta, horizon: timedelta) -> None:
    assert batch_horizon(lifetime, POLICY) == horizon


@pytest.mark.parametrize(
    ("requested", "granted", "clamped"),
    [
        (23 * HOUR, HOUR, True),
        (23 * HOUR, 22 * HOUR, False),
        (23 * HOUR, 20 * HOUR, True),
        (HOUR, HOUR, False),
    ],
)
def test_expiry_clamped(requested: timedelta, granted: timedelta, clamped: bool) -> None:
    assert expiry_clamped(requested, granted, POLICY) is clamped


def test_next_reconcile_is_jittered_ten_percent() -> None:
    draws = [next_reconcile(NOW, POLICY.reconcile_every, POLICY, random.Random(s)) for s in SEEDS]
    assert all(NOW + 27 * MIN <= d <= NOW + 33 * MIN for d in draws)
    assert max(draws) - min(draws) > 5 * MIN


@pytest.mark.parametrize(
    ("every", "draw", "after"),
    [
        pytest.param(30 * MIN, 0.0, 27 * MIN, id="30m-earliest"),
        pytest.param(30 * MIN, 1.0, 33 * MIN, id="30m-latest"),
        pytest.param(4 * HOUR, 0.5, 4 * HOUR, id="4h-middle"),
        pytest.param(20 * HOUR, 0.0, 18 * HOUR, id="20h-earliest"),
        pytest.param(20 * HOUR, 1.0, 22 * HOUR, id="20h-latest"),
        pytest.param(10 * S, 1.0, 11 * S, id="10s-latest"),
    ],
)
def test_next_reconcile_follows_the_accounts_interval(
    every: timedelta, draw: float, after: timedelta
) -> None:
    """The interval passed in, not ``[daemon]``'s (30m here), with the same ±10 %."""
    assert next_reconcile(NOW, every, POLICY, FixedRandom(draw)) == NOW + after


@pytest.mark.parametrize(
    ("failures", "every", "draw", "after"),
    [
        pytest.param(1, 30 * MIN, 1.0, 30 * S, id="first-failure-backoff"),
        pytest.param(1, 30 * MIN, 0.0, S, id="never-under-the-floor"),
        pytest.param(10, 30 * MIN, 1.0, 2 * MIN, id="within-probe-max"),
        pytest.param(10, 20 * HOUR, 1.0, 2 * MIN, id="a-long-interval-probes-as-often"),
        pytest.param(10, MIN, 1.0, MIN, id="never-after-the-regular-look"),
        pytest.param(1, 10 * S, 1.0, 10 * S, id="a-short-interval-caps-the-first-backoff"),
    ],
)
def test_listing_retry_backs_off_within_probe_max_and_the_accounts_interval(
    failures: int, every: timedelta, draw: float, after: timedelta
) -> None:
    assert listing_retry(NOW, failures, every, POLICY, FixedRandom(draw)) == NOW + after


@pytest.mark.parametrize(
    ("rows", "full_due", "tally"),
    [
        pytest.param(201, NOW + HOUR, True, id="two-pages-full-listing-not-due"),
        pytest.param(20_000, NOW + S, True, id="a-hundred-pages"),
        pytest.param(201, NOW, False, id="full-listing-due"),
        pytest.param(201, NOW - HOUR, False, id="full-listing-overdue"),
        pytest.param(200, NOW + HOUR, False, id="one-page-is-listed-in-full"),
        pytest.param(0, NOW + HOUR, False, id="nothing-listed"),
        pytest.param(None, NOW + HOUR, False, id="count-unknown"),
        pytest.param(201, None, False, id="never-listed-in-full"),
    ],
)
def test_tallies(rows: int | None, full_due: datetime | None, tally: bool) -> None:
    assert tallies(rows, 200, NOW, full_due) is tally
