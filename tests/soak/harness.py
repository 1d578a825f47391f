"""Days of simulated operation: the real engine against the emulator, both on one frozen clock.

The loop is the daemon's, minus the waiting: ``t = min(engine.next_due(), now + max_sleep, next
harness action)``, move the clock to ``t``, ``engine.run_due(t)``. Like the service, watchkeeper
wakes at least every ``max_sleep`` (60 s), so its CPU includes what the idle ticks cost. Calls are
real HTTP on loopback and the store is a real SQLite file; only time is simulated, so a week takes
about a minute. What is measured comes from the emulator (its call log and live intervals), never
from the daemon's own bookkeeping, except the gap ledger, which is what gets checked against it.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import structlog
from watchkeeper import config, logs, service
from watchkeeper.config import DesiredState
from watchkeeper.emulator import DEFAULT_ORG, Emulator
from watchkeeper.engine import Engine
from watchkeeper.runtime import open_engine

from tests.helpers import SimClock
from tests.receiver import Receiver
from tests.soak.changes import Lost, Stream, tally
from tests.soak.profile import PROFILES, Action, Key, Profile, Schedule
from tests.statefiles import URL_SECRET, Chan, env, org_of, write_state

MODULES = (
    "Contacts", "Deals", "Leads", "Accounts", "Tasks",
    "Calls", "Products", "Quotes", "Invoices", "Cases",
)  # fmt: skip
FIRST_ID = 1_000_000_000_000
WRITES = frozenset({"POST", "PUT", "PATCH"})
SPIN_LIMIT = 100
"""Passes in a row at one frozen instant before the harness calls it a hot loop."""
MAX_SLEEP = service.Timing().max_sleep
"""The service's longest sleep: watchkeeper ticks at least this often, due or not."""

Progress = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Params:
    channels: int = 1000
    modules: int = 2
    accounts: int = 1
    days: float = 7.0
    ttl: str = "23h"
    profile: str = "default"
    seed: int = 1
    reconcile_every: str | None = None
    """The state file's ``[daemon] reconcile_every``; None keeps the default (30m)."""
    account_reconcile: str | None = None
    """Every account's own ``reconcile_every`` (``[accounts.NAME]``); None: none, ``[daemon]``'s
    applies."""
    full_listing_every: timedelta | None = None
    """``Policy.full_listing_every`` (no state-file key sets it); None keeps the default (6h),
    zero makes every look a full listing (the daemon before the tallies)."""
    backfill: bool = True
    """``backfill = true`` on every channel."""
    change_every: str | None = "15m"
    """One record change per watched module this often (watchkeeper's run only); None: none."""

    def __post_init__(self) -> None:
        if self.channels < 1 or self.accounts < 1 or self.accounts > self.channels:
            raise ValueError("need at least one channel per account")
        if not 1 <= self.modules <= len(MODULES):
            raise ValueError(f"modules must lie in 1..{len(MODULES)}")
        if self.days <= 0:
            raise ValueError("days must be positive")
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {sorted(PROFILES)}")
        config.parse_duration(self.ttl)  # ValueError, worded for the command line
        for duration in (self.change_every, self.account_reconcile):
            if duration is not None:
                config.parse_duration(duration)

    @property
    def duration(self) -> timedelta:
        return timedelta(days=self.days)

    @property
    def fault_profile(self) -> Profile:
        return PROFILES[self.profile]

    @property
    def account_names(self) -> list[str]:
        return ["main", *(f"acct{n}" for n in range(2, self.accounts + 1))]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """An emulator Call without its body (which holds channel tokens)."""

    at: datetime
    method: str
    status: int
    org: str | None
    items: int
    records: str = ""
    """A records read (backfill): ``list`` or ``deleted``; empty for the watch and token calls."""


@dataclass
class RunResult:
    """The raw observations of one run; report.py derives every figure from them."""

    name: str
    params: Params
    schedule: Schedule
    start: datetime
    """Zoho's clock, like every instant below."""
    end: datetime
    channels: list[Key]
    intervals: dict[Key, list[tuple[datetime, datetime | None]]]
    calls: list[CallRecord]
    leads: list[float]
    """Seconds between a renewal and the expiry it replaced, one per renewal."""
    cpu_seconds: float
    wall_seconds: float
    ledger: dict[Key, list[tuple[datetime, datetime | None, str]]] | None = None
    """The daemon's gaps (start, end, cause); None for a baseline, which keeps none."""
    events: Counter[str] = field(default_factory=Counter)
    """Log events at warning and above, by name (watchkeeper only)."""
    deleted: tuple[Key, datetime] | None = None
    """The channel deleted behind the daemon's back and when (Zoho's clock)."""
    changed: tuple[Key, datetime] | None = None
    fault_hits: dict[str, int] = field(default_factory=dict)
    lost: Lost | None = None
    """The record changes and what became of them (watchkeeper's run only)."""
    idle: Idle | None = None
    """The ticks that made no call (watchkeeper only)."""


