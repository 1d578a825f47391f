"""A unit's channels by when the planner next needs them (``planner.Due``), and by when the ledger
may find them lapsed (their expiry).

A pass without a listing plans only the channels whose time has come (and, when some has, those
within reach of joining its renewal), and the engine's next wake-up is the top of a heap: at 10,000
channels, planning every channel on every pass was most of a pass's CPU (81 ms), and the wake-up
scan was redone after every commit. A channel's ``Due`` depends on its entry and its spec only: an
answer that changes an entry indexes it again, and a change of specs (a reload, a refusal) rebuilds
the index.

A pass without a listing asks the ledger only about the channels whose expiry has come, not lapsed
yet: scanning every entry for them cost each pass O(channels), and during an outage the lapsed
ones were looked at again on every pass.

A channel held back until its act (a retry after a failure) joins no renewal before it, so it waits
in a heap of its own, out of the look for channels within reach: during an outage most of an
account's channels back off, and that look went over every one of them on every pass.

The heaps are lazy and lean, since they hold every channel of the daemon: an item is an instant, the
channel id and the entry it was computed from (no copy of either), and it is live while that entry
is still the one in the unit's registry slice. A superseded item is dropped when it comes up (each
once: the items that came are kept apart, ``_ready`` and ``_expired``, until their entry changes, so
a pass whose answer is not recorded finds them again); the unit rebuilds the index once superseded
items still to come outnumber the live ones (``grown``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta

from watchkeeper.model import RegistryEntry
from watchkeeper.planner import Due

SLACK = 64
"""Superseded items tolerated beyond the live ones before a rebuild (small units)."""


class Item:
    """An instant, the channel and the entry it was computed from; ordered by the instant alone
    (two items of one channel may share it, and entries do not order)."""

    __slots__ = ("at", "channel_id", "entry")

    def __init__(self, at: datetime, channel_id: str, entry: RegistryEntry) -> None:
        self.at, self.channel_id, self.entry = at, channel_id, entry

    def __lt__(self, other: Item) -> bool:
        return self.at < other.at


class DueIndex:
    def __init__(self, entries: Mapping[str, RegistryEntry]) -> None:
        self._entries = entries
        """The unit's registry slice, read only: which entry of a channel is current."""
        self._acts: list[Item] = []
        """The items whose act is still to come, as last seen (a heap)."""
        self._holds: list[Item] = []
        """Those of them held back until their act (a heap): never within reach."""
        self._ready: dict[str, Item] = {}
        """The items whose act has come, taken off the heap: due until their entry changes."""
        self._expiries: list[Item] = []
        """The expiries of the channels not lapsed, still to come as last seen (a heap)."""
        self._expired: dict[str, Item] = {}
        """The expiries that came, taken off the heap: expired until their entry changes."""
        self._reach = timedelta(0)
        """The longest ``Due.reach`` put (it only grows until a rebuild: a wider look is safe)."""
        self.orphans: set[str] = set()
        """Owned channels kept by nothing (no spec): a deletion is planned for each, whatever the
        time; they never wake the engine (a failed deletion waits for the next pass)."""

    def put(self, channel_id: str, entry: RegistryEntry, due: Due) -> None:
        """``due`` as computed from ``entry``, the channel's current one."""
        self.orphans.discard(channel_id)
        item = Item(due.act, channel_id, entry)
        if due.held:
            heapq.heappush(self._holds, item)
        else:
            heapq.heappush(self._acts, item)
            self._reach = max(self._reach, due.reach)

    def put_expiry(self, channel_id: str, entry: RegistryEntry) -> None:
        """``entry``, the channel's current one, may lapse at its expiry (whatever keeps it: the
        ledger decides whether it is watched)."""
        if entry.expires_at is not None and entry.lapsed_since is None:
            heapq.heappush(self._expiries, Item(entry.expires_at, channel_id, entry))
            if len(self._expiries) > 2 * len(self._entries) + SLACK:
                # Every answer for a channel supersedes its item, expiry moved or not (a failed
                # request's channels, pass after pass of an outage): dropped here, in one sweep,
                # rather than by rebuilding the whole index.
                self._expiries = [item for item in self._expiries if self._live(item)]
                heapq.heapify(self._expiries)

    def put_orphan(self, channel_id: str) -> None:
        self.orphans.add(channel_id)

    def forget(self, channel_id: str) -> None:
        """The channel left the registry (its items are superseded with its entry)."""
        self.orphans.discard(channel_id)

    def grown(self) -> bool:
        """Superseded items outnumber the live ones: time to rebuild."""
        return len(self._acts) + len(self._holds) > 2 * len(self._entries) + SLACK

    def next_act(self) -> datetime | None:
        """The earliest act over the channels (None: there are none)."""
        times = [item.at for item in self._prune(self._ready).values()]
        for heap in (self._acts, self._holds):
            while heap and not self._live(heap[0]):
                heapq.heappop(heap)
            if heap:
                times.append(heap[0].at)
        return min(times, default=None)

    def due(self, now: datetime) -> set[str]:
        """The orphans, the channels whose act has come by ``now``, and when there are any of
        those (a renewal may be due), the channels within reach of it: O(those + the superseded
        items among them), not O(channels); each superseded item that comes up is seen once."""
        ready = self._prune(self._ready)
        for heap in (self._acts, self._holds):
            self._take(heap, now, ready)
        found = set(ready)
        if found:
            reach = now + self._reach
            found.update(item.channel_id for item in _upto(self._acts, reach) if self._live(item))
        return found | self.orphans

    def expired(self, now: datetime) -> set[str]:
        """The channels not lapsed whose expiry has come by ``now``: O(those + the superseded
        items among them)."""
        expired = self._prune(self._expired)
        self._take(self._expiries, now, expired)
        return set(expired)

    def _take(self, heap: list[Item], now: datetime, came: dict[str, Item]) -> None:
        """Off ``heap`` into ``came``: the live items whose instant has come by ``now``."""
        while heap and heap[0].at <= now:
            item = heapq.heappop(heap)
            if self._live(item):
                came[item.channel_id] = item

    def _prune(self, came: dict[str, Item]) -> dict[str, Item]:
        """``came`` without its superseded items."""
        stale = [c for c, item in came.items() if not self._live(item)]
        for channel_id in stale:
            del came[channel_id]
        return came

    def _live(self, item: Item) -> bool:
        return self._entries.get(item.channel_id) is item.entry


def _upto(heap: list[Item], at: datetime) -> Iterator[Item]:
    """The items of a binary heap at or before ``at``, without popping: a subtree whose root is
    later holds nothing earlier."""
    stack = [0] if heap else []
    while stack:
        i = stack.pop()
        if heap[i].at <= at:
            yield heap[i]
            stack.extend(j for j in (2 * i + 1, 2 * i + 2) if j < len(heap))
