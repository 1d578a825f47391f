"""The engine's memory: one Unit per account, the unit of work that section 8 leases.

A unit holds what its account's passes need and nothing of any other account: its client, its
slice of the registry, its listing schedule and pause, its desired channels indexed once per load,
and its channels indexed by when the planner next needs them. So a pass over an account without a
listing costs what is due in it, and ``next_due`` costs O(accounts) in all.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from watchkeeper import outcome, planner, policy
from watchkeeper.config import AccountSpec, DesiredState
from watchkeeper.dueindex import SLACK, DueIndex, Item
from watchkeeper.leases import Held
from watchkeeper.model import ChannelSpec, ObservedChannel, RegistryEntry
from watchkeeper.outcome import Situation
from watchkeeper.planner import AccountView, Refusal
from watchkeeper.policy import Policy
from watchkeeper.zoho.client import PER_PAGE, WatchClient

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Census:
    """What an account owns, as ``STATUS=``, ``reconcile.finished`` and the deletion guards count
    it: its desired channels by state and their earliest renewal time (Zoho's clock), how many
    channels it owns in all, and the owned ones no longer desired."""

    states: Counter[str] = field(default_factory=Counter)
    renew_at: datetime | None = None
    owned: int = 0
    undesired: frozenset[Key] = frozenset()

    def __add__(self, other: Census) -> Census:
        times = [t for t in (self.renew_at, other.renew_at) if t is not None]
        return Census(
            self.states + other.states,
            min(times, default=None),
            self.owned + other.owned,
            self.undesired | other.undesired,
        )


class RunningCensus:
    """An account's census (states as stored, not derived from the clock, so it stays true until
    an entry or the desired set changes), kept up to date change by change from one count: the
    guards and the status line read it after every pass, and recounting an account of 10,000
    channels after each pass that changed one was O(channels). Valid while the desired set and the
    registry slice it was made from are the unit's (a reindex or reload makes a new one)."""

    def __init__(
        self, account: str, entries: Mapping[str, RegistryEntry], desired: Collection[str]
    ) -> None:
        self._account, self._entries, self._desired = account, entries, desired
        self._states = Counter[str](e.state for c, e in entries.items() if c in desired)
        self._undesired = {c for c in entries if c not in desired}
        self._renewals: list[Item] = []
        """The renewal times of the desired entries, as last seen (a lazy heap, as the index's)."""
        for channel_id, entry in entries.items():
            self._push(channel_id, entry)
        self._counted: Census | None = None

    def change(self, channel_id: str, old: RegistryEntry | None, new: RegistryEntry | None) -> None:
        """``channel_id``'s entry went from ``old`` to ``new`` (None: absent)."""
        if channel_id not in self._desired:
            if (new is None) != (old is None):
                self._undesired.symmetric_difference_update({channel_id})
                self._counted = None
            return
        if old is not None:
            self._states[old.state] -= 1
        if new is not None:
            self._states[new.state] += 1
            self._push(channel_id, new)
        self._counted = None

    def census(self) -> Census:
        """O(1) when nothing changed; else O(the renewals superseded + the undesired)."""
        if self._counted is None:
            if len(self._renewals) > 2 * len(self._entries) + SLACK:  # mostly superseded
                self._renewals = []
                for channel_id, entry in self._entries.items():
                    self._push(channel_id, entry)
            heap = self._renewals
            while heap and self._entries.get(heap[0].channel_id) is not heap[0].entry:
                heapq.heappop(heap)
            self._counted = Census(
                +self._states,
                heap[0].at if heap else None,
                len(self._entries),
                frozenset((self._account, c) for c in self._undesired),
            )
        return self._counted

    def _push(self, channel_id: str, entry: RegistryEntry) -> None:
        if entry.renew_at is not None and channel_id in self._desired:
            heapq.heappush(self._renewals, Item(entry.renew_at, channel_id, entry))


