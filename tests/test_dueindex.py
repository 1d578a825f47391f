"""The unit's index of channels by ``planner.Due``: what it returns as due, its earliest act, and
that superseded instants never come back, against a recount over a plain dict."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from watchkeeper.dueindex import DueIndex
from watchkeeper.planner import ALWAYS, Due

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def at(minutes: int) -> datetime:
    return NOW + minutes * MIN


@pytest.mark.parametrize(
    ("puts", "now", "due", "next_act"),
    [
        pytest.param([], NOW, set(), None, id="empty"),
        pytest.param([("1", Due(at(5), at(2)))], NOW, set(), at(5), id="nothing-yet"),
        pytest.param([("1", Due(at(5), at(2)))], at(2), {"1"}, at(5), id="joinable"),
        pytest.param([("1", Due(at(5), at(2)))], at(5), {"1"}, at(5), id="acts"),
        pytest.param([("1", Due(ALWAYS, ALWAYS))], NOW, {"1"}, ALWAYS, id="always"),
        pytest.param(
            [("1", Due(at(1), at(0))), ("1", Due(at(9), at(8)))],
            at(5),
            set(),
            at(9),
            id="superseded-instant-never-comes-back",
        ),
        pytest.param([("1", Due(at(1), at(0))), ("1", None)], at(5), set(), None, id="removed"),
        pytest.param(
            [("1", Due(at(1), at(0))), ("2", Due(at(3), at(3))), ("3", Due(at(7), at(6)))],
            at(3),
            {"1", "2"},
            at(1),
            id="several",
        ),
    ],
)
def test_index(
    puts: list[tuple[str, Due | None]], now: datetime, due: set[str], next_act: datetime | None
) -> None:
    index = DueIndex()
    for channel_id, when in puts:
        index.put(channel_id, when)
    assert index.due(now) == due
    assert index.next_act() == next_act


def test_orphans_are_always_due_and_never_wake() -> None:
    index = DueIndex()
    index.put("1", Due(at(5), at(4)))
    index.put_orphan("1")
    index.put_orphan("2")
    assert index.due(NOW) == {"1", "2"}
    assert index.next_act() is None
    index.put("2", Due(at(5), at(4)))
    assert index.due(NOW) == {"1"}
    assert index.next_act() == at(5)


def test_against_a_recount_over_many_changes() -> None:
    """Random puts, removals and orphans (enough to compact the heaps several times): the index
    always answers what a scan of the latest values would, and its heaps stay bounded."""
    rng = random.Random(11)
    index, latest, orphans = DueIndex(), dict[str, Due](), set[str]()
    for step in range(5000):
        channel_id = str(rng.randrange(40))
        roll = rng.random()
        if roll < 0.1:
            index.put(channel_id, None)
            latest.pop(channel_id, None)
            orphans.discard(channel_id)
        elif roll < 0.15:
            index.put_orphan(channel_id)
            latest.pop(channel_id, None)
            orphans.add(channel_id)
        else:
            act = at(rng.randrange(-30, 60))
            when = Due(act, act - rng.randrange(0, 20) * MIN)
            index.put(channel_id, when)
            latest[channel_id] = when
            orphans.discard(channel_id)
        now = at(rng.randrange(-40, 70))
        expect = {c for c, d in latest.items() if d.act <= now or d.join <= now} | orphans
        assert index.due(now) == expect, step
        assert index.next_act() == min((d.act for d in latest.values()), default=None), step
        assert len(index) == len(latest)
        assert len(index._acts) <= 2 * len(latest) + 64 + 1