@dataclass
class Idle:
    """Ticks at which the policy ran and made no call, and the CPU they cost."""

    ticks: int = 0
    cpu_seconds: float = 0.0


def fleet(params: Params, notify_url: str) -> list[Chan]:
    """The channels of a run: spread over the accounts in turn, ``modules`` modules each."""
    names = params.account_names
    return [
        Chan(
            str(FIRST_ID + i),
            events=[f"{MODULES[(i + j) % len(MODULES)]}.all" for j in range(params.modules)],
            ttl=params.ttl,
            account=names[i % len(names)] if len(names) > 1 else None,
            notify_url=notify_url,
            backfill=params.backfill,
        )
        for i in range(params.channels)
    ]


def keys_of(params: Params, chans: list[Chan]) -> list[Key]:
    return [(c.account or "main", c.channel_id) for c in chans]


class Tracker:
    """What the emulator does not keep: how long before its expiry each renewal came.

    After each step it reads the new calls and the live expiries of the channels they wrote; a
    write that moved the expiry of a channel that was still live is a renewal.
    """

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.seen = 0
        self.expiry: dict[tuple[str, str], datetime] = {}
        self.leads: list[float] = []

    def forget(self, org: str, channel_id: str) -> None:
        self.expiry.pop((org, channel_id), None)

    def observe(self) -> int:
        """Reads the calls made since the last time; returns how many there were."""
        new = self.emu.calls_since(self.seen)
        self.seen += len(new)
        writes = [c for c in new if c.method in WRITES and c.status < 300 and c.org is not None]
        if not writes:
            return len(new)
        live = {org: self.emu.channels(org) for org in {c.org for c in writes if c.org}}
        for call in writes:
            assert call.org is not None
            for channel_id in call.channel_ids:
                key = (call.org, channel_id)
                channel = live[call.org].get(channel_id)
                prior = self.expiry.get(key)
                if channel is None:
                    self.expiry.pop(key, None)
                elif channel.expires_at != prior:
                    if prior is not None and prior > call.at:
                        self.leads.append((prior - call.at).total_seconds())
                    self.expiry[key] = channel.expires_at
        return len(new)


class Policy(Protocol):
    """What the simulation drives: watchkeeper's engine or a naive baseline."""

    cpu: float
    """CPU seconds spent in the policy so far."""

    def next_due(self) -> datetime | None: ...

    def run_due(self, now: datetime) -> None: ...

    def restart(self, now: datetime) -> None:
        """A restart at ``now``, including whatever the policy does on start-up."""
        ...


class Spin(RuntimeError):
    """The policy asked to run again and again at one instant: a hot loop under a frozen clock."""


