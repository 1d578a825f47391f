"""The unit's index of channels by ``planner.Due``: what it returns as due, its earliest act, and
that items of a superseded entry never come back, against a recount over the latest values."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from watchkeeper.dueindex import SLACK, DueIndex
from watchkeeper.model import RegistryEntry
from watchkeeper.planner import ALWAYS, Due

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def at(minutes: int) -> datetime:
    return NOW + minutes * MIN


def entry(channel_id: str) -> RegistryEntry:
    return RegistryEntry("main", channel_id, "active")


R = 10 * MIN


H = "held"
"""A put's third member: the channel is held back until its act."""


@pytest.mark.parametrize(
    ("puts", "now", "due", "next_act"),
    [
        pytest.param([], NOW, set(), None, id="empty"),
        pytest.param([("1", at(5))], NOW, set(), at(5), id="nothing-yet"),
        pytest.param([("1", at(5))], at(5), {"1"}, at(5), id="acts"),
        pytest.param([("1", ALWAYS)], NOW, {"1"}, ALWAYS, id="always"),
        pytest.param(
            [("1", at(1)), ("2", at(10))], at(1), {"1", "2"}, at(1), id="within-reach-of-a-due-one"
        ),
        pytest.param([("1", at(1)), ("2", at(12))], at(1), {"1"}, at(1), id="beyond-reach"),
        pytest.param([("2", at(10))], at(1), set(), at(10), id="reach-only-beside-a-due-one"),
        pytest.param(
            [("1", at(1)), ("1", at(9))], at(5), set(), at(9), id="a-superseded-entry-never-returns"
        ),
        pytest.param([("1", at(3)), ("1", at(3))], at(3), {"1"}, at(3), id="same-instant-twice"),
        pytest.param([("1", at(4), H)], at(1), set(), at(4), id="held-until-its-act"),
        pytest.param([("1", at(4), H)], at(4), {"1"}, at(4), id="held-then-due"),
        pytest.param(
            [("1", at(1)), ("2", at(5), H)], at(1), {"1"}, at(1), id="held-is-never-within-reach"
        ),
        pytest.param(
            [("2", at(5), H), ("2", at(7))], at(5), set(), at(7), id="a-superseded-hold-never-returns"
        ),
    ],
)
def test_index(
    puts: list[tuple[Any, ...]], now: datetime, due: set[str], next_act: datetime | None
) -> None:
    entries: dict[str, RegistryEntry] = {}
    index = DueIndex(entries)
    for channel_id, act, *held in puts:
        entries[channel_id] = entry(channel_id)  # a new entry each time, as an answer makes
        index.put(channel_id, entries[channel_id], Due(act, R, held=bool(held)))
    assert index.due(now) == due
    assert index.next_act() == next_act


def test_a_channel_gone_from_the_registry_is_gone_from_the_index() -> None:
    entries = {"1": entry("1"), "2": entry("2")}
    index = DueIndex(entries)
    index.put("1", entries["1"], Due(at(1), R))
    index.put_orphan("2")
    del entries["1"], entries["2"]
    index.forget("2")
    assert (index.due(at(5)), index.next_act()) == (set(), None)


def test_expired_names_the_channels_not_lapsed_whose_expiry_came_until_their_entry_changes() -> None:
    """What a pass without a listing asks the ledger about. An expiry that came stays expired
    until the channel's entry changes (a pass whose answer was never recorded finds it again); a
    lapsed entry, a renewed one or a removed one drops out; one with no expiry never enters."""
    entries = {
        "1": replace(entry("1"), expires_at=at(5)),
        "2": replace(entry("2"), expires_at=at(30)),
        "3": replace(entry("3"), expires_at=at(1), lapsed_since=at(1)),
        "4": replace(entry("4"), expires_at=None),
    }
    index = DueIndex(entries)
    for channel_id, current in entries.items():
        index.put_expiry(channel_id, current)
    assert index.expired(at(4)) == set()
    assert index.expired(at(5)) == {"1"}
    assert index.expired(at(6)) == {"1"}  # not recorded yet: asked about again
    entries["1"] = replace(entries["1"], lapsed_since=at(5))  # the ledger lapsed it
    index.put_expiry("1", entries["1"])
    assert index.expired(at(40)) == {"2"}
    entries["2"] = replace(entries["2"], expires_at=at(90))  # renewed
    index.put_expiry("2", entries["2"])
    assert index.expired(at(40)) == set()
    del entries["2"]
    assert index.expired(at(100)) == set()


