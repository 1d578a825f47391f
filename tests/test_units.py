"""What the engine's memory derives for a unit: the status line's counts (a unit's census of the
desired channels it owns, and the ``STATUS=`` text made of it; the engine tests check the cached
censuses against a recount), and the specs a backfill looks its channels up in."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from watchkeeper import outcome
from watchkeeper.model import ChannelSpec, ChannelState, RegistryEntry, parse_events
from watchkeeper.planner import plan_account
from watchkeeper.policy import Policy
from watchkeeper.service import status_line
from watchkeeper.units import Census, Memory, RunningCensus, Unit
from watchkeeper.zoho.auth import StaticToken
from watchkeeper.zoho.client import WatchClient
from watchkeeper.zoho.regions import Endpoint

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def entry(channel_id: str, state: ChannelState, renew_in: timedelta | None = None) -> RegistryEntry:
    renew_at = None if renew_in is None else NOW + renew_in
    return RegistryEntry("main", channel_id, state, renew_at=renew_at)


@pytest.mark.parametrize(
    ("entries", "desired", "states", "renew_in", "undesired"),
    [
        pytest.param([], [], {}, None, [], id="nothing"),
        pytest.param([], ["1"], {}, None, [], id="desired-not-owned-yet"),
        pytest.param([entry("1", "active", HOUR)], ["1"], {"active": 1}, HOUR, [], id="one-active"),
        pytest.param(
            [entry("1", "active", HOUR), entry("2", "at_risk", -HOUR)],
            ["1", "2"],
            {"active": 1, "at_risk": 1},
            -HOUR,
            [],
            id="earliest-renewal-even-overdue",
        ),
        pytest.param(
            [entry("1", "active", 2 * HOUR), entry("2", "removing", HOUR)],
            ["1"],
            {"active": 1},
            2 * HOUR,
            ["2"],
            id="undesired-left-out-of-counts-and-renewal",
        ),
        pytest.param(
            [entry("1", "pending"), entry("2", "failed"), entry("3", "lapsed", 3 * HOUR)],
            ["1", "2", "3"],
            {"pending": 1, "failed": 1, "lapsed": 1},
            3 * HOUR,
            [],
            id="no-renewal-time-is-skipped",
        ),
        pytest.param(
            [entry("1", "pending"), entry("2", "failed")],
            [],
            {},
            None,
            ["1", "2"],
            id="nothing-desired-all-undesired",
        ),
    ],
)
def test_census_counts_the_owned_desired_channels(
    entries: list[RegistryEntry],
    desired: list[str],
    states: dict[str, int],
    renew_in: timedelta | None,
    undesired: list[str],
) -> None:
    counted = RunningCensus("main", {e.channel_id: e for e in entries}, frozenset(desired)).census()
    assert counted.states == Counter(states)
    assert counted.renew_at == (None if renew_in is None else NOW + renew_in)
    assert counted.owned == len(entries)
    assert counted.undesired == {("main", c) for c in undesired}


def test_a_running_census_is_a_recount_after_every_change() -> None:
    """Random changes and removals, told to the census as the unit tells them: it always says
    what counting the entries afresh says, the superseded renewal times of a long run included."""
    rng = random.Random(3)
    desired = frozenset(str(i) for i in range(0, 30, 2))
    entries: dict[str, RegistryEntry] = {}
    running = RunningCensus("main", entries, desired)
    states: list[ChannelState] = ["active", "at_risk", "lapsed", "failed", "pending"]
    for step in range(4000):
        channel_id = str(rng.randrange(30))
        old = entries.get(channel_id)
        if rng.random() < 0.15:
            new = None
            entries.pop(channel_id, None)
        else:
            offset = rng.choice([None, -HOUR, MIN, 3 * HOUR]) if rng.random() < 0.9 else None
            new = entry(channel_id, rng.choice(states), offset)
            entries[channel_id] = new
        running.change(channel_id, old, new)
        if rng.random() < 0.3:  # read now and then, as passes do
            fresh = RunningCensus("main", entries, desired).census()
            assert running.census() == fresh, step
            kept = [e for c, e in entries.items() if c in desired]
            assert fresh.states == Counter(e.state for e in kept)
            assert fresh.renew_at == min((e.renew_at for e in kept if e.renew_at), default=None)
            assert fresh.undesired == {("main", c) for c in entries if c not in desired}


@pytest.mark.parametrize(
    ("left", "right", "renew_in"),
    [
        pytest.param(None, None, None, id="neither"),
        pytest.param(HOUR, None, HOUR, id="left-only"),
        pytest.param(None, HOUR, HOUR, id="right-only"),
        pytest.param(2 * HOUR, HOUR, HOUR, id="earliest-of-both"),
    ],
)
def test_censuses_add_up(
    left: timedelta | None, right: timedelta | None, renew_in: timedelta | None
) -> None:
    a = Census(
        Counter(active=2, failed=1), None if left is None else NOW + left, 3, frozenset({("a", "1")})
    )
    b = Census(
        Counter(active=1, pending=1), None if right is None else NOW + right, 2, frozenset({("b", "1")})
    )
    total = a + b
    assert total.states == Counter(active=3, failed=1, pending=1)
    assert total.renew_at == (None if renew_in is None else NOW + renew_in)
    assert (total.owned, total.undesired) == (5, {("a", "1"), ("b", "1")})


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


@pytest.fixture
def unit() -> Iterator[Unit]:
    client = WatchClient(
        Endpoint("crm", "v8", "https://zoho.invalid", "https://accounts.invalid"), StaticToken("t")
    )
    try:
        yield Unit("main", client, {}, NOW)
    finally:
        client.close()


def given(channel_id: str, source: str, account: str = "main") -> ChannelSpec:
    """A spec whose name says where it came from."""
    events = parse_events(["Deals.all"])
    return ChannelSpec(account, channel_id, events, "https://hooks.example.com/", HOUR, name=source)


@pytest.mark.parametrize(
    ("desired", "retained", "known", "expect"),
    [
        pytest.param([], [], [], {}, id="nothing"),
        pytest.param(["1"], [], ["1"], {"1": "desired"}, id="desired-first"),
        pytest.param([], ["1"], ["1"], {"1": "retained"}, id="held-back-before-known"),
        pytest.param([], [], ["1"], {"1": "known"}, id="given-before"),
        pytest.param(
            ["1"], ["2"], ["1", "2", "3"], {"1": "desired", "2": "retained", "3": "known"}, id="mixed"
        ),
    ],
)
def test_specs_are_looked_up_state_file_first(
    unit: Unit, desired: list[str], retained: list[str], known: list[str], expect: dict[str, str]
) -> None:
    unit.desired = {c: given(c, "desired") for c in desired}
    unit.retained = {c: given(c, "retained") for c in retained}
    memory = Memory({"main": unit}, {("main", c): given(c, "known") for c in known})
    memory.known[("other", "9")] = given("9", "other account", account="other")
    specs = memory.specs(unit)
    assert {c: s.name for c, s in specs.items()} == expect
    assert len(specs) == len(expect)
    assert specs.get("9") is None  # another account's channel


def test_a_unit_plans_what_is_due_as_a_full_plan_would(unit: Unit) -> None:
    """The index as a property: over random accounts (desired, orphaned, refused and retained
    channels at every stage) and answers that change some entries, planning only the channels the
    unit's index says are due gives exactly the actions a plan of every channel gives, the
    ledger asked only about the channels the index says expired changes exactly what asking it
    about every channel would, and the unit wakes when the earliest of them acts."""
    rng = random.Random(5)
    offsets = [None, -HOUR, timedelta(0), 20 * MIN, 2 * HOUR, 6 * HOUR]
    tuning = Policy()
    unit.next_listing = NOW + 100 * HOUR  # only its channels wake it

    def maybe(offset: timedelta | None) -> datetime | None:
        return None if offset is None else NOW + offset

    def drawn(channel_id: str) -> RegistryEntry:
        return RegistryEntry(
            "main",
            channel_id,
            rng.choice(["active", "at_risk", "lapsed", "failed", "pending", "removing"]),
            expires_at=maybe(rng.choice(offsets)),
            renew_at=maybe(rng.choice(offsets)),
            retry_at=maybe(rng.choice(offsets)),
            lifetime=rng.choice([None, 10 * HOUR]),
            lapsed_since=maybe(rng.choice([None, None, -HOUR])),
        )

    for _ in range(300):
        ids = [str(1000 + i) for i in range(12)]
        unit.desired = {c: given(c, "desired") for c in ids if rng.random() < 0.7}
        unit.reload({c: drawn(c) for c in ids if rng.random() < 0.8})
        unit.refused = frozenset(c for c in unit.entries if c not in unit.desired and rng.random() < 0.5)
        unit.retained = {c: given(c, "retained") for c in unit.refused if rng.random() < 0.5}
        unit.reindex()
        for _ in range(3):
            now = NOW + rng.choice([-HOUR, timedelta(0), 30 * MIN, 3 * HOUR])
            full = replace(unit.view(None, now, tuning), candidates=None)
            assert plan_account(unit.view(None, now, tuning), now, tuning) == plan_account(
                full, now, tuning
            )
            at = unit.situation(now, tuning, random.Random(1))
            asked = outcome.observed(at, None, unit.watched(), expired=unit.expired(now, tuning))
            everyone = outcome.observed(at, None, unit.watched(), expired=list(unit.entries))
            assert (asked.entries, asked.opened) == (everyone.entries, everyone.opened)
            wake = unit.next_due(now, tuning)
            assert (wake <= now) == any(a.kind != "delete" for a in plan_account(full, now, tuning))
            changed = {c: drawn(c) for c in ids if rng.random() < 0.3}
            unit.record(changed, [c for c in ids if rng.random() < 0.1])