@dataclass
class Simulation:
    """One run's world: the clock, the emulator with the profile's faults, the state file."""

    params: Params
    clock: SimClock
    start: datetime
    keys: list[Key]
    schedule: Schedule
    emu: Emulator
    state: DesiredState
    tracker: Tracker
    receiver: Receiver
    deleted: tuple[Key, datetime] | None = None
    changed: tuple[Key, datetime] | None = None
    idle: Idle = field(default_factory=Idle)

    @property
    def end(self) -> datetime:
        return self.start + self.params.duration

    def drive(
        self,
        name: str,
        policy: Policy,
        progress: Progress | None = None,
        stream: Stream | None = None,
        *,
        tick: timedelta | None = None,
    ) -> None:
        """``t = min(policy.next_due(), now + tick, next action, next record change)``; move the
        clock there; act; run the policy. ``self.idle`` counts the runs that made no call and
        their CPU (next_due included)."""
        actions = list(self.schedule.actions)
        same = day = 0
        while True:
            cpu = policy.cpu
            due = policy.next_due() or self.end
            if tick is not None:
                due = min(due, self.clock() + tick)
            changes = stream.next_at if stream is not None else self.end
            t = min(due, actions[0].at if actions else self.end, changes, self.end)
            if t >= self.end:
                break
            if t <= self.clock():
                same += 1
                if same > SPIN_LIMIT:
                    raise Spin(f"{name}: {same} passes in a row at {self.clock()}")
                t = self.clock()
            else:
                same = 0
            self.clock.set(t)
            while actions and actions[0].at <= t:
                self._act(actions.pop(0), policy, t)
            if stream is not None:
                stream.run_until(t)
            ran = due <= t
            if ran:
                structlog.contextvars.bind_contextvars(sim_time=t.isoformat())
                policy.run_due(t)
            if self.tracker.observe() == 0 and ran:
                self.idle.ticks += 1
                self.idle.cpu_seconds += policy.cpu - cpu
            day = self._progress(name, progress, t, day)
        self.clock.set(self.end)

    def _progress(self, name: str, progress: Progress | None, t: datetime, day: int) -> int:
        """Says when a simulated day is over; returns the day ``t`` is in."""
        now = (t - self.start) // timedelta(days=1)
        if progress and now > day:
            progress(f"{name}: day {now} of {self.params.days:g}")
        return now

    def _act(self, action: Action, policy: Policy, now: datetime) -> None:
        if action.kind == "restart":
            policy.restart(now)
            return
        assert action.key is not None
        org, channel_id = org_of(action.key[0]), action.key[1]
        live = self.emu.channels(org).get(channel_id)
        if live is None:  # lapsed just then: nothing to change or delete behind anyone's back
            return
        happened = (action.key, self.emu.now())
        if action.kind == "delete":
            self.tracker.forget(org, channel_id)
            self.emu.delete_channel(channel_id, org=org)
            self.deleted = happened
        else:
            first = live.modules[0]
            changed = self.receiver.url(path="changed")
            self.emu.change_channel(channel_id, events=[f"{first}.create"], notify_url=changed, org=org)
            self.changed = happened

    def result(self, name: str, cpu_seconds: float, wall_seconds: float) -> RunResult:
        """Everything the emulator saw, once the run is over."""
        return RunResult(
            name=name,
            params=self.params,
            schedule=self.schedule,
            start=self.start + self.params.fault_profile.clock_skew,
            end=self.emu.now(),
            channels=self.keys,
            intervals={k: self.emu.live_intervals(k[1], org=org_of(k[0])) for k in self.keys},
            calls=[
                CallRecord(c.at, c.method, c.status, c.org, c.items, _is_records(c.path))
                for c in self.emu.calls
            ],
            leads=self.tracker.leads,
            cpu_seconds=cpu_seconds,
            wall_seconds=wall_seconds,
            deleted=self.deleted,
            changed=self.changed,
            fault_hits=_fault_hits(self.emu),
        )


@contextmanager
def simulation(params: Params, state_file: Path) -> Iterator[Simulation]:
    """A fresh world for one run: the same seed lays out the same faults for every policy."""
    clock = SimClock()
    start = clock()
    receiver = Receiver()
    chans = fleet(params, receiver.url(f"key={URL_SECRET}"))
    keys = keys_of(params, chans)
    profile = params.fault_profile
    schedule = profile.schedule(start, start + params.duration, keys, random.Random(params.seed))
    emu = Emulator(
        clock=clock,
        clock_skew=profile.clock_skew,
        access_token_lifetime=profile.access_token_lifetime,
        seed=params.seed,
    )
    for account in params.account_names:
        if org_of(account) != DEFAULT_ORG:
            emu.add_org(org_of(account))
    with emu, receiver:
        schedule.install(emu, profile)
        # One account at a time: the accounts then draw from the seeded rng in a fixed order, and
        # a run repeats exactly with its seed.
        daemon = "concurrency = 1\n"
        if params.reconcile_every:
            daemon += f'reconcile_every = "{params.reconcile_every}"\n'
        own = params.account_reconcile
        lines = f'reconcile_every = "{own}"' if own else ""
        accounts = dict.fromkeys(params.account_names, lines)
        write_state(state_file, emu.url, chans, daemon=daemon, accounts=accounts)
        state = config.load(state_file, environ=env())
        if params.full_listing_every is not None:
            tuning = replace(state.policy, full_listing_every=params.full_listing_every)
            state = replace(state, policy=tuning)
        yield Simulation(params, clock, start, keys, schedule, emu, state, Tracker(emu), receiver)


def _is_records(path: str) -> str:
    if path.endswith("/actions/watch") or path.startswith("/oauth"):
        return ""
    return "deleted" if path.endswith("/deleted") else "list"


