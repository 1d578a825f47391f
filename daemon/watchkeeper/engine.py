"""The fleet's loop: which accounts a pass serves, on how many threads, and what a reload changes.

Each account's share of a pass is one straight line (account.py): observe -> ledger -> commit ->
plan -> then for each request: send -> interpret -> commit. This module decides only which units
run, runs them concurrently (each account's calls in order; a failure of any kind stays with its
account), then the backfill steps, and sums their reports.

Several instances on PostgreSQL (a ``Cluster``): a lease cycle runs every ``lease``/3, at the start
of a pass and while its accounts are served, and the engine serves only the units whose lease it
holds (leasing.py). A database that cannot be reached ends the pass (``store.unavailable``):
nothing more could be recorded, so nothing more is sent.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from queue import Empty, SimpleQueue
from typing import ParamSpec, TypeVar

from watchkeeper import backfill_schedule, leases, logs, policy
from watchkeeper.account import AccountPass, Shell, preview
from watchkeeper.backfill_schedule import BackfillSchedule
from watchkeeper.cluster import Cluster
from watchkeeper.config import AccountSpec, DesiredState
from watchkeeper.leasing import Leasing
from watchkeeper.model import RegistryEntry
from watchkeeper.planner import Plan, Refusal
from watchkeeper.report import PassReport, finished_fields
from watchkeeper.store import LeaseLost, Store, StoreUnavailable
from watchkeeper.units import Key, Memory, Unit
from watchkeeper.zoho.client import WatchClient

P = ParamSpec("P")
T = TypeVar("T")
TOP_UP_EVERY = 1.0
"""Seconds between a long pass's looks for units that fell due while it ran."""
TOP_UP_PERIOD = timedelta(seconds=TOP_UP_EVERY)


