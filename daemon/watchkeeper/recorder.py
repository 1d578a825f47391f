"""Writes a Transition to the store, as one transaction: the one place the engine's decisions
become database rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from watchkeeper.model import RegistryEntry
from watchkeeper.outcome import Transition
from watchkeeper.store import Store


@dataclass(frozen=True, slots=True)
class Intent:
    """A request about to go out, journalled first: a crash before its answer is recorded is
    noticed at the next start (``engine.interrupted``), and the next listing repairs it."""

    method: str
    channel_ids: Sequence[str]
    at: datetime


def record(
    store: Store,
    change: Transition,
    *,
    begin: Intent | None = None,
    done: Sequence[str] = (),
    backfilled: frozenset[str] = frozenset(),
    fence: tuple[str, int] | None = None,
) -> None:
    """``backfilled``: the channels whose closing gaps are backfilled, requested in the same
    transaction that closes them so a crash cannot lose one. ``fence`` (account, epoch): the
    account's lease is checked in the same transaction, and a lost one (LeaseLost) writes nothing.
    A change that writes nothing opens no transaction (most passes of an account change nothing;
    on PostgreSQL each transaction is round trips)."""
    account = change.account
    if not (_writes(change) or begin is not None or done):
        return
    with store.transaction(fence=fence):
        _gaps(store, change, backfilled)
        _registry(store, change)
        if change.seen and change.seen_at is not None:
            store.mark_seen(account, change.seen, change.seen_at)
        if change.listed:
            store.clear_intents(account)
        if begin is not None:
            store.begin(account, begin.channel_ids, begin.method, begin.at)
        if done:
            store.done(account, done)


def _writes(change: Transition) -> bool:
    seen = bool(change.seen) and change.seen_at is not None
    return bool(change.entries or change.removed or change.opened or change.closed or seen) or (
        change.listed
    )


def _gaps(store: Store, change: Transition, backfilled: frozenset[str]) -> None:
    for opened in change.opened:
        store.open_gap(change.account, opened.channel_id, opened.start, opened.cause)
    for closed in change.closed:
        gap = store.close_gap(change.account, closed.channel_id, closed.end)
        if gap is not None and closed.channel_id in backfilled:
            store.request_backfill([gap.id], closed.end)


def _registry(store: Store, change: Transition) -> None:
    """The changed entries, grouped by their renewal instant (one statement per group), and the
    removed ones with their deletion confirmations."""
    by_renewal: dict[datetime | None, list[RegistryEntry]] = {}
    for channel_id, entry in change.entries.items():
        by_renewal.setdefault(change.renewed_at.get(channel_id), []).append(entry)
    for renewed_at, entries in by_renewal.items():
        store.put_many(entries, last_renewed_at=renewed_at)
    for channel_id in change.removed:
        store.remove(change.account, channel_id)
    if change.removed:
        store.clear_confirmations([(change.account, cid) for cid in change.removed])