def test_superseded_expiries_are_swept_without_a_rebuild() -> None:
    """An outage's failed requests give their channels new entries pass after pass, the expiry
    unchanged: the superseded expiry items are dropped in a sweep, the heap stays within twice the
    channels, and the index is not rebuilt for them (a rebuild recomputes every channel's Due)."""
    entries = {str(i): replace(entry(str(i)), expires_at=at(60 + i)) for i in range(10)}
    index = DueIndex(entries)
    for _ in range(50):
        for channel_id in entries:
            entries[channel_id] = replace(entries[channel_id])  # a new entry, the same expiry
            index.put_expiry(channel_id, entries[channel_id])
            assert len(index._expiries) <= 2 * len(entries) + SLACK + 1  # the heap, bounded
    assert not index.grown()
    assert index.expired(at(64)) == {"0", "1", "2", "3", "4"}


def test_orphans_are_always_due_and_never_wake() -> None:
    entries = {"1": entry("1"), "2": entry("2")}
    index = DueIndex(entries)
    index.put_orphan("1")
    index.put_orphan("2")
    assert index.due(NOW) == {"1", "2"}
    assert index.next_act() is None
    index.put("2", entries["2"], Due(at(5), R))
    assert index.due(NOW) == {"1"}
    assert index.next_act() == at(5)


def test_against_a_recount_over_many_changes() -> None:
    """Random answers (new entries, some held back), removals and orphans as time goes on: the
    index always answers what a scan of the latest values would (its reach the longest of a
    channel not held back put since it was built, held ones never within it), and says it has
    grown once superseded items outnumber live ones."""
    rng = random.Random(11)
    entries: dict[str, RegistryEntry] = {}
    index, latest, orphans = DueIndex(entries), dict[str, Due](), set[str]()
    rebuilt, reach, now = 0, timedelta(0), NOW
    for step in range(5000):
        channel_id = str(rng.randrange(40))
        roll = rng.random()
        if roll < 0.1:
            entries.pop(channel_id, None)
            index.forget(channel_id)
            latest.pop(channel_id, None)
            orphans.discard(channel_id)
        elif roll < 0.15 and channel_id not in entries:
            entries[channel_id] = entry(channel_id)
            index.put_orphan(channel_id)
            orphans.add(channel_id)
        elif channel_id not in orphans:
            when = Due(
                now + rng.randrange(-30, 600) * MIN,
                rng.randrange(0, 20) * MIN,
                held=rng.random() < 0.3,
            )
            entries[channel_id] = entry(channel_id)
            index.put(channel_id, entries[channel_id], when)
            latest[channel_id] = when
            reach = reach if when.held else max(reach, when.reach)
        now += rng.randrange(0, 3) * MIN
        acting = {c for c, d in latest.items() if d.act <= now}
        near = {c for c, d in latest.items() if not d.held and d.act <= now + reach}
        near = near if acting else set()
        assert index.due(now) == acting | near | orphans, step
        assert index.next_act() == min((d.act for d in latest.values()), default=None), step
        if index.grown():  # as the unit does: build it again from the latest values
            rebuilt += 1
            index, reach = (
                DueIndex(entries),
                max((d.reach for d in latest.values() if not d.held), default=timedelta(0)),
            )
            for c, d in latest.items():
                index.put(c, entries[c], d)
            for c in orphans:
                index.put_orphan(c)
    assert rebuilt > 10


def test_a_clock_stepped_back_keeps_what_had_come() -> None:
    """Once an act has come the channel stays due until its entry changes, even if the clock then
    steps back: planning a channel early is harmless, missing one is not."""
    entries = {"1": entry("1")}
    index = DueIndex(entries)
    index.put("1", entries["1"], Due(at(5), R))
    assert index.due(at(5)) == {"1"}
    assert index.due(at(-60)) == {"1"}
    assert index.next_act() == at(5)
    entries["1"] = entry("1")
    index.put("1", entries["1"], Due(at(30), R))
    assert (index.due(at(-60)), index.next_act()) == (set(), at(30))