class Inline(Executor):
    """``concurrency = 1``: each unit served on the calling thread as it is submitted (no thread
    to start per pass, and the soak's per-thread CPU clock sees the work)."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        done: Future[T] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # as a pool would: the caller's result() raises it
            done.set_exception(exc)
        return done


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        self.log = logs.get_logger()
        self.shell = Shell(store, clock, rng or random.Random(), state.policy, self.log)
        self._connect = connect
        """Builds the client of an account that a reload adds or changes."""
        self._store_down = False
        self.state = state
        self.memory = Memory.build(store.registry(), clients, clock())
        self.memory.adopt(state)
        self.backfills = BackfillSchedule(store, self.memory, self.shell.rng)
        self.backfills.arm(clock())
        intents = store.pending_intents()
        if intents:
            self.log.warning("engine.interrupted", calls=len(intents), note="listing before any change")

    def lease_with(self, cluster: Cluster) -> None:
        arm = self.backfills.arm
        self.shell.leasing = Leasing(
            cluster, self.memory, self.store, self.clock, lambda: arm(self.clock())
        )

    def close(self) -> None:
        """Close what the engine opened itself (the backfill's receiver connections)."""
        self.backfills.close()

    @property
    def registry(self) -> dict[Key, RegistryEntry]:
        return self.memory.registry()

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

    def served(self) -> list[Unit]:
        """The units this instance serves: all of them on SQLite, the leased ones otherwise."""
        return [u for u in self.memory.active(self.state) if self.shell.serves(u)]

    def next_due(self) -> datetime:
        """Our-clock instant at which something next needs doing (a lease cycle included)."""
        now = self.clock()
        due = min(
            (_next_work(u, now, self.state.policy) for u in self.served()), default=now + timedelta(1)
        )
        leasing = self.shell.leasing
        return due if leasing is None else min(due, leasing.next_cycle(now))

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
        self.state, self.shell.policy = state, state.policy
        self.memory.adopt(state)
        if self.shell.leasing is not None:
            self.shell.leasing.cluster.digest = leases.digest(state)
        self.store.clear_retries()
        self.memory.reset(self.store.registry(), now)
        self.backfills.arm(now)  # a reload may carry a backfill someone requested

    def preview(self, now: datetime) -> Plan:
        return preview(self.memory, self.state, self.shell, now)

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
            self.log.info("reconcile.finished", **finished_fields(report))
        return report

    def run_backfills(self, now: datetime) -> PassReport:
        """One step of every pending backfill (``watchkeeper backfill``): what a receiver refuses
        stays pending, for the daemon's next passes."""
        report = PassReport(desired=len(self.state.channels))
        self.backfills.arm(now)
        for unit in self.memory.active(self.state):
            if backfill_schedule.due(unit, now):
                self.backfills.step(
                    AccountPass(self.shell, unit, now, report), lambda: self.shell.stopping
                )
        return report

    def _pass(
        self, now: datetime, listing: bool | None, confirmed: frozenset[Key], report: PassReport
    ) -> bool:
        active = self.served()
        units = [u for u in active if listing is not None or u.next_due(now, self.state.policy) <= now]
        if not units and not any(backfill_schedule.due(u, now) for u in active):
            self._hand_back()
            return False
        report.refused.extend(self._guard(confirmed))
        for part in self._serve_all(units, now, listing):
            report.merge(part)
        deadline = self.backfills.deadline(
            self.memory.active(self.state), self.clock(), self.state.policy
        )
        for unit in active:  # after every account's renewals: a backfill never delays one
            if backfill_schedule.due(unit, now) and not self.shell.stopping and self.shell.serves(unit):
                lane = AccountPass(self.shell, unit, now, report)
                self.backfills.step(lane, lambda: self.shell.stopping or self.clock() >= deadline)
        self._hand_back()
        report.active = self.memory.census().states["active"]
        return True

    def _guard(self, confirmed: frozenset[Key]) -> Sequence[Refusal]:
        """Deletions the guards hold back (kept alive meanwhile). A confirmation made while the
        daemon ran lapses once its channel is wanted again, so it cannot approve a later removal."""
        confirmations = self.store.confirmed_deletes()
        stale = [key for key in confirmations if key in self.memory.desired]
        if stale:
            self.store.clear_confirmations(stale)
        approved = confirmed | confirmations.difference(stale)
        refused = self.memory.guard(self.state.policy, approved)
        self.memory.hold_back(refused)
        for r in refused:
            self.log.error(
                "config.refused",
                account=r.account,
                reason=r.reason,
                channels=list(r.channel_ids),
                message=r.message,
            )
        return refused

    def _serve_all(self, units: list[Unit], now: datetime, listing: bool | None) -> list[PassReport]:
        """The units on the pool, then (a pass that serves what is due) each unit that falls due
        while they are served, once: at 10,000 accounts and 200 ms a call a pass lasts tens of
        seconds, and a renewal due meanwhile would otherwise wait for the next pass."""
        if not units:  # only a backfill is due
            return []
        parts: list[PassReport] = []
        finished: SimpleQueue[Future[PassReport]] = SimpleQueue()
        workers = self.state.concurrency
        pool = Inline() if workers == 1 else ThreadPoolExecutor(workers, thread_name_prefix="account")
        with pool:

            def serve(unit: Unit, at: datetime) -> None:
                pool.submit(self._serve, unit, at, listing).add_done_callback(finished.put)

            for unit in units:
                serve(unit, now)
            taken, looked = {u.name for u in units}, now
            while len(parts) < len(taken):
                # A queue of the finished, not wait() on every future: that costs O(futures) at
                # each answer, hundreds of answers a second over 10,000 accounts.
                with suppress(Empty):
                    parts.append(finished.get(timeout=TOP_UP_EVERY).result())
                at = self.clock()
                if listing is not None or self.shell.stopping or at < looked + TOP_UP_PERIOD:
                    continue
                looked = at  # a look scans every unit: once a second at most
                for unit in self.served():
                    if unit.name not in taken and unit.next_due(at, self.state.policy) <= at:
                        taken.add(unit.name)
                        serve(unit, at)
        return parts

    def _serve(self, unit: Unit, now: datetime, listing: bool | None) -> PassReport:
        """One account's share of the pass, on its own report."""
        report = PassReport()
        self._lease_cycle(self.clock())  # a long pass still renews its leases on time
        if not self.shell.serves(unit):
            return report
        lists = unit.next_listing <= now if listing is None else listing
        if listing:  # a listing asked for is a full one
            unit.rows = None
        report.listed = lists
        unit.touch()
        try:
            AccountPass(self.shell, unit, now, report).run(lists)
        except LeaseLost as exc:
            assert self.shell.leasing is not None, "only a fenced write raises LeaseLost"
            self.shell.leasing.lost(unit, exc.epoch, "fenced")
        except StoreUnavailable:
            raise
        except Exception as exc:
            self.log.exception("engine.account_failed", account=unit.name, error=repr(exc))
            report.failed += 1
            unit.failed_listing(now, self.state.policy, self.shell.rng)
            unit.paused_until = unit.next_listing
        return report

    # -- leases (several instances) ----------------------------------------------------------------

    def _lease_cycle(self, now: datetime) -> None:
        if self.shell.leasing is not None:
            self.shell.leasing.cycle(now, [u.name for u in self.memory.active(self.state)])

    def _hand_back(self) -> None:
        if self.shell.leasing is not None:
            self.shell.leasing.hand_back()

    def release_leases(self) -> None:
        """On SIGTERM: every lease back at once (see Leasing.release_all)."""
        if self.shell.leasing is not None:
            self.shell.leasing.release_all()


def _next_work(unit: Unit, now: datetime, tuning: policy.Policy) -> datetime:
    due = unit.next_due(now, tuning)
    return due if unit.backfill_at is None else min(due, unit.backfill_at)