@dataclass
class Unit:
    name: str
    client: WatchClient
    entries: dict[str, RegistryEntry]
    next_listing: datetime
    every: timedelta = Policy().reconcile_every
    """How often the account is looked at (``DesiredState.reconcile_every``), set on ``adopt``."""
    list_failures: int = 0
    paused_until: datetime | None = None
    """Our clock: no request of the account goes out before (429, bad credentials)."""
    listed: frozenset[str] | None = None
    """Channel ids live in the latest successful listing."""
    rows: int | None = None
    """Rows (one per channel and module) of the account's latest full listing, while nothing
    written since can have moved their count; None: its next look is a full listing."""
    full_due: datetime | None = None
    """Our clock: when its next full listing is due, whatever the tallies say."""
    foreign_seen: set[str] = field(default_factory=set)
    desired: dict[str, ChannelSpec] = field(default_factory=dict)
    names: dict[str, str | None] = field(default_factory=dict)
    """Every channel name this process was given for the account (logs name gone channels too)."""
    refused: frozenset[str] = frozenset()
    """Owned channels whose deletion a guard holds back: watched for lapses."""
    retained: dict[str, ChannelSpec] = field(default_factory=dict)
    """The refused ones there is a spec for, renewed like desired ones."""
    backfill_at: datetime | None = None
    """Our clock: when the account's backfill next has something to do (None: nothing pending)."""
    backfilled: frozenset[str] = frozenset()
    """Desired channels with ``backfill = true``: a closing gap of one requests its backfill."""
    due_at: datetime | None = None
    """``next_due`` as last computed, None once anything it depends on changed: an idle tick
    costs O(accounts), not O(channels)."""
    lease: Held | None = None
    """Several instances on PostgreSQL: this instance's lease of the account, without which the
    engine neither calls Zoho for it nor writes its rows (unused on SQLite, where one instance
    serves every account)."""
    counted: RunningCensus | None = None
    """Its census, kept up to date by ``record``; None after a ``reindex`` (counted again on next
    use): the status line sent after every pass costs O(accounts) on an idle tick, and a
    pass O(what it changed), not O(channels)."""
    index: DueIndex | None = None
    """Its channels by ``planner.due``; None once the desired set, the refusals or the policy
    changed (rebuilt on next use)."""
    watching: frozenset[str] | None = None
    """``watched`` as last computed; None after a ``reindex``."""
    changed: set[str] = field(default_factory=set)
    """Channels whose entry changed since the index last took them in, as it does on its next use:
    the several answers a pass records for a channel cost the index one item, not one each."""

    def paused(self, now: datetime) -> bool:
        return self.paused_until is not None and self.paused_until > now

    def watched(self) -> frozenset[str]:
        """Channels whose lapses go to the ledger: desired, or refused deletion (kept alive with a
        spec or not). Cached until ``reindex``: every pass asks."""
        if self.watching is None:
            self.watching = frozenset(self.desired.keys() | self.retained.keys()) | self.refused
        return self.watching

    def situation(
        self,
        now: datetime,
        tuning: Policy,
        rng: random.Random,
        last_seen: Mapping[str, datetime | None] | None = None,
    ) -> Situation:
        skew = self.client.skew
        seen = last_seen or {}
        return Situation(self.name, self.entries, now, skew, tuning, rng, self.names, self.listed, seen)

    def next_due(self, now: datetime, tuning: Policy) -> datetime:
        """Our-clock instant of the account's next work: its listing or its earliest channel, not
        before its pause ends. A channel refused deletion without a spec is left out: its past
        renew_at would make every instant due.

        Cached until ``touch``: every term is an absolute instant, except "now" for what is due
        already, which stays due as time moves on."""
        if self.due_at is None:
            skew = self.client.skew
            act = self.schedule(tuning).next_act()
            due = self.next_listing
            if act is not None:
                due = min(due, max(act, now + skew) - skew)
            self.due_at = due if self.paused_until is None else max(due, self.paused_until)
        return self.due_at

    def view(
        self, listing: Mapping[str, ObservedChannel] | None, zoho_now: datetime, tuning: Policy
    ) -> AccountView:
        """What the planner gets: without a listing, only the channels due by ``zoho_now``."""
        due = self.schedule(tuning).due(zoho_now) if listing is None else None
        return AccountView(
            self.name, self.desired, listing, self.entries, self.refused, self.retained, due
        )

    def schedule(self, tuning: Policy) -> DueIndex:
        """The index, brought up to date with the entries changed since its last use."""
        if self.index is not None:
            self._place([c for c in self.changed if c in self.entries], tuning)
            if self.index.grown():
                self.index = None
        self.changed.clear()
        if self.index is None:
            self.index = DueIndex(self.entries)
            self._place(self.entries, tuning)
        return self.index

    def record(self, changed: Mapping[str, RegistryEntry], removed: Collection[str]) -> None:
        """The entries an answer changed and removed, into the registry slice (and, on its next
        use, the index)."""
        counted = self.counted
        for channel_id, entry in changed.items():
            if counted is not None:
                counted.change(channel_id, self.entries.get(channel_id), entry)
            self.entries[channel_id] = entry
        for channel_id in removed:
            old = self.entries.pop(channel_id, None)
            if counted is not None and old is not None:
                counted.change(channel_id, old, None)
        if self.index is not None:
            self.changed.update(changed)
            for channel_id in removed:
                self.index.forget(channel_id)
        self.touch()

    def reload(self, entries: dict[str, RegistryEntry]) -> None:
        """The registry slice as the store has it."""
        self.entries = entries
        self.reindex()

    def reindex(self) -> None:
        """The desired set, the refusals or the policy changed: every channel's ``Due`` may have."""
        self.index = None
        self.watching = None
        self.counted = None
        self.touch()

    def _place(self, channel_ids: Iterable[str], tuning: Policy) -> None:
        assert self.index is not None
        view = AccountView(self.name, self.desired, None, self.entries, self.refused, self.retained)
        for channel_id in channel_ids:
            entry = self.entries[channel_id]
            self.index.put_expiry(channel_id, entry)
            spec = planner.kept_spec(view, channel_id)
            if spec is not None:
                self.index.put(channel_id, entry, planner.due(spec, entry, tuning))
            elif channel_id not in self.refused:
                self.index.put_orphan(channel_id)

    def expired(self, zoho_now: datetime, tuning: Policy) -> set[str]:
        """Channels not lapsed whose expiry has come by ``zoho_now``: what a pass without a listing
        asks the ledger about."""
        return self.schedule(tuning).expired(zoho_now)

    def census(self) -> Census:
        if self.counted is None:
            self.counted = RunningCensus(self.name, self.entries, self.desired)
        return self.counted.census()

    def touch(self) -> None:
        """Something ``next_due`` depends on changed."""
        self.due_at = None

    def tally_rows(self, now: datetime) -> int | None:
        """The row count the account's look at ``now`` checks with one page (policy.tallies);
        None: a full listing (also while its listings fail: the probe, then all of it)."""
        if self.list_failures or not policy.tallies(self.rows, PER_PAGE, now, self.full_due):
            return None
        return self.rows

    def listed_in_full(self, now: datetime, rows: int, tuning: Policy) -> None:
        """Zoho answered a full listing: its row count is what the tallies check until the next
        one, due ``full_listing_every`` from now."""
        self.rows = rows
        self.full_due = now + tuning.full_listing_every

    def add_rows(self, added: int | None) -> None:
        """What the daemon's own write did to the row count (None: unknown, list in full)."""
        self.rows = None if self.rows is None or added is None else self.rows + added

    def failed_listing(self, now: datetime, tuning: Policy, rng: random.Random) -> None:
        self.list_failures += 1
        self.next_listing = policy.listing_retry(now, self.list_failures, self.every, tuning, rng)
        self.touch()


