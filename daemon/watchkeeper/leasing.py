"""This instance's side of the leases (DESIGN.md section 8): which accounts it serves, the fence
of each write, and the lease cycle (renew, beat, take free accounts, hand back the excess).

The decisions are ``leases``'s and the SQL is ``cluster``'s; the engine only asks ``serves``,
``may_call``, ``fence``, ``next_cycle`` and ``cycle``, so a pass keeps its straight line whether
one instance runs or several.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from watchkeeper import leases, logs
from watchkeeper.cluster import Cluster, Taken
from watchkeeper.store import LeaseLost, Store
from watchkeeper.units import Memory, Unit


class Leasing:
    def __init__(
        self,
        cluster: Cluster,
        memory: Memory,
        store: Store,
        clock: Callable[[], datetime],
        on_taken: Callable[[], None],
    ) -> None:
        self.cluster = cluster
        self._memory = memory
        self._store = store
        self._clock = clock
        self._on_taken = on_taken
        """Called when an account is taken: a backfill may have been requested meanwhile."""
        self._cycled_at: datetime | None = None
        self._cycling = threading.Lock()
        """One lease cycle at a time, whichever account's worker finds it due."""
        self._release: tuple[str, ...] = ()
        self._diverged: tuple[str, ...] = ()
        self.log = logs.get_logger()

    def serves(self, unit: Unit) -> bool:
        return unit.lease is not None

    def may_call(self, unit: Unit) -> bool:
        """Held, and not within the lease's margin of its end, on the clock as it is now."""
        return leases.may_call(unit.lease, self._clock(), self.cluster.timing)

    def fence(self, unit: Unit) -> tuple[str, int]:
        """The (account, epoch) every write of the account is conditioned on."""
        if unit.lease is None:
            raise LeaseLost(unit.name, 0)
        return (unit.name, unit.lease.epoch)

    def next_cycle(self, now: datetime) -> datetime:
        if self._cycled_at is None:
            return now
        return self._cycled_at + self.cluster.timing.renew_every

    def cycle(self, now: datetime, accounts: Sequence[str]) -> None:
        """Renew, beat, take free accounts up to the share (every ``lease``/3)."""
        if not leases.cycle_due(self._cycled_at, now, self.cluster.timing):
            return
        if not self._cycling.acquire(blocking=False):
            return  # another account's worker is running it
        try:
            self._cycled_at = now
            self._cycle(accounts)
        finally:
            self._cycling.release()

    def _cycle(self, accounts: Sequence[str]) -> None:
        units = self._memory.units
        held = {name: u.lease for name, u in units.items() if u.lease is not None}
        cycle = self.cluster.cycle(sorted(accounts), held)
        for account, epoch in cycle.lost:
            self.lost(units[account], epoch, "expired")
        for account, lease in cycle.renewed.items():
            units[account].lease = lease
        for taken in cycle.taken:
            self._adopt(units[taken.account], taken)
        self._release = cycle.moves.release
        if cycle.moves.diverged != self._diverged:
            self._diverged = cycle.moves.diverged
            if self._diverged:
                self.log.warning(
                    "config.diverged",
                    instance=self.cluster.instance,
                    instances=list(self._diverged),
                    digest=self.cluster.digest,
                    note="these live instances run a different state file",
                )

    def _adopt(self, unit: Unit, taken: Taken) -> None:
        """A newly held account: its rows as the last holder left them, listed at once. The lease
        is set last: it is what makes the unit served, and the pool's top-up loop looks at served
        units from another thread, so it must not find one half reloaded."""
        unit.reload({cid: e for (_, cid), e in self._store.registry(unit.name).items()})
        unit.next_listing = min(unit.next_listing, self._clock())
        unit.rows = None  # in full: the last holder may have written since this instance listed
        unit.paused_until = None
        unit.touch()
        unit.lease = taken.held
        self._on_taken()
        self.log.info(
            "lease.acquired",
            account=unit.name,
            instance=self.cluster.instance,
            epoch=taken.held.epoch,
            reason=taken.reason,
            previous=taken.previous,
        )

    def lost(self, unit: Unit, epoch: int, reason: str) -> None:
        if unit.lease is None:
            return  # already known lost (a cycle found it while this unit was being served)
        unit.lease = None
        unit.touch()
        self.log.error(
            "lease.lost", account=unit.name, instance=self.cluster.instance, epoch=epoch, reason=reason
        )

    def hand_back(self, accounts: tuple[str, ...] | None = None, reason: str = "rebalance") -> None:
        """Give back the excess over the share (after the pass), or ``accounts``."""
        names, self._release = (self._release if accounts is None else accounts), ()
        for name in names:
            unit = self._memory.units[name]
            held = unit.lease
            if held is None:
                continue
            unit.lease = None
            unit.touch()
            if self.cluster.release(name, held.epoch):
                self.log.info(
                    "lease.released",
                    account=name,
                    instance=self.cluster.instance,
                    epoch=held.epoch,
                    reason=reason,
                )

    def release_all(self) -> None:
        """On SIGTERM: give every lease back at once and drop the heartbeat, so that the others
        take the accounts on their next cycle instead of waiting for the leases to expire."""
        held = tuple(name for name, u in self._memory.units.items() if u.lease is not None)
        self.hand_back(held, "shutdown")
        self.cluster.leave()
