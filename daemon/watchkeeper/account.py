"""One account's share of a pass, as one straight line: observe (the listing, when due) -> the
ledger -> commit -> plan -> then for each request: send -> interpret -> commit, a slice at a time.

The decisions are pure (ledger, planner, outcome); this module only moves their results between
Zoho, the store and the logs. Each commit is one transaction, made before the next call goes out,
so a crash at any point leaves a state the next pass repairs. Under leases (several instances)
every commit is fenced by the account's lease, and no call starts within its margin of its end.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from watchkeeper import backfill_plan, outcome, planner, policy
from watchkeeper.config import DesiredState
from watchkeeper.leasing import Leasing
from watchkeeper.model import ObservedChannel, RegistryEntry, WatchItem
from watchkeeper.outcome import Transition
from watchkeeper.planner import Action, Method, Plan
from watchkeeper.policy import Policy
from watchkeeper.recorder import Intent, record
from watchkeeper.report import PassReport
from watchkeeper.store import Store
from watchkeeper.units import Key, Memory, Unit
from watchkeeper.zoho.errors import ZohoError
from watchkeeper.zoho.results import CallResult

Listing = dict[str, ObservedChannel]

REQUEST_SLICE = 500
"""Channels of a request sent and recorded at a time (five of the client's chunks): what a pass
holds of a request at once (bodies, answers, entries, log lines) is bounded by it, not by the
account's size. A first pass creating 10,000 channels in one go held them all, and the heap it
grew to stayed the daemon's (idle RSS 110.5 -> 102.8 MB)."""


@dataclass
class Shell:
    """What every account's pass shares: the edges, the hooks and the stop flag."""

    store: Store
    clock: Callable[[], datetime]
    rng: random.Random
    policy: Policy
    log: Any
    leasing: Leasing | None = None
    """Set when several instances share the database: accounts are then served under leases."""
    stopping: bool = False
    """Set from another thread on SIGTERM: the pass makes no further call."""
    on_commit: Callable[[Transition, Sequence[Action]], None] | None = None
    """Told of every recorded change and the requests it answers (the metrics counters)."""

    def serves(self, unit: Unit) -> bool:
        return self.leasing is None or self.leasing.serves(unit)

    def fence(self, unit: Unit) -> tuple[str, int] | None:
        return None if self.leasing is None else self.leasing.fence(unit)

    def may_call(self, unit: Unit, now: datetime) -> bool:
        """No call once a stop was asked for (SIGTERM finishes the call in flight, not the pass),
        nor to an account paused by a 429 or bad credentials, nor (several instances) without its
        lease or within the lease's margin of its end, on the clock as it is now."""
        if self.stopping or unit.paused(now):
            return False
        return self.leasing is None or self.leasing.may_call(unit)


class AccountPass:
    """One account, one pass, its own report: accounts run concurrently, each one's calls in order."""

    def __init__(self, shell: Shell, unit: Unit, now: datetime, report: PassReport) -> None:
        self.shell, self.unit, self.now, self.report = shell, unit, now, report

    def run(self, lists: bool) -> None:
        unit, shell = self.unit, self.shell
        outage_over = unit.list_failures > 0  # its listings failed: one that answers ends it
        listing = self._list() if lists and shell.may_call(unit, self.now) else None
        self.commit(self._observed(listing, outage_over))
        zoho_now = self.now + unit.client.skew
        view = unit.view(listing, zoho_now, shell.policy)
        actions = planner.plan_account(view, zoho_now, shell.policy)
        self.commit(outcome.planned(self.situation(), actions, sorted(unit.refused)))
        batches = planner.batches(actions)
        while batches and shell.may_call(unit, self.now):
            method, batch = batches.pop(0)
            recreate = self._act(method, batch)
            if recreate:
                batches.append(("POST", recreate))

    def situation(
        self, last_seen: Mapping[str, datetime | None] | None = None, now: datetime | None = None
    ) -> outcome.Situation:
        """``now`` is when an answer came, for the pauses and retries that count from it (a
        Retry-After counts from the 429, not from the start of the pass)."""
        when = self.now if now is None else now
        return self.unit.situation(when, self.shell.policy, self.shell.rng, last_seen)

    def _stopped(self) -> bool:
        """Asked before each chunk and around each retry's wait: a stop, or a lease near its end,
        sends nothing more."""
        return not self.shell.may_call(self.unit, self.now)

    def _list(self) -> Listing | None:
        unit, now, tuning = self.unit, self.now, self.shell.policy
        rows = unit.tally_rows(now)
        try:
            if unit.list_failures:  # while Zoho fails, one small page; once it answers, all of them
                unit.client.probe()
            tallied = rows is not None and unit.client.tally(rows, should_stop=self._stopped)
            counted = None if tallied else unit.client.list_counted(should_stop=self._stopped)
        except ZohoError as exc:
            failed_at = self.shell.clock()
            self.report.list_failed.append(unit.name)
            unit.failed_listing(failed_at, tuning, self.shell.rng)
            situation = self.situation(now=failed_at)
            self.commit(outcome.listing_failed(situation, exc, unit.next_listing))
            return None
        unit.list_failures = 0
        unit.next_listing = policy.next_reconcile(now, unit.every, tuning, self.shell.rng)
        unit.touch()
        if counted is None:  # the count stands: nothing vanished or appeared since the last listing
            return None
        listed, rows = counted
        unit.listed_in_full(now, rows, tuning)
        # Zoho's time is taken after the listing: a freshly started engine learns the skew from
        # its Date header, and a channel that expired less than the skew ago is expired, not gone.
        live = live_only(listed, now + unit.client.skew)
        unit.listed = frozenset(live)
        self._record_foreign(live)
        return live

    def _observed(self, listing: Listing | None, outage_over: bool) -> Transition:
        unit = self.unit
        zoho_now = self.now + unit.client.skew
        last_seen = {}
        expired: set[str] = set()
        if listing is not None:  # where a vanished channel's gap starts
            for cid, e in unit.entries.items():
                live = e.expires_at is not None and e.expires_at > zoho_now
                if live and e.lapsed_since is None and cid not in listing:
                    last_seen[cid] = self.shell.store.last_seen(unit.name, cid)
        else:
            expired = unit.expired(zoho_now, self.shell.policy)
        situation = self.situation(last_seen)
        return outcome.observed(
            situation, listing, unit.watched(), expired=expired, outage_over=outage_over
        )

    def _act(self, method: Method, actions: list[Action]) -> list[Action]:
        """One request: journalled whole, then sent and its answer recorded a slice at a time (the
        client sends each in chunks of 100). Returns what must be re-created because Zoho no
        longer has it."""
        ids = [a.channel_id for a in actions]
        requested_at = self.unit.client.server_now()
        self.commit(outcome.sending(self.situation(), actions), begin=Intent(method, ids, requested_at))
        recreate: list[Action] = []
        done = 0
        while done < len(actions):
            change, recorded = self._send(method, actions[done:], requested_at)
            recreate += change.recreate
            done += recorded
        return recreate

    def _send(
        self, method: Method, actions: list[Action], requested_at: datetime
    ) -> tuple[Transition, int]:
        """The first REQUEST_SLICE of ``actions`` sent and recorded; returns the change and how
        many of ``actions`` it recorded. A slice that fails or is stopped records all the rest
        with it, as one request would: unsettled together (one backoff) after a failure, unsent
        after a stop."""
        client, store = self.unit.client, self.shell.store
        part = actions[:REQUEST_SLICE]
        items = [] if method == "DELETE" else _items(part, requested_at)
        stop = self._stopped
        if method == "DELETE":
            answer = _call(lambda: client.delete([a.channel_id for a in part], should_stop=stop))
        else:
            answer = _call(lambda: client.write(method, items, should_stop=stop))
        if answer.error is not None or answer.unsent:
            rest = actions[len(part) :]
            unsent = answer.unsent + tuple(a.channel_id for a in rest)
            answer = replace(answer, unsent=unsent) if answer.unsent else answer
            part = actions
            items = items + ([] if method == "DELETE" else _items(rest, requested_at))
        ids = [a.channel_id for a in part]
        change: Transition
        if method == "DELETE":
            change = outcome.deleted(self.situation(now=self.shell.clock()), answer, ids)
        else:
            request = outcome.Request(method, part, items)
            gone = [r.channel_id for r in answer.results if r.not_found]  # where their gaps start
            last_seen = {cid: store.last_seen(self.unit.name, cid) for cid in gone}
            answered = self.situation(last_seen, now=self.shell.clock())
            change = outcome.written(answered, request, answer, client.server_now())
        self.commit(change, begin=None, done=ids, actions=part)
        return change, len(part)

    def commit(
        self,
        change: Transition,
        *,
        begin: Intent | None = None,
        done: Sequence[str] = (),
        actions: Sequence[Action] = (),
    ) -> None:
        """Record in one transaction (fenced by the unit's lease), then let the memory, the logs and
        the metrics follow."""
        unit, shell = self.unit, self.shell
        fence = shell.fence(unit)
        record(shell.store, change, begin=begin, done=done, backfilled=unit.backfilled, fence=fence)
        for closed in change.closed:
            if closed.channel_id in unit.backfilled:
                ready = backfill_plan.Window(closed.start, closed.end).end - unit.client.skew
                unit.backfill_at = ready if unit.backfill_at is None else min(unit.backfill_at, ready)
        unit.record(change.entries, change.removed)
        if change.pause_until is not None:
            unit.paused_until = change.pause_until
        if change.list_soon:
            unit.next_listing = min(unit.next_listing, shell.clock())
        unit.add_rows(change.rows_added)
        self.report.counts.update(change.counts)
        self.report.failed += change.failed
        for event in change.events:
            getattr(shell.log, event.level)(event.event, **event.fields)
        if shell.on_commit is not None:
            shell.on_commit(change, actions)

    def _record_foreign(self, listing: Listing) -> None:
        unit = self.unit
        foreign = [
            ch for c, ch in sorted(listing.items()) if c not in unit.entries and c not in unit.desired
        ]
        with self.shell.store.transaction(fence=self.shell.fence(unit)):
            self.shell.store.set_foreign(unit.name, foreign)
        self.report.foreign += len(foreign)
        for channel in foreign:
            if channel.channel_id not in unit.foreign_seen:
                unit.foreign_seen.add(channel.channel_id)
                self.shell.log.info(
                    "channel.foreign",
                    account=unit.name,
                    channel_id=channel.channel_id,
                    modules=channel.modules,
                )


def preview(memory: Memory, state: DesiredState, shell: Shell, now: datetime) -> Plan:
    """What a pass would do now (``watchkeeper plan``): every account listed, the ledger and the
    planner run, nothing written and nothing sent. Raises on the first listing that fails."""
    observed: dict[str, Mapping[str, ObservedChannel] | None] = {}
    registry: dict[Key, RegistryEntry] = {}
    for unit in memory.active(state):
        listing = live_only(unit.client.list(), now + unit.client.skew)
        situation = unit.situation(now, shell.policy, shell.rng)
        seen = outcome.observed(situation, listing, unit.watched())
        observed[unit.name] = listing
        registry.update(((unit.name, c), e) for c, e in (unit.entries | seen.entries).items())
    holds = planner.Holds(
        shell.store.confirmed_deletes().difference(memory.desired),
        {(u.name, c): s for u in memory.units.values() for c, s in u.retained.items()},
    )
    return planner.plan(state.channels, observed, registry, now + memory.skew(), shell.policy, holds)


def live_only(listing: Listing, zoho_now: datetime) -> Listing:
    """An expired row is not a live channel, whether or not Zoho still lists it."""
    return {cid: ch for cid, ch in listing.items() if ch.expires_at > zoho_now}


def _items(actions: Sequence[Action], requested_at: datetime) -> list[WatchItem]:
    """What a write sends: each spec with the expiry asked for, counted from the request's time."""
    return [WatchItem(a.spec, requested_at + a.spec.ttl) for a in actions if a.spec]


def _call(send: Callable[[], CallResult]) -> CallResult:
    try:
        return send()
    except ZohoError as exc:  # refused locally, before anything was sent
        return CallResult((), exc)