@dataclass(frozen=True)
class Specs(Mapping[str, ChannelSpec]):
    """Every spec this process knows for a unit's channels, the state file's first, then the held
    back ones', then any it was given before: a backfill needs the channel's notify_url and token,
    which the store never keeps whole. Looked up, not copied: a backfill step asks for the few
    channels it serves, and copying every known spec made each step cost O(channels)."""

    unit: Unit
    known: Mapping[Key, ChannelSpec]

    def __getitem__(self, channel_id: str) -> ChannelSpec:
        for specs in (self.unit.desired, self.unit.retained):
            if channel_id in specs:
                return specs[channel_id]
        return self.known[(self.unit.name, channel_id)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids())

    def __len__(self) -> int:
        return len(self._ids())

    def _ids(self) -> set[str]:
        mine = {c for a, c in self.known if a == self.unit.name}
        return mine | self.unit.desired.keys() | self.unit.retained.keys()


@dataclass
class Memory:
    """Everything the engine remembers between passes."""

    units: dict[str, Unit]
    known: dict[Key, ChannelSpec] = field(default_factory=dict)
    """Every spec this process was given: what keeps a channel alive whose deletion a guard
    refused (the state file no longer describes it, and the store never keeps tokens)."""
    desired: frozenset[Key] = frozenset()

    @classmethod
    def build(
        cls,
        registry: Mapping[Key, RegistryEntry],
        clients: Mapping[str, WatchClient],
        now: datetime,
    ) -> Memory:
        """Units of the accounts there is a client for; owned channels of an account no longer
        configured anywhere have no client to act with and are left alone."""
        units = {name: Unit(name, client, {}, now) for name, client in clients.items()}
        for (account, channel_id), entry in registry.items():
            if account in units:
                units[account].entries[channel_id] = entry
        return cls(units)

    def connect(
        self,
        old: DesiredState,
        new: DesiredState,
        connect: Callable[[AccountSpec], WatchClient],
        now: datetime,
    ) -> None:
        """A new client for every account that is new or changed (region, version, credentials);
        an account that is gone keeps its client, so that its channels can still be deleted."""
        for name, account in new.accounts.items():
            before = old.accounts.get(name)
            if before is not None and before.same_client(account):
                continue
            client = connect(account)
            if name in self.units:
                self.units[name].client = client
            else:
                self.units[name] = Unit(name, client, {}, now)

    def adopt(self, state: DesiredState) -> None:
        """Index the desired channels by account, once per load rather than once per pass, and set
        each account's look interval (a gone account's is ``[daemon]``'s)."""
        keyed = {(c.account, c.channel_id): c for c in state.channels}
        self.known.update(keyed)
        self.desired = frozenset(keyed)  # the same key tuples as ``known``'s new ones
        for unit in self.units.values():
            unit.desired = {}
            unit.every = state.reconcile_every(unit.name)
        for spec in state.channels:
            if spec.account in self.units:
                self.units[spec.account].desired[spec.channel_id] = spec
        for unit in self.units.values():
            unit.backfilled = frozenset(c for c, s in unit.desired.items() if s.backfill)
            unit.reindex()  # once the desired set is whole: what is cached is counted from it
        for (account, channel_id), spec in self.known.items():
            if account in self.units:
                self.units[account].names[channel_id] = spec.name

    def reset(self, registry: Mapping[Key, RegistryEntry], now: datetime) -> None:
        """After a reload: the registry as the store has it, no pause (the token server's
        included), every account listed."""
        for unit in self.units.values():
            unit.reload({cid: e for (acc, cid), e in registry.items() if acc == unit.name})
            unit.paused_until = None
            unit.next_listing = now
            unit.rows = None  # listed in full: the reload may change what the account holds
            unit.client.clear_block()

    def hold_back(self, refused: Iterable[Refusal]) -> None:
        """What the guards refuse to delete stays owned, kept alive with the last spec known. A unit
        is touched only when what it holds back changed: every pass runs the guards, and touching
        every unit each time had each backfill step recount every channel."""
        keys = planner.refused_keys(refused)
        for unit in self.units.values():
            held = frozenset(c for a, c in keys if a == unit.name and c in unit.entries)
            retained = {}
            for channel_id in held:
                known = self.known.get((unit.name, channel_id))
                spec = outcome.spec_for_retained(unit.entries[channel_id], known)
                if spec is not None:
                    retained[channel_id] = spec
            if (held, retained) != (unit.refused, unit.retained):
                unit.refused, unit.retained = held, retained
                unit.reindex()

    def active(self, state: DesiredState) -> Iterator[Unit]:
        """Units of the state's accounts, plus gone accounts that still own channels to delete."""
        return (u for name, u in self.units.items() if name in state.accounts or u.entries)

    def census(self) -> Census:
        """Every account's census, summed."""
        return sum((unit.census() for unit in self.units.values()), Census())

    def guard(self, tuning: Policy, confirmed: frozenset[Key]) -> tuple[Refusal, ...]:
        """``planner.guard`` of the desired set against the registry, from the units' cached
        censuses: every pass runs it, and it cost a pass O(channels)."""
        counted = self.census()
        undesired = sorted(counted.undesired)
        return planner.guard_undesired(undesired, counted.owned, len(self.desired), tuning, confirmed)

    def specs(self, unit: Unit) -> Specs:
        return Specs(unit, self.known)

    def registry(self) -> dict[Key, RegistryEntry]:
        return {(u.name, cid): e for u in self.units.values() for cid, e in u.entries.items()}

    def skew(self) -> timedelta:
        """Zoho's clock minus ours: the median over the accounts' measurements."""
        skews = sorted(unit.client.skew for unit in self.units.values())
        return skews[len(skews) // 2] if skews else timedelta(0)
