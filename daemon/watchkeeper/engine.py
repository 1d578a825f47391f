"""The thin loop that runs observe -> decide -> act -> record, one account at a time.

Per account, a pass reads as one straight line: observe (the listing, when due) -> the ledger ->
commit -> plan -> then for each request: send -> interpret -> commit. The decisions are pure
(ledger, planner, outcome); this module only moves their results between Zoho, the store and the
logs. Each commit is one transaction, made before the next call goes out, so a crash at any point
leaves a state the next pass repairs.

An account's schedule, pause, client and slice of the registry form one Unit: the unit of work
that several instances lease (DESIGN.md section 8).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from watchkeeper import logs, outcome, planner, policy
from watchkeeper.config import AccountSpec, DesiredState
from watchkeeper.model import ChannelSpec, ObservedChannel, RegistryEntry, WatchItem
from watchkeeper.outcome import Situation, Transition
from watchkeeper.planner import Action, Method, Plan, Refusal
from watchkeeper.store import Store
from watchkeeper.zoho.client import WatchClient
from watchkeeper.zoho.errors import ZohoError
from watchkeeper.zoho.results import CallResult

Key = tuple[str, str]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class PassReport:
    """What one pass did: the fields of the ``reconcile.finished`` log event."""

    listed: bool = False
    desired: int = 0
    active: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    foreign: int = 0
    refused: list[Refusal] = field(default_factory=list)
    list_failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.refused and not self.list_failed


@dataclass
class Unit:
    """One account: its client, its slice of the registry and its own schedule."""

    name: str
    client: WatchClient
    entries: dict[str, RegistryEntry]
    next_listing: datetime
    list_failures: int = 0
    paused_until: datetime | None = None
    """Our clock: no request of the account goes out before (429, bad credentials)."""
    listed: frozenset[str] | None = None
    """Channel ids live in the latest successful listing."""
    foreign_seen: set[str] = field(default_factory=set)
    desired: dict[str, ChannelSpec] = field(default_factory=dict)
    names: dict[str, str | None] = field(default_factory=dict)
    """Every channel name this process was given for the account (logs name gone channels too)."""
    refused: frozenset[str] = frozenset()
    """Owned channels whose deletion a guard holds back: watched for lapses."""
    retained: dict[str, ChannelSpec] = field(default_factory=dict)
    """The refused ones there is a spec for, renewed like desired ones."""

    def paused(self, now: datetime) -> bool:
        return self.paused_until is not None and self.paused_until > now

    def kept(self) -> set[str]:
        """Channels the engine renews: desired, or kept alive while their deletion is refused."""
        return self.desired.keys() | self.retained.keys()

    def watched(self) -> frozenset[str]:
        """Channels whose lapses go to the ledger: kept, or refused deletion without a spec."""
        return frozenset(self.kept()) | self.refused


@dataclass
class Memory:
    """Everything the engine remembers between passes."""

    units: dict[str, Unit]
    known: dict[Key, ChannelSpec]
    """Every spec this process was given: what keeps a channel alive whose deletion a guard
    refused (the state file no longer describes it, and the store never keeps tokens)."""
    desired: frozenset[Key] = frozenset()


class Engine:
    def __init__(
        self,
        state: DesiredState,
        store: Store,
        clients: Mapping[str, WatchClient],
        *,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        connect: Callable[[AccountSpec], WatchClient] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = logs.get_logger()
        self._connect = connect
        """Builds the client of an account that a reload adds or changes."""
        self.stopping = False
        """Set from another thread on SIGTERM: the pass makes no further call."""
        self._state = state
        now = clock()
        units: dict[str, Unit] = {}
        for (account, channel_id), entry in store.registry().items():
            units.setdefault(account, Unit(account, clients[account], {}, now))
            units[account].entries[channel_id] = entry
        for account, client in clients.items():
            units.setdefault(account, Unit(account, client, {}, now))
        self.memory = Memory(units, {})
        self._adopt_state(state)
        intents = store.pending_intents()
        if intents:
            self.log.warning("engine.interrupted", calls=len(intents), note="listing before any change")

    # -- views ---------------------------------------------------------------------------------------

    @property
    def state(self) -> DesiredState:
        return self._state

    @property
    def registry(self) -> dict[Key, RegistryEntry]:
        return {(u.name, cid): e for u in self.memory.units.values() for cid, e in u.entries.items()}

    @property
    def clients(self) -> dict[str, WatchClient]:
        return {name: unit.client for name, unit in self.memory.units.items()}

    @property
    def skew(self) -> timedelta:
        """Zoho's clock minus ours: the median over the accounts' measurements."""
        skews = sorted(unit.client.skew for unit in self.memory.units.values())
        return skews[len(skews) // 2] if skews else timedelta(0)

    @property
    def next_reconcile(self) -> datetime:
        """The earliest listing due over the accounts."""
        return min(unit.next_listing for unit in self._active_units())

    @next_reconcile.setter
    def next_reconcile(self, at: datetime) -> None:
        for unit in self.memory.units.values():
            unit.next_listing = at

    def undesired(self) -> frozenset[Key]:
        """Owned channels the state file no longer wants: what ``--allow-mass-delete`` confirms."""
        return frozenset(k for k in self.registry if k not in self.memory.desired)

    # -- the calls everything else is built from ----------------------------------------------

    def next_due(self) -> datetime:
        """Our-clock instant at which something next needs doing."""
        now = self.clock()
        due = [now + timedelta(days=1)]
        for unit in self._active_units():
            skew = unit.client.skew
            kept = unit.kept()
            entries = (e for cid, e in unit.entries.items() if cid in kept)
            at = policy.next_due(entries, now + skew, self.state.policy)
            unit_due = min(unit.next_listing, at - skew) if at is not None else unit.next_listing
            if unit.paused_until is not None:
                unit_due = max(unit_due, unit.paused_until)
            due.append(unit_due)
        return min(due)

    def run_due(self, now: datetime | None = None) -> PassReport:
        now = now or self.clock()
        return self.run_pass(now, listing=None)

    def preview(self, now: datetime) -> Plan:
        """What a pass would do now (``watchkeeper plan``): every account listed, the ledger and the
        planner run, nothing written and nothing sent. Raises on the first listing that fails."""
        observed: dict[str, dict[str, ObservedChannel] | None] = {}
        registry: dict[Key, RegistryEntry] = {}
        confirmed = self.store.confirmed_deletes().difference(self.memory.desired)
        for unit in self._active_units():
            listing = unit.client.list()
            zoho_now = now + unit.client.skew
            observed[unit.name] = {c: ch for c, ch in listing.items() if ch.expires_at > zoho_now}
            seen = outcome.observed(self._situation(unit, now), observed[unit.name], {}, unit.watched())
            registry.update(((unit.name, c), e) for c, e in {**unit.entries, **seen.entries}.items())
        retained = {
            (unit.name, cid): spec
            for unit in self.memory.units.values()
            for cid, spec in unit.retained.items()
        }
        return planner.plan(
            list(self.state.channels),
            observed,
            registry,
            now + self.skew,
            self.state.policy,
            confirmed_deletes=confirmed,
            retained=retained,
        )

    def request_listing(self) -> None:
        """Every account lists on the next pass (a clock step makes the measured skew stale).
        Safe from another thread: it only moves the schedule earlier."""
        self.next_reconcile = self.clock()

    def reload(self, state: DesiredState) -> None:
        """A new desired state: retry what failed for good and reconcile at once.

        An account that is new or changed (region, version, credentials) gets a new client; one
        that is gone keeps its client, so that its channels can still be deleted."""
        now = self.clock()
        for name, account in state.accounts.items():
            if self.state.accounts.get(name) == account and name in self.memory.units:
                continue
            if self._connect is None:
                continue
            client = self._connect(account)
            if name in self.memory.units:
                self.memory.units[name].client = client
            else:
                self.memory.units[name] = Unit(name, client, {}, now)
        self._adopt_state(state)
        self.store.clear_retries()
        registry = self.store.registry()
        for unit in self.memory.units.values():
            unit.entries = {cid: e for (acc, cid), e in registry.items() if acc == unit.name}
            unit.paused_until = None
            unit.next_listing = now

    def _adopt_state(self, state: DesiredState) -> None:
        """Index the desired channels by account, once per load rather than once per pass."""
        self._state = state
        memory = self.memory
        memory.known.update({(c.account, c.channel_id): c for c in state.channels})
        memory.desired = frozenset((c.account, c.channel_id) for c in state.channels)
        units = memory.units
        for unit in units.values():
            unit.desired = {}
        for spec in state.channels:
            if spec.account in units:
                units[spec.account].desired[spec.channel_id] = spec
        for (account, channel_id), spec in memory.known.items():
            if account in units:
                units[account].names[channel_id] = spec.name

    # -- one pass ----------------------------------------------------------------------------------

    def run_pass(
        self, now: datetime, *, listing: bool | None, confirmed: frozenset[Key] = frozenset()
    ) -> PassReport:
        """Every account in turn; ``listing`` None lists the accounts whose listing is due."""
        report = PassReport(listed=bool(listing), desired=len(self.state.channels))
        self._hold_back(now, confirmed | self._confirmations(), report)
        for unit in self._active_units():
            lists = unit.next_listing <= now if listing is None else listing
            report.listed = report.listed or lists
            try:
                self._serve(unit, now, lists, report)
            except Exception as exc:  # one account's failure, of any kind, never stops the others
                self.log.exception("engine.account_failed", account=unit.name, error=repr(exc))
                report.failed += 1
                unit.list_failures += 1
                retry = policy.listing_retry(now, unit.list_failures, self.state.policy, self.rng)
                unit.next_listing = unit.paused_until = retry
        report.active = sum(
            1
            for unit in self.memory.units.values()
            for cid, e in unit.entries.items()
            if e.state == "active" and cid in unit.desired
        )
        self.log.info(
            "reconcile.finished",
            listed=report.listed,
            desired=report.desired,
            active=report.active,
            created=report.counts["create"],
            adopted=report.counts["adopt"],
            renewed=report.counts["renew"],
            repaired=report.counts["repair"],
            deleted=report.counts["delete"],
            failed=report.failed,
            foreign=report.foreign,
        )
        return report

    def _serve(self, unit: Unit, now: datetime, lists: bool, report: PassReport) -> None:
        """observe -> ledger -> commit -> plan -> (send -> interpret -> commit) per request."""
        listing = self._observe(unit, now, report) if lists and self._may_call(unit, now) else None
        self._commit(unit, self._observed(unit, now, listing), report)
        if listing is not None:
            self._report_foreign(unit, listing, report)
        actions = planner.plan_account(
            unit.name,
            list(unit.desired.values()),
            listing,
            unit.entries,
            now + unit.client.skew,
            self.state.policy,
            refused=unit.refused,
            retained=unit.retained,
        )
        at = self._situation(unit, now)
        self._commit(unit, outcome.planned(at, actions, sorted(unit.refused)), report)
        batches = planner.batches(actions)
        while batches and self._may_call(unit, now):
            method, batch = batches.pop(0)
            recreate = self._act(unit, method, batch, now, report)
            if recreate:
                batches.append(("POST", recreate))

    def _observe(
        self, unit: Unit, now: datetime, report: PassReport
    ) -> dict[str, ObservedChannel] | None:
        try:
            listed = unit.client.list()
        except ZohoError as exc:
            report.list_failed.append(unit.name)
            unit.list_failures += 1
            unit.next_listing = policy.listing_retry(
                now, unit.list_failures, self.state.policy, self.rng
            )
            failed = outcome.listing_failed(self._situation(unit, now), exc, unit.next_listing)
            self._commit(unit, failed, report)
            return None
        unit.list_failures = 0
        unit.next_listing = policy.next_reconcile(now, self.state.policy, self.rng)
        # Zoho's time is taken after the listing: a freshly started engine learns the skew from
        # its Date header, and a channel that expired less than the skew ago must be judged
        # expired, not vanished. An expired row is not a live channel, listed or not.
        zoho_now = now + unit.client.skew
        live = {cid: ch for cid, ch in listed.items() if ch.expires_at > zoho_now}
        unit.listed = frozenset(live)
        return live

    def _observed(
        self, unit: Unit, now: datetime, listing: dict[str, ObservedChannel] | None
    ) -> Transition:
        at = self._situation(unit, now)
        zoho_now = at.zoho_now
        candidates = [
            cid
            for cid, e in unit.entries.items()
            if e.lapsed_since is None
            and e.expires_at is not None
            and e.expires_at > zoho_now
            and listing is not None
            and cid not in listing
        ]
        last_seen = {cid: self.store.last_seen(unit.name, cid) for cid in candidates}
        return outcome.observed(at, listing, last_seen, unit.watched())

    def _act(
        self, unit: Unit, method: Method, actions: list[Action], now: datetime, report: PassReport
    ) -> list[Action]:
        """One request (in chunks of 100): journal, send, interpret, record. Returns what must be
        re-created because Zoho no longer has it."""
        at = self._situation(unit, now)
        ids = [a.channel_id for a in actions]
        requested_at = unit.client.server_now()
        self._commit(unit, outcome.sending(at, actions), report, begin=(method, ids, requested_at))
        stop = self._stop_requested
        if method == "DELETE":
            answer = self._call(lambda: unit.client.delete_ids(ids, should_stop=stop))
            self._commit(
                unit,
                outcome.deleted(self._situation(unit, now), answer, ids, self.rng),
                report,
                done=ids,
            )
            return []
        items = [WatchItem(a.spec, requested_at + a.spec.ttl) for a in actions if a.spec is not None]
        answer = self._call(lambda: unit.client.write(method, items, should_stop=stop))
        last_seen = {cid: self.store.last_seen(unit.name, cid) for cid in ids}
        result = outcome.written(
            self._situation(unit, now),
            method,
            actions,
            items,
            answer,
            unit.client.server_now(),
            last_seen,
            self.rng,
        )
        self._commit(unit, result, report, done=ids)
        return result.recreate

    @staticmethod
    def _call(send: Callable[[], CallResult]) -> CallResult:
        try:
            return send()
        except ZohoError as exc:  # refused locally, before anything was sent
            return CallResult((), exc)

    def _commit(
        self,
        unit: Unit,
        change: Transition,
        report: PassReport,
        *,
        begin: tuple[str, list[str], datetime] | None = None,
        done: list[str] | None = None,
    ) -> None:
        """Record a transition in one transaction, then tell the logs; the memory follows the
        store only once the store has it."""
        account = unit.name
        with self.store.transaction():
            for opened in change.opened:
                self.store.open_gap(account, opened.channel_id, opened.start, opened.cause)
            for closed in change.closed:
                self.store.close_gap(account, closed.channel_id, closed.end)
            renewed: dict[datetime | None, list[RegistryEntry]] = {}
            for cid, entry in change.entries.items():
                renewed.setdefault(change.renewed_at.get(cid), []).append(entry)
            for at, entries in renewed.items():
                self.store.put_many(entries, last_renewed_at=at)
            for cid in change.removed:
                self.store.remove(account, cid)
            if change.removed:
                self.store.clear_confirmations([(account, cid) for cid in change.removed])
            if change.seen and change.seen_at is not None:
                self.store.mark_seen(account, change.seen, change.seen_at)
            if begin is not None:
                self.store.begin(account, begin[1], begin[0], begin[2])
            if done:
                self.store.done(account, done)
        unit.entries.update(change.entries)
        for cid in change.removed:
            unit.entries.pop(cid, None)
        if change.pause_until is not None:
            unit.paused_until = change.pause_until
        if change.list_soon:
            unit.next_listing = min(unit.next_listing, self.clock())
        report.counts.update(change.counts)
        report.failed += change.failed
        for event in change.events:
            getattr(self.log, event.level)(event.event, **event.fields)

    # -- helpers -----------------------------------------------------------------------------------

    def _situation(self, unit: Unit, now: datetime) -> Situation:
        return Situation(
            unit.name, unit.entries, now, unit.client.skew, self.state.policy, unit.names, unit.listed
        )

    def _hold_back(self, now: datetime, confirmed: frozenset[Key], report: PassReport) -> None:
        """The deletion guards weigh every account at once; what they refuse stays owned, and is
        kept alive with the last spec known for it."""
        refused = planner.guard(self.memory.desired, self.registry, self.state.policy, confirmed)
        keys = planner.refused_keys(refused)
        for unit in self.memory.units.values():
            unit.refused = frozenset(c for a, c in keys if a == unit.name and c in unit.entries)
            unit.retained = {
                cid: spec
                for cid in unit.refused
                if (
                    spec := outcome.spec_for_retained(
                        unit.entries[cid], self.memory.known.get((unit.name, cid))
                    )
                )
                is not None
            }
        for refusal in refused:
            self.log.error(
                "config.refused",
                account=refusal.account,
                reason=refusal.reason,
                channels=list(refusal.channel_ids),
                message=refusal.message,
            )
        report.refused.extend(refused)

    def _report_foreign(
        self, unit: Unit, listing: dict[str, ObservedChannel], report: PassReport
    ) -> None:
        foreign = [
            ch
            for cid, ch in sorted(listing.items())
            if cid not in unit.entries and cid not in unit.desired
        ]
        self.store.set_foreign(unit.name, foreign)
        report.foreign += len(foreign)
        for channel in foreign:
            if channel.channel_id not in unit.foreign_seen:
                unit.foreign_seen.add(channel.channel_id)
                self.log.info(
                    "channel.foreign",
                    account=unit.name,
                    channel_id=channel.channel_id,
                    modules=channel.modules,
                )

    def _confirmations(self) -> frozenset[Key]:
        """Deletions confirmed while the daemon ran; a confirmation lapses once its channel is
        wanted again, so it cannot approve a later, different removal."""
        confirmed = self.store.confirmed_deletes()
        stale = [key for key in confirmed if key in self.memory.desired]
        if stale:
            self.store.clear_confirmations(stale)
        return confirmed.difference(stale)

    def _may_call(self, unit: Unit, now: datetime) -> bool:
        """No call once a stop was asked for (SIGTERM finishes the call in flight, not the pass),
        nor to an account paused by a 429 or bad credentials."""
        return not self.stopping and not unit.paused(now)

    def _stop_requested(self) -> bool:
        return self.stopping

    def _active_units(self) -> Iterator[Unit]:
        """Units of the state's accounts, plus gone accounts that still own channels to delete."""
        for name, unit in self.memory.units.items():
            if name in self.state.accounts or unit.entries:
                yield unit
