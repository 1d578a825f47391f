"""The lease cycle's I/O for one instance sharing a PostgreSQL database with others: its heartbeat,
and the leases it renews, takes and gives back, in the store. The decisions are ``leases``'; the
engine asks for a cycle every ``lease``/3 and serves only the accounts whose lease it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from watchkeeper import leases
from watchkeeper.leases import Held, Moves, Timing
from watchkeeper.store import Store
from watchkeeper.values import LeaseState


@dataclass(frozen=True, slots=True)
class Taken:
    account: str
    held: Held
    previous: str | None
    """Who held it before (None: nobody, or released): a failover names the instance that died."""
    reason: str
    """``free`` (released or never leased), ``expired`` (its holder went silent; this instance
    too, after a pause), ``restarted`` (this instance's name held it in a previous run)."""


@dataclass(frozen=True, slots=True)
class Cycle:
    renewed: dict[str, Held]
    taken: list[Taken]
    lost: list[tuple[str, int]]
    """(account, epoch) held before this cycle and no longer ours."""
    moves: Moves


class Cluster:
    def __init__(
        self,
        store: Store,
        instance: str,
        digest: str,
        lease: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.instance = instance
        self.digest = digest
        self.timing = Timing(lease)
        self.clock = clock

    @property
    def ttl(self) -> float:
        return self.timing.lease.total_seconds()

    def cycle(self, accounts: Sequence[str], held: Mapping[str, Held]) -> Cycle:
        """Renew what is held, beat, read the board, take free accounts up to the share."""
        started = self.clock()
        until = started + self.timing.lease
        renewed, board = self.store.lease_cycle(self.instance, self.digest, self.ttl)
        moves = leases.decide(self.instance, self.digest, accounts, board)
        # Ours in the database but not known here: a previous run under the same instance name
        # (killed and restarted); it is gone, so its leases are simply this run's.
        taken = [
            Taken(a, Held(s.epoch, until), self.instance, "restarted")
            for a, s in renewed.items()
            if a not in held
        ]
        for account in moves.take:
            before: LeaseState | None = board.leases.get(account)
            got = self.store.take_lease(account, self.instance, self.ttl)
            if got is not None:
                previous = None if before is None else before.holder
                reason = "free" if previous is None else "expired"
                taken.append(Taken(account, Held(got.epoch, until), previous, reason))
        lost = [(a, held[a].epoch) for a in leases.lost(held, renewed)]
        return Cycle(
            renewed={a: Held(s.epoch, until) for a, s in renewed.items() if a in held},
            taken=taken,
            lost=lost,
            moves=moves,
        )

    def release(self, account: str, epoch: int) -> bool:
        return self.store.release_lease(account, self.instance, epoch)

    def leave(self) -> None:
        self.store.leave(self.instance)
