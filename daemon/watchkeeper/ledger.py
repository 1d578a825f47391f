"""PURE: the gap rules, the one place that decides a channel lapsed or recovered.

A gap is a window in which a desired channel was not live, so its events went nowhere. It opens
when the channel is known not live (its expiry passed, the listing no longer shows it, Zoho says
it is gone) and closes when Zoho shows it live again (a listing, an accepted write). Both ends are
instants on Zoho's clock. The channel's ``lapsed`` and ``active`` states change here and nowhere
else, in the same step as the gap, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from watchkeeper.model import ObservedChannel, RegistryEntry

Cause = Literal["expired", "vanished"]


@dataclass(frozen=True, slots=True)
class GapOpened:
    account: str
    channel_id: str
    start: datetime
    cause: Cause


@dataclass(frozen=True, slots=True)
class GapClosed:
    account: str
    channel_id: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Step:
    """The entry after the step, and the gap it opened or closed (at most one)."""

    entry: RegistryEntry
    opened: GapOpened | None = None
    closed: GapClosed | None = None


def lapse(entry: RegistryEntry, start: datetime, cause: Cause) -> Step:
    """Open the channel's gap; one already open keeps its start (the earliest knowledge of the
    outage is the one to backfill from).

    Opening a gap also lifts the channel's hold: what was refused was a renewal of a channel that
    is now known gone, and the re-creating POST is a different request (DESIGN.md section 3: the
    listing decides, no refusal of a PATCH or PUT parks a vanished channel)."""
    if entry.lapsed_since is not None:
        return Step(entry)
    lapsed = replace(
        entry, state="lapsed", lapsed_since=start, retry_at=None, terminal=False, last_error=None
    )
    return Step(lapsed, opened=GapOpened(entry.account, entry.channel_id, start, cause))


def recover(entry: RegistryEntry, end: datetime) -> Step:
    """Zoho showed the channel live at ``end``: its gap (if any) closes there, never before its
    start (a skew correction must not record a negative window)."""
    if entry.lapsed_since is None:
        return Step(entry)
    start = entry.lapsed_since
    active = replace(entry, state="active", lapsed_since=None)
    return Step(active, closed=GapClosed(entry.account, entry.channel_id, start, max(end, start)))


def gone(entry: RegistryEntry, last_seen: datetime | None, zoho_now: datetime) -> Step:
    """Zoho no longer has the channel: it expired if its expiry passed, else it vanished (deleted
    behind our back) after the last time Zoho showed it."""
    if entry.expires_at is not None and entry.expires_at <= zoho_now:
        return lapse(entry, entry.expires_at, "expired")
    return lapse(entry, last_seen or zoho_now, "vanished")


def observe(
    entry: RegistryEntry,
    listing: dict[str, ObservedChannel] | None,
    last_seen: datetime | None,
    zoho_now: datetime,
    *,
    watched: bool,
) -> Step:
    """What one pass's observation means for an owned channel.

    ``listing`` is the account's live channels this pass (expired rows already left out), or None
    when it was not listed. A live row is the truth about the expiry and ends any gap. Without a
    row, a watched channel (desired, or held back from deletion) lapses when its expiry passed or
    when the listing shows it gone; a channel never granted (no expiry) has nothing to lose yet.
    """
    listed = listing.get(entry.channel_id) if listing is not None else None
    if listed is not None:
        step = recover(entry, zoho_now)
        if step.entry.expires_at != listed.expires_at:
            step = replace(step, entry=replace(step.entry, expires_at=listed.expires_at))
        return step
    if not watched or entry.expires_at is None:
        return Step(entry)
    if entry.expires_at <= zoho_now or listing is not None:
        return gone(entry, last_seen, zoho_now)
    return Step(entry)
