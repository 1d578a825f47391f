"""The frozen value types the store hands to callers (besides model.RegistryEntry and AccessToken):
callers never see ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from watchkeeper.model import ChannelState


@dataclass(frozen=True, slots=True)
class Gap:
    """A window in which a desired channel was not active: its events must be backfilled."""

    id: int
    account: str
    channel_id: str
    start: datetime
    end: datetime | None
    """None while the gap is still open."""
    cause: str


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One line of ``watchkeeper status``."""

    account: str
    channel_id: str
    name: str | None
    state: ChannelState
    expires_at: datetime | None
    next_renewal_at: datetime | None
    """The held-back retry time while a failure backs off, else the drawn renewal time."""
    last_renewed_at: datetime | None
    failures: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Intent:
    """A write call that was about to be made: still here on start-up means it may have happened."""

    account: str
    channel_id: str
    action: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Backfill:
    """The progress of one gap's backfill (DESIGN.md section 9)."""

    gap: Gap
    state: str
    """pending, done or failed."""
    collected: bool
    records: int
    notifications: int
    failures: int
    first_failure_at: datetime | None
    retry_at: datetime | None
    reason: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class BackfillNote:
    """A collected notification not yet taken by its receiver."""

    seq: int
    module: str
    operation: str
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LeaseState:
    """An account's lease row; ``expires_at`` on the database's clock."""

    account: str
    holder: str | None
    epoch: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class InstanceBeat:
    instance: str
    expires_at: datetime
    digest: str


@dataclass(frozen=True, slots=True)
class Board:
    """What the lease decisions are made from, read in one transaction."""

    now: datetime
    """The database's clock."""
    leases: dict[str, LeaseState]
    instances: list[InstanceBeat]
