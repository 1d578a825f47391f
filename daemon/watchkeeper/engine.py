"""The thin loop that runs observe -> decide -> act -> record, one account at a time.

Per account, a pass reads as one straight line: observe (the listing, when due) -> the ledger ->
commit -> plan -> then for each request: send -> interpret -> commit. The decisions are pure
(ledger, planner, outcome); this module only moves their results between Zoho, the store and the
logs. Each commit is one transaction, made before the next call goes out, so a crash at any point
leaves a state the next pass repairs.

Several instances on PostgreSQL (a ``Cluster``): a lease cycle runs every ``lease``/3, at the start
of a pass and while its accounts are served, and the engine serves only the units whose lease it
holds. Every commit of an account is fenced by its lease's epoch (LeaseLost: ``lease.lost``, the
unit is no longer served), and no call to Zoho starts within the lease's margin of its end. A
database that cannot be reached ends the pass (``store.unavailable``): nothing more could be
recorded, so nothing more is sent.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from watchkeeper import backfill_plan, leases, logs, outcome, planner, policy
from watchkeeper.backfill import Backfiller, collect
from watchkeeper.cluster import Cluster
from watchkeeper.config import AccountSpec, DesiredState
from watchkeeper.leasing import Leasing
from watchkeeper.model import ChannelSpec, ObservedChannel, RegistryEntry, WatchItem
from watchkeeper.outcome import Transition
from watchkeeper.planner import Action, Method, Plan, Refusal
from watchkeeper.recorder import Intent, record
from watchkeeper.store import Gap, LeaseLost, Store, StoreUnavailable
from watchkeeper.units import Key, Memory, Unit
from watchkeeper.zoho.client import WatchClient
from watchkeeper.zoho.errors import ZohoError
from watchkeeper.zoho.records import RecordsClient
from watchkeeper.zoho.results import CallResult

Listing = dict[str, ObservedChannel]
BACKFILL_SLICE = timedelta(seconds=5)
"""Real time a backfill step may take while some renewal is overdue already (it would otherwise
never run while the account retries something that stays due)."""


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

    def merge(self, part: PassReport) -> None:
        """Add one account's share of the pass."""
        self.listed |= part.listed
        self.counts.update(part.counts)
        self.failed += part.failed
        self.foreign += part.foreign
        self.list_failed += part.list_failed


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
        self.leasing: Leasing | None = None
        """Set (``lease_with``) when several instances share the database: accounts are then
        served under their leases."""
        self._store_down = False
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = logs.get_logger()
        self._connect = connect
        """Builds the client of an account that a reload adds or changes."""
        self._backfiller: Backfiller | None = None
        self.stopping = False
        """Set from another thread on SIGTERM: the pass makes no further call."""
        self.on_commit: Callable[[Transition, Sequence[Action]], None] | None = None
        """Told of every recorded change and the requests it answers (the metrics counters)."""
        self.on_backfilled: Callable[[str, str, int], None] | None = None
        """Told (account, operation, records) of every backfill notification delivered."""
        self.state = state
        self.memory = Memory.build(store.registry(), clients, clock())
        self.memory.adopt(state)
        self._arm_backfills(clock())
        intents = store.pending_intents()
        if intents:
            self.log.warning("engine.interrupted", calls=len(intents), note="listing before any change")

    def lease_with(self, cluster: Cluster) -> None:
        self.leasing = Leasing(
            cluster, self.memory, self.store, self.clock, lambda: self._arm_backfills(self.clock())
        )

    @property
    def cluster(self) -> Cluster | None:
        return None if self.leasing is None else self.leasing.cluster

    def close(self) -> None:
        """Close what the engine opened itself (the backfill's receiver connections)."""
        if self._backfiller is not None:
            self._backfiller.close()

    @property
    def registry(self) -> dict[Key, RegistryEntry]:
        return self.memory.registry()

    @property
    def clients(self) -> dict[str, WatchClient]:
        return {name: unit.client for name, unit in self.memory.units.items()}

    @property
    def skew(self) -> timedelta:
        return self.memory.skew()

    @property
    def next_reconcile(self) -> datetime:
        """The earliest listing due over the accounts; setting it moves every account's."""
        return min(u.next_listing for u in self.memory.active(self.state))

    @next_reconcile.setter
    def next_reconcile(self, at: datetime) -> None:
        for unit in self.memory.units.values():
            unit.next_listing = at
            unit.touch()

    def undesired(self) -> frozenset[Key]:
        """Owned channels the state file no longer wants: what ``--allow-mass-delete`` confirms."""
        return frozenset(self.registry).difference(self.memory.desired)

    def next_due(self) -> datetime:
        """Our-clock instant at which something next needs doing (a lease cycle included)."""
        now = self.clock()
        units = [u for u in self.memory.active(self.state) if self._serves(u)]
        due = min((_next_work(u, now, self.state.policy) for u in units), default=now + timedelta(1))
        if self.leasing is not None:
            due = min(due, self.leasing.next_cycle(now))
        return due

    def run_due(self, now: datetime | None = None) -> PassReport:
        return self.run_pass(now or self.clock(), listing=None)

    def request_listing(self) -> None:
        """Every account lists on the next pass (a clock step makes the measured skew stale).
        Safe from another thread: it only moves the schedule earlier."""
        self.next_reconcile = self.clock()

    def reload(self, state: DesiredState) -> None:
        """A new desired state: retry what failed for good and reconcile at once. An account that
        is new or changed gets a new client; one that is gone keeps its client, so that its
        channels can still be deleted."""
        now = self.clock()
        if self._connect is not None:
            self.memory.connect(self.state, state, self._connect, now)
        self.state = state
        self.memory.adopt(state)
        if self.leasing is not None:
            self.leasing.cluster.digest = leases.digest(state)
        self.store.clear_retries()
        self.memory.reset(self.store.registry(), now)
        self._arm_backfills(now)  # a reload may carry a backfill someone requested

    def preview(self, now: datetime) -> Plan:
        """What a pass would do now (``watchkeeper plan``): every account listed, the ledger and the
        planner run, nothing written and nothing sent. Raises on the first listing that fails."""
        observed: dict[str, Mapping[str, ObservedChannel] | None] = {}
        registry: dict[Key, RegistryEntry] = {}
        for unit in self.memory.active(self.state):
            listing = _live(unit.client.list(), now + unit.client.skew)
            seen = outcome.observed(self._at(unit, now), listing, unit.watched())
            observed[unit.name] = listing
            registry.update(((unit.name, c), e) for c, e in (unit.entries | seen.entries).items())
        return planner.plan(
            self.state.channels,
            observed,
            registry,
            now + self.skew,
            self.state.policy,
            planner.Holds(
                self.store.confirmed_deletes().difference(self.memory.desired),
                {(u.name, c): s for u in self.memory.units.values() for c, s in u.retained.items()},
            ),
        )

    # -- one pass ----------------------------------------------------------------------------------

    def run_pass(
        self, now: datetime, *, listing: bool | None, confirmed: frozenset[Key] = frozenset()
    ) -> PassReport:
        """Every account in turn; ``listing`` None serves only the accounts with something due (and
        lists those whose listing is due), so an idle tick does nothing at all."""
        report = PassReport(desired=len(self.state.channels))
        try:
            self._lease_cycle(now)
            served = self._pass(now, listing, confirmed, report)
        except StoreUnavailable as exc:
            report.failed += 1
            if not self._store_down:
                self._store_down = True
                self.log.warning("store.unavailable", error=str(exc), note="no call until it answers")
            return report
        if self._store_down:
            self._store_down = False
            self.log.info("store.recovered")
        if served:
            self._log_finished(report)
        return report

    def _pass(
        self, now: datetime, listing: bool | None, confirmed: frozenset[Key], report: PassReport
    ) -> bool:
        tuning = self.state.policy
        active = [u for u in self.memory.active(self.state) if self._serves(u)]
        units = [u for u in active if listing is not None or u.next_due(now, tuning) <= now]
        if not units and not any(_backfill_due(u, now) for u in active):
            self._hand_back()
            return False
        refused = self.memory.guard(tuning, confirmed | self._confirmations())
        self.memory.hold_back(refused)
        for refusal in refused:
            self.log.error(
                "config.refused",
                account=refusal.account,
                reason=refusal.reason,
                channels=list(refusal.channel_ids),
                message=refusal.message,
            )
        report.refused.extend(refused)
        workers = min(self.state.concurrency, len(units))
        if workers <= 1:  # none: only a backfill is due
            parts = [self._serve_unit(unit, now, listing) for unit in units]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="account") as pool:
                parts = list(pool.map(lambda unit: self._serve_unit(unit, now, listing), units))
        for part in parts:
            report.merge(part)
        deadline = self._backfill_deadline()
        for unit in active:  # after every account's renewals: a backfill never delays one
            if _backfill_due(unit, now) and not self.stopping and self._serves(unit):
                self._backfill(unit, now, report, deadline)
        self._hand_back()
        report.active = self.memory.tally().states["active"]
        return True

    def _log_finished(self, report: PassReport) -> None:
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

    def _serve_unit(self, unit: Unit, now: datetime, listing: bool | None) -> PassReport:
        """One account's share of the pass, on its own report: accounts run concurrently (each
        account's calls in order), and a failure of any kind stays with its account."""
        report = PassReport()
        self._lease_cycle(self.clock())  # a long pass still renews its leases on time
        if not self._serves(unit):
            return report
        lists = unit.next_listing <= now if listing is None else listing
        report.listed = lists
        unit.touch()
        try:
            self._serve(unit, now, lists, report)
        except LeaseLost as exc:
            assert self.leasing is not None, "only a fenced write raises LeaseLost"
            self.leasing.lost(unit, exc.epoch, "fenced")
        except StoreUnavailable:
            raise
        except Exception as exc:
            self.log.exception("engine.account_failed", account=unit.name, error=repr(exc))
            report.failed += 1
            unit.failed_listing(now, self.state.policy, self.rng)
            unit.paused_until = unit.next_listing
        return report

    def _serve(self, unit: Unit, now: datetime, lists: bool, report: PassReport) -> None:
        """observe -> ledger -> commit -> plan -> (send -> interpret -> commit) per request."""
        listing = self._list(unit, now, report) if lists and self._may_call(unit, now) else None
        self._commit(unit, self._observed(unit, now, listing), report)
        view = planner.AccountView(
            unit.name, list(unit.desired.values()), listing, unit.entries, unit.refused, unit.retained
        )
        actions = planner.plan_account(view, now + unit.client.skew, self.state.policy)
        situation = self._at(unit, now)
        self._commit(unit, outcome.planned(situation, actions, sorted(unit.refused)), report)
        batches = planner.batches(actions)
        while batches and self._may_call(unit, now):
            method, batch = batches.pop(0)
            recreate = self._act(unit, method, batch, now, report)
            if recreate:
                batches.append(("POST", recreate))

    def _list(self, unit: Unit, now: datetime, report: PassReport) -> Listing | None:
        try:
            if unit.list_failures:  # while Zoho fails, one small page; once it answers, all of them
                unit.client.probe()
            listed = unit.client.list()
        except ZohoError as exc:
            report.list_failed.append(unit.name)
            unit.failed_listing(now, self.state.policy, self.rng)
            situation = self._at(unit, now)
            self._commit(unit, outcome.listing_failed(situation, exc, unit.next_listing), report)
            return None
        unit.list_failures = 0
        unit.next_listing = policy.next_reconcile(now, self.state.policy, self.rng)
        unit.touch()
        # Zoho's time is taken after the listing: a freshly started engine learns the skew from
        # its Date header, and a channel that expired less than the skew ago is expired, not gone.
        live = _live(listed, now + unit.client.skew)
        unit.listed = frozenset(live)
        self._report_foreign(unit, live, report)
        return live

    def _observed(self, unit: Unit, now: datetime, listing: Listing | None) -> Transition:
        last_seen = {}
        if listing is not None:  # where a vanished channel's gap starts
            zoho_now = now + unit.client.skew
            for cid, e in unit.entries.items():
                live = e.expires_at is not None and e.expires_at > zoho_now
                if live and e.lapsed_since is None and cid not in listing:
                    last_seen[cid] = self.store.last_seen(unit.name, cid)
        return outcome.observed(self._at(unit, now, last_seen), listing, unit.watched())

    def _act(
        self, unit: Unit, method: Method, actions: list[Action], now: datetime, report: PassReport
    ) -> list[Action]:
        """One request (the client sends it in chunks of 100): journal, send, interpret, record.
        Returns what must be re-created because Zoho no longer has it."""
        client = unit.client
        ids = [a.channel_id for a in actions]
        requested_at = client.server_now()
        sending = outcome.sending(self._at(unit, now), actions)
        self._commit(unit, sending, report, begin=Intent(method, ids, requested_at))

        def stop() -> bool:  # asked before each chunk: a lease near its end sends no more
            return not self._may_call(unit, now)

        change: Transition
        if method == "DELETE":
            answer = _call(lambda: client.delete(ids, should_stop=stop))
            change = outcome.deleted(self._at(unit, now), answer, ids)
        else:
            items = [WatchItem(a.spec, requested_at + a.spec.ttl) for a in actions if a.spec]
            request = outcome.Request(method, actions, items)
            answer = _call(lambda: client.write(method, items, should_stop=stop))
            gone = [r.channel_id for r in answer.results if r.not_found]  # where their gaps start
            last_seen = {cid: self.store.last_seen(unit.name, cid) for cid in gone}
            at = self._at(unit, now, last_seen)
            change = outcome.written(at, request, answer, client.server_now())
        self._commit(unit, change, report, done=ids, actions=actions)
        return change.recreate

    def _commit(
        self,
        unit: Unit,
        change: Transition,
        report: PassReport,
        *,
        begin: Intent | None = None,
        done: list[str] | None = None,
        actions: Sequence[Action] = (),
    ) -> None:
        """Record in one transaction (fenced by the unit's lease), then let the memory, the logs and
        the metrics follow."""
        fence = self._fence(unit)
        record(self.store, change, begin=begin, done=done or (), backfilled=unit.backfilled, fence=fence)
        for closed in change.closed:
            if closed.channel_id in unit.backfilled:
                ready = backfill_plan.Window(closed.start, closed.end).end - unit.client.skew
                unit.backfill_at = ready if unit.backfill_at is None else min(unit.backfill_at, ready)
        unit.entries.update(change.entries)
        for channel_id in change.removed:
            unit.entries.pop(channel_id, None)
        unit.touch()
        if change.pause_until is not None:
            unit.paused_until = change.pause_until
        if change.list_soon:
            unit.next_listing = min(unit.next_listing, self.clock())
        report.counts.update(change.counts)
        report.failed += change.failed
        for event in change.events:
            getattr(self.log, event.level)(event.event, **event.fields)
        if self.on_commit is not None:
            self.on_commit(change, actions)

    def run_backfills(self, now: datetime) -> PassReport:
        """One step of every pending backfill (``watchkeeper backfill``): what a receiver refuses
        stays pending, for the daemon's next passes."""
        report = PassReport(desired=len(self.state.channels))
        self._arm_backfills(now)
        for unit in self.memory.active(self.state):
            if _backfill_due(unit, now):
                self._backfill(unit, now, report, None)
        return report

    def preview_backfill(
        self, gaps: Iterable[Gap]
    ) -> Iterator[tuple[Gap, backfill_plan.Notification | None]]:
        """What backfilling these closed gaps would send (``--dry-run``): Zoho is asked, nothing is
        sent or written. A gap whose channel has no spec here yields None."""
        for gap in gaps:
            unit = self.memory.units.get(gap.account)
            spec = self._specs(unit).get(gap.channel_id) if unit is not None else None
            if unit is None or spec is None or gap.end is None:
                yield gap, None
                continue
            window = backfill_plan.Window(gap.start, gap.end)
            for note in collect(RecordsClient(unit.client.session), spec, window):
                yield gap, note

    def _specs(self, unit: Unit) -> Mapping[str, ChannelSpec]:
        return self.memory.specs(unit)

    def _backfill_deadline(self) -> datetime:
        """Backfill runs until a renewal or listing falls due, or, when one is overdue already,
        for BACKFILL_SLICE (it would otherwise never run while an account retries something that
        stays due)."""
        current = self.clock()
        tuning = self.state.policy
        horizon = min(
            (u.next_due(current, tuning) for u in self.memory.active(self.state)), default=current
        )
        return horizon if horizon > current else current + BACKFILL_SLICE

    def _arm_backfills(self, now: datetime) -> None:
        """Accounts with a backfill pending in the store look at it in their next pass."""
        accounts = {job.gap.account for job in self.store.pending_backfills()}
        for name in accounts & self.memory.units.keys():
            self.memory.units[name].backfill_at = now

    def _backfill(
        self, unit: Unit, now: datetime, report: PassReport, deadline: datetime | None
    ) -> None:
        """The account's backfill step, until ``deadline`` (our clock; None: until done)."""

        def interrupted() -> bool:
            return self.stopping or (deadline is not None and self.clock() >= deadline)

        if self._backfiller is None:
            self._backfiller = Backfiller(self.store, rng=self.rng, on_delivered=self.on_backfilled)
        unit.backfill_at = None
        progress = self._backfiller.run(unit, self._at(unit, now), self._specs(unit), interrupted)
        for change in progress.transitions:
            self._commit(unit, change, report)
        if progress.next_at is not None:
            at = progress.next_at
            unit.backfill_at = at if unit.backfill_at is None else min(unit.backfill_at, at)

    def _report_foreign(self, unit: Unit, listing: Listing, report: PassReport) -> None:
        foreign = [
            ch for c, ch in sorted(listing.items()) if c not in unit.entries and c not in unit.desired
        ]
        with self.store.transaction(fence=self._fence(unit)):
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

    def _at(
        self, unit: Unit, now: datetime, last_seen: Mapping[str, datetime | None] | None = None
    ) -> outcome.Situation:
        return unit.situation(now, self.state.policy, self.rng, last_seen)

    def _may_call(self, unit: Unit, now: datetime) -> bool:
        """No call once a stop was asked for (SIGTERM finishes the call in flight, not the pass),
        nor to an account paused by a 429 or bad credentials, nor (several instances) without its
        lease or within the lease's margin of its end, on the clock as it is now."""
        if self.stopping or unit.paused(now):
            return False
        return self.leasing is None or self.leasing.may_call(unit)

    # -- leases (several instances) ----------------------------------------------------------------

    def _serves(self, unit: Unit) -> bool:
        return self.leasing is None or self.leasing.serves(unit)

    def _fence(self, unit: Unit) -> tuple[str, int] | None:
        return None if self.leasing is None else self.leasing.fence(unit)

    def _lease_cycle(self, now: datetime) -> None:
        if self.leasing is not None:
            self.leasing.cycle(now, [u.name for u in self.memory.active(self.state)])

    def _hand_back(self) -> None:
        if self.leasing is not None:
            self.leasing.hand_back()

    def release_leases(self) -> None:
        """On SIGTERM: every lease back at once (see Leasing.release_all)."""
        if self.leasing is not None:
            self.leasing.release_all()

    def held(self) -> int:
        """Accounts this instance serves: all of them on SQLite, the leased ones otherwise."""
        return sum(self._serves(u) for u in self.memory.active(self.state))


def _backfill_due(unit: Unit, now: datetime) -> bool:
    return unit.backfill_at is not None and unit.backfill_at <= now


def _next_work(unit: Unit, now: datetime, tuning: policy.Policy) -> datetime:
    due = unit.next_due(now, tuning)
    return due if unit.backfill_at is None else min(due, unit.backfill_at)


def _live(listing: Listing, zoho_now: datetime) -> Listing:
    """An expired row is not a live channel, whether or not Zoho still lists it."""
    return {cid: ch for cid, ch in listing.items() if ch.expires_at > zoho_now}


def _call(send: Callable[[], CallResult]) -> CallResult:
    try:
        return send()
    except ZohoError as exc:  # refused locally, before anything was sent
        return CallResult((), exc)
