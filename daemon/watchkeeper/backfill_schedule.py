"""When each account's backfill runs, on which specs and for how long: the engine's side of
backfill (the steps themselves are backfill.py's).

A backfill runs after every account's renewals and stops as soon as a renewal or listing falls
due, so it never delays one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta

from watchkeeper import backfill_plan
from watchkeeper.account import AccountPass
from watchkeeper.backfill import Backfiller, collect
from watchkeeper.policy import Policy
from watchkeeper.store import Store
from watchkeeper.units import Memory, Unit
from watchkeeper.values import Gap
from watchkeeper.zoho.records import RecordsClient

SLICE = timedelta(seconds=5)
"""Real time a backfill step may take while some renewal is overdue already (it would otherwise
never run while the account retries something that stays due)."""


class BackfillSchedule:
    def __init__(self, store: Store, memory: Memory, rng: random.Random) -> None:
        self._store, self._memory, self._rng = store, memory, rng
        self._backfiller: Backfiller | None = None
        """Made at the first step: it opens the receivers' connection pool."""
        self.on_delivered: Callable[[str, str, int], None] | None = None
        """Told (account, operation, records) of every backfill notification delivered."""

    def close(self) -> None:
        if self._backfiller is not None:
            self._backfiller.close()

    def arm(self, now: datetime) -> None:
        """Accounts with a backfill pending in the store look at it in their next pass."""
        for name in self._store.backfill_accounts() & self._memory.units.keys():
            self._memory.units[name].backfill_at = now

    def deadline(self, units: Iterable[Unit], current: datetime, tuning: Policy) -> datetime:
        """Backfill runs until a renewal or listing falls due, or, when one is overdue already,
        for SLICE."""
        horizon = min((u.next_due(current, tuning) for u in units), default=current)
        return horizon if horizon > current else current + SLICE

    def step(self, lane: AccountPass, interrupted: Callable[[], bool]) -> None:
        """The account's backfill step, until ``interrupted``; its pauses committed on ``lane``."""
        unit = lane.unit
        if self._backfiller is None:
            self._backfiller = Backfiller(self._store, rng=self._rng, on_delivered=self.on_delivered)
        unit.backfill_at = None
        progress = self._backfiller.run(unit, lane.situation(), self._memory.specs(unit), interrupted)
        for change in progress.transitions:
            lane.commit(change)
        if progress.next_at is not None:
            at = progress.next_at
            unit.backfill_at = at if unit.backfill_at is None else min(unit.backfill_at, at)

    def preview(self, gaps: Iterable[Gap]) -> Iterator[tuple[Gap, backfill_plan.Notification | None]]:
        """What backfilling these closed gaps would send (``--dry-run``): Zoho is asked, nothing is
        sent or written. A gap whose channel has no spec here yields None."""
        for gap in gaps:
            unit = self._memory.units.get(gap.account)
            spec = self._memory.specs(unit).get(gap.channel_id) if unit is not None else None
            if unit is None or spec is None or gap.end is None:
                yield gap, None
                continue
            window = backfill_plan.Window(gap.start, gap.end)
            for note in collect(RecordsClient(unit.client.session), spec, window):
                yield gap, note


def due(unit: Unit, now: datetime) -> bool:
    return unit.backfill_at is not None and unit.backfill_at <= now
