"""Chaos measurement for several instances on one PostgreSQL database (DESIGN.md section 8).

    python -m tests.chaos               # the full run: 10 minutes of chaos
    python -m tests.chaos --short       # 2 minutes (tests/test_chaos.py runs this)
    python -m tests.chaos --json        # the figures as JSON

Three `watchkeeper run` processes share one PostgreSQL server started for the run; 30 accounts with
3 channels each (ttl 20 s), the emulator serving every account as an org of its own. Every 20-40 s
one random instance is SIGKILLed and started again (a new process: a new "<hostname>:<pid>"
instance); once, the database is stopped for 15 s. The figures come from the emulator's record
(live intervals, calls naming their instance in the User-Agent) and the database's statistics, not
from the daemons' bookkeeping; failover times from the instances' own lease logs.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from watchkeeper.emulator import Emulator
from watchkeeper.model import parse_instant, utc

from tests.cluster import (
    accounts,
    channel_id,
    cluster_state,
    coverage,
    double_renewals,
    most_concurrent_callers,
)
from tests.daemon_process import DaemonProcess
from tests.pg_server import PgServer, binaries

TTL = timedelta(seconds=20)
LEASE = 4.0
TICK = LEASE / 3
"""A lease cycle runs every third of the lease: the tick a failover waits for at most."""
DAEMON = 'reconcile_every = "60s"\nretry_initial = "1s"\nretry_max = "4s"\nlease = "4s"'


@dataclass
class Settings:
    duration: float = 600.0
    instances: int = 3
    accounts: int = 30
    per_account: int = 3
    kill_every: tuple[float, float] = (20.0, 40.0)
    outage_at: float = 0.4
    """When in the run the database is stopped (a fraction of the duration)."""
    outage: float = 15.0
    seed: int = 1


@dataclass
class Kill:
    at: datetime
    instance: str
    held: list[str]
    failover: float | None = None
    """Seconds until every account it held was acquired again (by anyone); None: never."""


@dataclass
class Record:
    """What one run left behind, to compute the figures from."""

    ids: list[tuple[str, str]]
    kills: list[Kill]
    outage: list[str]
    ledger: list[tuple[str, str, datetime, datetime | None]]
    began: datetime
    ended: datetime
    stats: dict[str, int]


@dataclass
class Figures:
    settings: dict[str, Any]
    channels: int
    window_seconds: float
    coverage_min: float
    coverage_mean: float
    channels_below_100: int
    holes: int
    holes_seconds: float
    holes_outside_outage: int
    """Holes that do not overlap the database's outage (nor the channel's first renewal after it)."""
    ledger_gaps: int
    holes_without_gap: int
    gaps_without_hole: int
    double_renewals_2s: int
    double_renewals_10s: int
    most_concurrent_callers: int
    kills: int
    failover_min: float | None
    failover_median: float | None
    failover_max: float | None
    failover_target: float
    lease_queries_per_account_minute: float
    transactions_per_account_minute: float
    outage: list[str] = field(default_factory=list)
    kill_log: list[dict[str, Any]] = field(default_factory=list)


def run(settings: Settings, workdir: Path, log: Any = print) -> Figures:
    bindir = binaries()
    if bindir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb): install Debian's postgresql")
    rng = random.Random(settings.seed)
    server = PgServer(bindir).init()
    try:
        with Emulator() as emu, _fleet(settings, workdir, emu, server) as fleet:
            return _chaos(settings, rng, emu, server, fleet, log)
    finally:
        server.destroy()


class Fleet:
    def __init__(self, state: Path, url: str) -> None:
        self.state, self.url = state, url
        self.live: list[DaemonProcess] = []
        self.all: list[DaemonProcess] = []

    def start(self) -> DaemonProcess:
        env = {"WATCHKEEPER_DB": "env:WK_CHAOS_DB", "WK_CHAOS_DB": self.url}
        daemon = DaemonProcess(self.state, extra_env=env, watchdog_usec=None)
        self.live.append(daemon)
        self.all.append(daemon)
        return daemon


@contextmanager
def _fleet(settings: Settings, workdir: Path, emu: Emulator, server: PgServer) -> Iterator[Fleet]:
    names = accounts(settings.accounts)
    state = cluster_state(workdir / "channels.toml", emu, names, settings.per_account, daemon=DAEMON)
    fleet = Fleet(state, server.url(server.fresh_database()))
    try:
        yield fleet
    finally:
        for daemon in fleet.live:
            daemon.stop()
        for daemon in fleet.all:
            daemon.stop(timeout=1)


def _instance(daemon: DaemonProcess) -> str:
    return f"{socket.gethostname()}:{daemon.proc.pid}"


def _chaos(
    settings: Settings, rng: random.Random, emu: Emulator, server: PgServer, fleet: Fleet, log: Any
) -> Figures:
    names = accounts(settings.accounts)
    for _ in range(settings.instances):
        fleet.start()
    ids = [(name, channel_id(i, c)) for i, name in enumerate(names) for c in range(settings.per_account)]
    _wait_all_live(emu, ids, timeout=120)
    log(f"all {len(ids)} channels live; chaos for {settings.duration:.0f}s")
    stats_before = _lease_stats(fleet.url)
    began, started = emu.now(), time.monotonic()
    kills: list[Kill] = []
    outage: list[str] = []
    outage_due = started + settings.duration * settings.outage_at
    next_kill = started + rng.uniform(*settings.kill_every)
    end = started + settings.duration
    while time.monotonic() < end:
        now = time.monotonic()
        if not outage and now >= outage_due:
            outage.append(emu.now().isoformat())
            log("database stopped")
            server.stop("fast")
            time.sleep(settings.outage)
            server.start()
            outage.append(emu.now().isoformat())
            log("database started")
            stats_before = _merge_stats(stats_before, fleet.url)
            continue
        if now >= next_kill:
            kills.append(_kill_one(rng, fleet, log))
            next_kill = now + rng.uniform(*settings.kill_every)
            continue
        time.sleep(0.2)
    ended = emu.now()
    stats = _delta(_lease_stats(fleet.url), stats_before)
    record = Record(ids, kills, outage, _ledger(fleet.url), began, ended, stats)
    for daemon in list(fleet.live):
        daemon.stop()
    return _figures(settings, emu, fleet, record)


def _kill_one(rng: random.Random, fleet: Fleet, log: Any) -> Kill:
    victim = rng.choice(fleet.live)
    name = _instance(victim)
    with psycopg.connect(fleet.url) as conn:
        held = [
            row[0]
            for row in conn.execute(
                "SELECT account FROM leases WHERE holder = %s ORDER BY account", (name,)
            )
        ]
    victim.signal(9)
    victim.proc.wait()
    at = datetime.now().astimezone()
    fleet.live.remove(victim)
    log(f"killed {name} holding {len(held)} accounts")
    fleet.start()
    return Kill(utc(at), name, held)


def _wait_all_live(emu: Emulator, ids: list[tuple[str, str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(emu.live_intervals(cid, org) and emu.live_intervals(cid, org)[-1][1] is None
               for org, cid in ids):  # fmt: skip
            return
        time.sleep(0.5)
    raise SystemExit("the channels did not all come up: is the machine too busy?")


# -- what the database says ------------------------------------------------------------------------

LEASE_TABLES = ("leases", "instances")


def _lease_stats(url: str) -> dict[str, int]:
    """Statements on the lease tables, approximately: every statement scans them at least once
    (by index or sequentially), an insert without a scan adds a row."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0) + n_tup_ins), 0)"
            " FROM pg_stat_user_tables WHERE relname = ANY(%s)",
            (list(LEASE_TABLES),),
        ).fetchone()
        xacts = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return {"lease": int(row[0]) if row else 0, "xacts": int(xacts[0]) if xacts else 0}


