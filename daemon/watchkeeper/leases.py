"""PURE: the lease decisions of DESIGN.md section 8. Which accounts to take, renew or hand back,
given the heartbeats and leases read from the database (on its clock); whether a unit may still call
Zoho (on ours). No I/O and no clock: ``cluster.py`` reads and writes, the engine asks.

Two clocks, kept apart: who holds what and who is live is decided on the database's ``now()``
(``Board.now``); how long this instance may act on a lease is measured on its own clock from the
moment it began the transaction that took or renewed it (``Held.until``). The database's ``now()``
of that transaction is no earlier, so ``until`` is never later than the lease's real end, whatever
the two clocks say.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from watchkeeper.config import DesiredState
from watchkeeper.model import format_events
from watchkeeper.values import Board, LeaseState


@dataclass(frozen=True, slots=True)
class Held:
    """A lease this instance holds."""

    epoch: int
    until: datetime
    """Our clock: the lease surely lasts until then (the start of the transaction that renewed it,
    plus the lease)."""


@dataclass(frozen=True, slots=True)
class Timing:
    lease: timedelta

    @property
    def renew_every(self) -> timedelta:
        return self.lease / 3

    @property
    def margin(self) -> timedelta:
        """No call to Zoho starts this close to the lease's end: a renewal may fail once and the
        call in flight still ends before another instance may take the account."""
        return self.lease / 3


@dataclass(frozen=True, slots=True)
class Moves:
    share: int
    """ceil(accounts / live instances), this instance counted."""
    take: tuple[str, ...]
    """Free accounts (never leased, released, or expired) to take, up to the share."""
    release: tuple[str, ...]
    """Held accounts over the share, to hand back after the pass."""
    diverged: tuple[str, ...]
    """Live instances whose state file differs from this one's."""


def share(accounts: int, live: int) -> int:
    return -(-accounts // max(live, 1))


def is_free(lease: LeaseState | None, now: datetime) -> bool:
    return lease is None or lease.holder is None or lease.expires_at <= now


def held_by(lease: LeaseState | None, instance: str, now: datetime) -> bool:
    return lease is not None and lease.holder == instance and lease.expires_at > now


def decide(instance: str, digest: str, accounts: Sequence[str], board: Board) -> Moves:
    """What ``instance`` does with the accounts of its state file. Each instance tries the free
    accounts in an order of its own (a hash of its name and the account's), so instances starting
    together rarely race for the same row."""
    live = {b.instance: b for b in board.instances if b.expires_at > board.now}
    quota = share(len(accounts), len(live.keys() | {instance}))

    def order(account: str) -> str:
        return hashlib.sha256(f"{instance}\0{account}".encode()).hexdigest()

    mine = sorted((a for a in accounts if held_by(board.leases.get(a), instance, board.now)), key=order)
    free = sorted((a for a in accounts if is_free(board.leases.get(a), board.now)), key=order)
    diverged = sorted(name for name, b in live.items() if name != instance and b.digest != digest)
    return Moves(
        share=quota,
        take=tuple(free[: max(0, quota - len(mine))]),
        release=tuple(mine[quota:]),
        diverged=tuple(diverged),
    )


def may_call(held: Held | None, now: datetime, timing: Timing) -> bool:
    """Whether a unit may start a call to Zoho: it holds the lease, with more than the margin left."""
    return held is not None and now < held.until - timing.margin


def cycle_due(last: datetime | None, now: datetime, timing: Timing) -> bool:
    return last is None or now >= last + timing.renew_every


def lost(held: Mapping[str, Held], renewed: Mapping[str, LeaseState]) -> list[str]:
    """Held accounts the renewal did not find ours any more (expired while we were away, or taken:
    the epoch moved on)."""
    return sorted(a for a, h in held.items() if a not in renewed or renewed[a].epoch != h.epoch)


def digest(state: DesiredState) -> str:
    """The state file's accounts and channels (not ``[daemon]``, which differs per instance), as
    a digest that holds no secret: tokens and notify_urls enter as their own digests, credentials
    not at all. An account's own ``reconcile_every`` enters (whichever instance holds the account
    looks at it that often, so the instances must agree), and only when set: a state without it
    keeps the digest it had, so instances of the version before it do not see it diverge."""
    accounts = {
        name: [a.product, a.api_version, a.endpoint.api_domain, a.endpoint.accounts_url]
        + ([] if a.reconcile_every is None else [a.reconcile_every.total_seconds()])
        for name, a in sorted(state.accounts.items())
    }
    channels = [
        [c.account, c.channel_id, c.name, format_events(c.events),
         c.digests().url, c.digests().token, c.ttl.total_seconds(),
         c.notify_on_related_action, c.return_affected_field_values, c.notification_condition]
        for c in sorted(state.channels, key=lambda c: (c.account, c.channel_id))
    ]  # fmt: skip
    text = json.dumps({"accounts": accounts, "channels": channels}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
