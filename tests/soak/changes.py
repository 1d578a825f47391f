"""The soak's record-change stream and its lost-events accounting.

Every ``every`` of simulated time, each module the fleet watches gets one record change (a create,
an edit of a live record, or a delete of one), made through the emulator, which updates its
records store and calls back every live channel subscribed to it. The truth is what the emulator
did; the deliveries are what the receiver took:

- delivered live: the emulator's callback reached the channel's own notify_url with a 2xx;
- in a gap: the channel was not live on Zoho at that instant, so nothing was sent; backfill must
  recover it: a backfilled notification for the record, covering the change (an insert or update
  covers a create or an edit, a delete covers anything, since polling yields a record's final
  state) from a gap whose window holds the instant;
- drift: the channel was live but subscribed elsewhere (changed behind the daemon's back, until
  the repair): not a gap, so not backfill's to recover, and reported apart.

Duplicates count each change covered more than once (at least once is the promise).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from watchkeeper.emulator import Emulator
from watchkeeper.model import parse_instant

from tests.soak.profile import Key

OPERATION = {"create": "insert", "edit": "update", "delete": "delete"}
COVERS = {
    "create": {"insert", "update", "delete"},
    "edit": {"insert", "update", "delete"},
    "delete": {"delete"},
}
MARGIN = timedelta(minutes=1)

Interval = tuple[datetime, datetime | None]


@dataclass(frozen=True, slots=True)
class Change:
    at: datetime
    """Zoho's clock."""
    module: str
    op: str
    record_id: str


@dataclass
class Stream:
    """Record changes at a fixed period over the fleet's modules."""

    emu: Emulator
    org_of: Mapping[str, str]
    """account -> emulator org."""
    modules: Sequence[str]
    every: timedelta
    next_at: datetime
    """Our clock."""
    hook: str
    """The prefix of every channel's own notify_url: a delivery elsewhere is misdirected."""
    rng: random.Random
    changes: dict[str, list[Change]] = field(default_factory=dict)
    """org -> the changes made there, in order."""
    live: set[tuple[str, str, int]] = field(default_factory=set)
    """(org, channel_id, change index) delivered live to the channel's own notify_url."""
    _records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _serial: int = 0

    def run_until(self, now: datetime) -> None:
        while self.next_at <= now:
            for org in sorted(set(self.org_of.values())):
                for module in self.modules:
                    self._one(org, module)
            self.next_at += self.every

    def _one(self, org: str, module: str) -> None:
        records = self._records.setdefault((org, module), [])
        roll = self.rng.random()
        if not records or roll < 0.5:
            self._serial += 1
            op, record_id = "create", str(9_000_000_000 + self._serial)
            records.append(record_id)
        elif roll < 0.85:
            op, record_id = "edit", self.rng.choice(records)
        else:
            op, record_id = "delete", records.pop(self.rng.randrange(len(records)))
        done = self.changes.setdefault(org, [])
        done.append(Change(self.emu.now(), module, op, record_id))
        for delivery in self.emu.simulate_record_change(module, op, [record_id], org=org):  # type: ignore[arg-type]
            ok = delivery.status is not None and 200 <= delivery.status < 300
            if ok and delivery.notify_url.startswith(self.hook):
                self.live.add((org, delivery.channel_id, len(done) - 1))


@dataclass(frozen=True, slots=True)
class Lost:
    """The lost-events figures of one run, per channel and in all."""

    made: int
    """Changes times the desired channels subscribed to them."""
    live: int
    in_gaps: int
    """Made while the channel was not live on Zoho: lost without backfill."""
    drift: int
    """Made while the channel was live but changed behind the daemon's back (not a gap): lost
    either way, until the repair."""
    lost_without_backfill: int
    lost_with_backfill: int
    duplicates: int
    per_channel_lost: dict[Key, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "changes_made": self.made,
            "delivered_live": self.live,
            "in_gaps": self.in_gaps,
            "lost_to_drift": self.drift,
            "lost_without_backfill": self.lost_without_backfill,
            "lost_with_backfill": self.lost_with_backfill,
            "duplicates": self.duplicates,
            "channels_losing_with_backfill": sum(1 for n in self.per_channel_lost.values() if n),
        }


def tally(
    stream: Stream,
    subscriptions: Mapping[Key, frozenset[tuple[str, str]]],
    intervals: Mapping[Key, Sequence[Interval]],
    backfilled: Iterable[dict[str, Any]],
) -> Lost:
    """Match every change against what each subscribed channel received."""
    covering: dict[tuple[str, str, str], list[tuple[datetime, datetime, str]]] = {}
    for body in backfilled:
        window = body["backfill"]
        start = parse_instant(window["gap_start"]) - MARGIN - timedelta(seconds=1)
        end = parse_instant(window["gap_end"]) + MARGIN + timedelta(seconds=1)
        for record_id in body["ids"]:
            key = (str(body["channel_id"]), str(body["module"]), str(record_id))
            covering.setdefault(key, []).append((start, end, str(body["operation"])))
    counts: Counter[str] = Counter()
    per_channel: dict[Key, int] = {}
    for (acct, channel_id), events in subscriptions.items():
        org = stream.org_of[acct]
        lost = 0
        for n, change in enumerate(stream.changes.get(org, [])):
            if (change.module, change.op) not in events:
                continue
            counts["made"] += 1
            live = (org, channel_id, n) in stream.live
            hits = sum(
                1
                for start, end, op in covering.get((channel_id, change.module, change.record_id), [])
                if start <= change.at <= end and op in COVERS[change.op]
            )
            counts["duplicates"] += max(0, int(live) + hits - 1)
            if live:
                counts["live"] += 1
            elif _live_at(intervals[(acct, channel_id)], change.at):
                counts["drift"] += 1
            else:
                counts["in_gaps"] += 1
                if not hits:
                    lost += 1
        per_channel[(acct, channel_id)] = lost
    gaps = counts["in_gaps"]
    return Lost(
        made=counts["made"],
        live=counts["live"],
        in_gaps=gaps,
        drift=counts["drift"],
        lost_without_backfill=gaps,
        lost_with_backfill=sum(per_channel.values()),
        duplicates=counts["duplicates"],
        per_channel_lost=per_channel,
    )


def _live_at(intervals: Sequence[Interval], at: datetime) -> bool:
    return any(start <= at and (end is None or at < end) for start, end in intervals)
