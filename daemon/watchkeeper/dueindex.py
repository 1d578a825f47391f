"""A unit's channels by when the planner next needs them (``planner.Due``).

A pass without a listing plans only the channels whose time has come, and the engine's next wake-up
is the top of a heap: at 10,000 channels, planning every channel on every pass was most of a pass's
CPU (81 ms), and the wake-up scan was recomputed after every commit. Each channel is re-indexed when
its entry or spec changes, the only things its ``Due`` depends on; the heaps are lazy (a superseded
instant stays in until it comes up, and is compacted away when they grow to twice the channels).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import datetime

from watchkeeper.planner import Due

COMPACT_SLACK = 64
"""Superseded heap items tolerated beyond the live ones before a rebuild (small units)."""


class DueIndex:
    def __init__(self) -> None:
        self._due: dict[str, Due] = {}
        self._acts: list[tuple[datetime, str]] = []
        self._joins: list[tuple[datetime, str]] = []
        self.orphans: set[str] = set()
        """Owned channels kept by nothing (no spec): a deletion is planned for each, whatever the
        time; they never wake the engine (a failed deletion waits for the next pass)."""

    def __len__(self) -> int:
        return len(self._due)

    def put(self, channel_id: str, due: Due | None) -> None:
        """``due`` None: the channel has nothing for the planner (not owned, or kept by a refusal
        without a spec: left alone)."""
        self.orphans.discard(channel_id)
        if due is None:
            self._due.pop(channel_id, None)
        elif self._due.get(channel_id) != due:
            self._due[channel_id] = due
            heapq.heappush(self._acts, (due.act, channel_id))
            heapq.heappush(self._joins, (due.join, channel_id))
        self._compact_if_grown()

    def put_orphan(self, channel_id: str) -> None:
        self._due.pop(channel_id, None)
        self.orphans.add(channel_id)
        self._compact_if_grown()

    def next_act(self) -> datetime | None:
        """The earliest act over the channels (None: there are none)."""
        acts = self._acts
        while acts and self._stale(acts[0], act=True):
            heapq.heappop(acts)
        return acts[0][0] if acts else None

    def due(self, now: datetime) -> set[str]:
        """Channels whose act or join has come by ``now``, and the orphans: O(those + the
        superseded items among them), not O(channels)."""
        found = set(self.orphans)
        for heap, act in ((self._acts, True), (self._joins, False)):
            found.update(item[1] for item in _upto(heap, now) if not self._stale(item, act=act))
        return found

    def _stale(self, item: tuple[datetime, str], *, act: bool) -> bool:
        due = self._due.get(item[1])
        return due is None or (due.act if act else due.join) != item[0]

    def _compact_if_grown(self) -> None:
        """Superseded items are dropped once they outnumber the live ones."""
        if len(self._acts) > 2 * len(self._due) + COMPACT_SLACK:
            self._acts = [(d.act, c) for c, d in self._due.items()]
            self._joins = [(d.join, c) for c, d in self._due.items()]
            heapq.heapify(self._acts)
            heapq.heapify(self._joins)


def _upto(heap: list[tuple[datetime, str]], now: datetime) -> Iterator[tuple[datetime, str]]:
    """The items of a binary heap at or before ``now``, without popping: a subtree whose root is
    later holds nothing earlier."""
    stack = [0] if heap else []
    while stack:
        i = stack.pop()
        if heap[i][0] <= now:
            yield heap[i]
            stack.extend(j for j in (2 * i + 1, 2 * i + 2) if j < len(heap))
