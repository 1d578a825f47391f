"""The status line's counts: a unit's census of the desired channels it owns, and the ``STATUS=``
text made of it (table-driven; the engine tests check the cached tallies against a recount)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from watchkeeper.model import ChannelState, RegistryEntry
from watchkeeper.service import status_line
from watchkeeper.units import Census, census

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def entry(channel_id: str, state: ChannelState, renew_in: timedelta | None = None) -> RegistryEntry:
    renew_at = None if renew_in is None else NOW + renew_in
    return RegistryEntry("main", channel_id, state, renew_at=renew_at)


@pytest.mark.parametrize(
    ("entries", "desired", "states", "renew_in"),
    [
        pytest.param([], [], {}, None, id="nothing"),
        pytest.param([], ["1"], {}, None, id="desired-not-owned-yet"),
        pytest.param([entry("1", "active", HOUR)], ["1"], {"active": 1}, HOUR, id="one-active"),
        pytest.param(
            [entry("1", "active", HOUR), entry("2", "at_risk", -HOUR)],
            ["1", "2"],
            {"active": 1, "at_risk": 1},
            -HOUR,
            id="earliest-renewal-even-overdue",
        ),
        pytest.param(
            [entry("1", "active", 2 * HOUR), entry("2", "removing", HOUR)],
            ["1"],
            {"active": 1},
            2 * HOUR,
            id="undesired-left-out-of-counts-and-renewal",
        ),
        pytest.param(
            [entry("1", "pending"), entry("2", "failed"), entry("3", "lapsed", 3 * HOUR)],
            ["1", "2", "3"],
            {"pending": 1, "failed": 1, "lapsed": 1},
            3 * HOUR,
            id="no-renewal-time-is-skipped",
        ),
        pytest.param(
            [entry("1", "pending"), entry("2", "failed")],
            ["1", "2"],
            {"pending": 1, "failed": 1},
            None,
            id="no-renewal-at-all",
        ),
    ],
)
def test_tally_counts_the_owned_desired_channels(
    entries: list[RegistryEntry],
    desired: list[str],
    states: dict[str, int],
    renew_in: timedelta | None,
) -> None:
    counted = census({e.channel_id: e for e in entries}, frozenset(desired))
    assert counted.states == Counter(states)
    assert counted.renew_at == (None if renew_in is None else NOW + renew_in)


@pytest.mark.parametrize(
    ("left", "right", "renew_in"),
    [
        pytest.param(None, None, None, id="neither"),
        pytest.param(HOUR, None, HOUR, id="left-only"),
        pytest.param(None, HOUR, HOUR, id="right-only"),
        pytest.param(2 * HOUR, HOUR, HOUR, id="earliest-of-both"),
    ],
)
def test_tallies_add_counts_and_keep_the_earliest_renewal(
    left: timedelta | None, right: timedelta | None, renew_in: timedelta | None
) -> None:
    a = Census(Counter(active=2, failed=1), None if left is None else NOW + left)
    b = Census(Counter(active=1, pending=1), None if right is None else NOW + right)
    total = a + b
    assert total.states == Counter(active=3, failed=1, pending=1)
    assert total.renew_at == (None if renew_in is None else NOW + renew_in)


@pytest.mark.parametrize(
    ("states", "renew_in", "skew", "held", "expect"),
    [
        pytest.param({}, None, timedelta(0), None, "0 active, 0 at risk", id="empty"),
        pytest.param(
            {"active": 4},
            2 * HOUR,
            timedelta(0),
            None,
            "4 active, 0 at risk, next renewal in 2h",
            id="all-active",
        ),
        pytest.param(
            {"active": 1, "at_risk": 2, "lapsed": 3, "failed": 4, "pending": 5},
            HOUR,
            timedelta(0),
            None,
            "1 active, 2 at risk, 3 lapsed, 4 failed, 5 pending, next renewal in 1h",
            id="every-state-in-order",
        ),
        pytest.param(
            {"active": 1, "removing": 7},
            HOUR,
            timedelta(minutes=10),
            None,
            "1 active, 0 at risk, next renewal in 50m",
            id="zoho-clock-ahead-renews-earlier-on-ours",
        ),
        pytest.param(
            {"at_risk": 1},
            -HOUR,
            timedelta(0),
            None,
            "0 active, 1 at risk, next renewal in 0s",
            id="overdue-says-now",
        ),
        pytest.param(
            {"active": 2},
            None,
            timedelta(0),
            (1, 3),
            "holding 1 of 3 accounts, 2 active, 0 at risk",
            id="several-instances",
        ),
    ],
)
def test_status_line(
    states: dict[str, int],
    renew_in: timedelta | None,
    skew: timedelta,
    held: tuple[int, int] | None,
    expect: str,
) -> None:
    counted = Census(Counter(states), None if renew_in is None else NOW + renew_in)
    assert status_line(counted, skew, NOW, held) == expect