def _fault_hits(emu: Emulator) -> dict[str, int]:
    hits: Counter[str] = Counter()
    for fault in emu.faults:
        kind = {503: "outage", 429: "429 burst"}.get(fault.status or 0, "5xx")
        hits[kind] += fault.hits
    return dict(hits)


@contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """The engine's log (warning and above, JSON, with the simulated time) into ``path``; the
    configuration before is restored afterwards (structlog's defaults would print to stdout)."""
    before = structlog.get_config()
    with path.open("w") as stream:
        logs.configure("json", "warning", stream=stream, journal=False)
        try:
            yield
        finally:
            structlog.contextvars.clear_contextvars()
            structlog.configure(**before)
            root = logging.getLogger()
            for handler in list(root.handlers):
                if type(handler).__name__ == "_StdlibBridge":
                    root.removeHandler(handler)


def count_events(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    with path.open() as lines:
        for line in lines:
            if line.strip():
                counts[str(json.loads(line).get("event"))] += 1
    return counts


class Watchkeeper:
    """The engine as the daemon runs it; a restart closes it and opens a new one on the same
    database. CPU time is counted in the engine's calls only (the emulator runs in other threads)."""

    def __init__(self, sim: Simulation, stack: ExitStack) -> None:
        self.sim = sim
        self.stack = stack
        self.rng = random.Random(sim.params.seed)
        self.cpu = 0.0
        self.engine = self._timed(self._open)
        self.started = False
        """Whether the first pass since (re)start ran, after which the daemon freezes its heap."""

    def _open(self) -> Engine:
        sim = self.sim
        opened = open_engine(sim.state, clock=sim.clock, rng=self.rng, sleep=sim.clock.sleep)
        return self.stack.enter_context(opened)

    def _timed(self, work: Callable[[], T]) -> T:
        began = time.thread_time()
        try:
            return work()
        finally:
            self.cpu += time.thread_time() - began

    def next_due(self) -> datetime:
        return self._timed(self.engine.next_due)

    def run_due(self, now: datetime) -> None:
        """The service's pass: the engine's, then the ``STATUS=`` line it sends systemd, and after
        the first, the heap frozen."""

        def tick() -> None:
            self.engine.run_due(now)
            service.summary(self.engine, now)
            if not self.started:
                service.freeze_heap()
                self.started = True

        self._timed(tick)

    def restart(self, now: datetime) -> None:
        """As the daemon starts: a new engine on the database, and its first pass at once."""

        def reopen() -> Engine:
            gc.unfreeze()  # a restarted daemon is a new process: what the old one froze is gone
            self.stack.close()
            return self._open()

        self.started = False
        self.engine = self._timed(reopen)
        self.run_due(now)


def run_watchkeeper(params: Params, workdir: Path, progress: Progress | None = None) -> RunResult:
    """The engine through ``params.days`` of simulated time under the profile's faults; its
    database and log go to ``workdir`` (a database left there by an earlier run is replaced)."""
    for stale in workdir.glob("watchkeeper.db*"):
        stale.unlink()
    log_path = workdir / "watchkeeper.log"
    wall = time.perf_counter()
    with (
        simulation(params, workdir / "channels.toml") as sim,
        logging_to(log_path),
        ExitStack() as stack,
    ):
        policy = Watchkeeper(sim, stack)
        every = params.change_every
        stream = (
            None
            if every is None
            else Stream(
                sim.emu,
                {name: org_of(name) for name in params.account_names},
                sorted({m for c in sim.state.channels for m, _ in c.events}),
                config.parse_duration(every),
                sim.start + config.parse_duration(every),
                sim.receiver.url(),
                random.Random(params.seed),
            )
        )
        sim.drive("watchkeeper", policy, progress, stream, tick=MAX_SLEEP)
        gaps = policy.engine.store.gaps()
        stack.close()
        result = sim.result("watchkeeper", policy.cpu, time.perf_counter() - wall)
        result.idle = sim.idle
        if stream is not None:
            subscriptions = {(c.account, c.channel_id): c.events for c in sim.state.channels}
            result.lost = tally(stream, subscriptions, result.intervals, sim.receiver.backfilled())
    result.ledger = {key: [] for key in result.channels}
    for gap in gaps:
        result.ledger.setdefault((gap.account, gap.channel_id), []).append(
            (gap.start, gap.end, gap.cause)
        )
    result.events = count_events(log_path)
    return result