def _merge_stats(before: dict[str, int], url: str) -> dict[str, int]:
    """After a restart the statistics may have been reset: keep counting from what they are."""
    now = _lease_stats(url)
    return {k: min(before[k], now[k]) for k in before}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def _ledger(url: str) -> list[tuple[str, str, datetime, datetime | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute('SELECT account, channel_id, start, "end" FROM gaps').fetchall()
    return [(a, c, parse_instant(s), parse_instant(e) if e else None) for a, c, s, e in rows]


# -- the figures -----------------------------------------------------------------------------------


def _figures(settings: Settings, emu: Emulator, fleet: Fleet, record: Record) -> Figures:
    ids, kills, ledger, stats = record.ids, record.kills, record.ledger, record.stats
    began, ended = record.began, record.ended
    minutes = (ended - began).total_seconds() / 60
    shares, holes = [], []
    for org, cid in ids:
        share, found = coverage(emu, org, cid, began, ended)
        shares.append(share)
        holes += [(org, cid, lo, hi) for lo, hi in found]
    unrecorded = [h for h in holes if not any(_overlaps(h, g, ended) for g in ledger)]
    down = [datetime.fromisoformat(t) for t in record.outage]
    outside = [h for h in holes if not down or h[3] < down[0] or h[2] > down[1] + TTL]
    recent = [g for g in ledger if (g[3] or ended) > began]
    spurious = [g for g in recent if not any(_overlaps(h, g, ended) for h in holes)]
    _failovers(kills, fleet)
    times = [k.failover for k in kills if k.failover is not None]
    calls = emu.calls
    accounts_minutes = settings.accounts * minutes
    return Figures(
        settings=asdict(settings),
        channels=len(ids),
        window_seconds=round((ended - began).total_seconds(), 1),
        coverage_min=round(min(shares) * 100, 3),
        coverage_mean=round(statistics.fmean(shares) * 100, 3),
        channels_below_100=sum(s < 1 for s in shares),
        holes=len(holes),
        holes_seconds=round(sum((hi - lo).total_seconds() for _, _, lo, hi in holes), 1),
        holes_outside_outage=len(outside),
        ledger_gaps=len(recent),
        holes_without_gap=len(unrecorded),
        gaps_without_hole=len(spurious),
        double_renewals_2s=double_renewals(calls, TTL / 10),
        double_renewals_10s=double_renewals(calls, TTL / 2),
        most_concurrent_callers=most_concurrent_callers(calls),
        kills=len(kills),
        failover_min=round(min(times), 2) if times else None,
        failover_median=round(statistics.median(times), 2) if times else None,
        failover_max=round(max(times), 2) if times else None,
        failover_target=LEASE + TICK,
        lease_queries_per_account_minute=round(stats["lease"] / accounts_minutes, 2),
        transactions_per_account_minute=round(stats["xacts"] / accounts_minutes, 2),
        outage=record.outage,
        kill_log=[
            {"at": k.at.isoformat(), "instance": k.instance, "held": len(k.held), "failover": k.failover}
            for k in kills
        ],
    )


def _overlaps(
    hole: tuple[str, str, datetime, datetime],
    gap: tuple[str, str, datetime, datetime | None],
    ended: datetime,
) -> bool:
    return hole[:2] == gap[:2] and hole[2] < (gap[3] or ended) and gap[2] < hole[3]


def _failovers(kills: list[Kill], fleet: Fleet) -> None:
    """Per kill: until every account the killed instance held was acquired again, by anyone."""
    acquired: dict[str, list[datetime]] = {}
    for daemon in fleet.all:
        for event in daemon.events:
            if event.get("event") == "lease.acquired":
                acquired.setdefault(event["account"], []).append(parse_instant(event["timestamp"]))
    for kill in kills:
        waits = []
        for account in kill.held:
            later = [t for t in acquired.get(account, []) if t > kill.at]
            waits.append((min(later) - kill.at).total_seconds() if later else None)
        if waits and all(w is not None for w in waits):
            kill.failover = round(max(w for w in waits if w is not None), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="2 minutes instead of 10")
    parser.add_argument("--duration", type=float, help="seconds of chaos (overrides --short)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings(seed=args.seed)
    if args.short:
        settings.duration = 120.0
    if args.duration:
        settings.duration = args.duration
    with tempfile.TemporaryDirectory(prefix="wk-chaos-") as workdir:
        figures = run(settings, Path(workdir), log=lambda m: print(m, file=sys.stderr, flush=True))
    doc = asdict(figures)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for key, value in doc.items():
            if key not in ("settings", "kill_log"):
                print(f"{key:36} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
