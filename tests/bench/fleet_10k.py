"""The real daemon keeping a fleet of accounts alive against the emulator, every call 200 ms late.

    python -m tests.bench.fleet_10k [--accounts 10000] [--per-account 3] [--ttl 8m]
                                    [--latency 0.2] [--concurrency 8] [--token-lifetime 4m]
                                    [--daemon TOML] [--run-for DURATION]
                                    [--json] [--workdir DIR]

One emulator org per account (``emu.add_org``), one state file, ``watchkeeper run`` as a process
(tests/daemon_process.py). Every call, token refreshes included, waits ``latency`` seconds in the
emulator (``Fault(status=None, latency=...)``). Channels live ``ttl`` and access tokens
``token-lifetime``, so renewals and refreshes both happen within the run, which lasts until the
last channel created has lived 1.05 ttl (by then each must have been renewed once), or
``--run-for`` after that if given. ``--daemon`` adds lines to the state file's ``[daemon]`` table
(``--daemon 'renew_window = [0.40, 0.50]'``); without it the daemon runs on the product defaults.

Measured from the emulator, as the soak does: the renewal lead times (how much of its lifetime a
channel had left when renewed), every lapse, the token refreshes per minute (whether thousands of
accounts refresh together; the first pass refreshes every account, so the minutes after it are
reported apart); from /proc: the daemon's RSS and CPU. ``--accounts 30 --ttl 15s`` runs
in under a minute (tests/test_bench_fleet.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from watchkeeper import config
from watchkeeper.emulator import Call, Emulator, Fault

from tests.daemon_process import DaemonProcess
from tests.soak.harness import Tracker
from tests.soak.report import holes
from tests.statefiles import Chan, org_of, write_state

FIRST_ID = 3_000_000_000_000
POLL = 0.5
"""Seconds between two looks at the emulator's calls and the daemon's /proc figures."""
PROGRESS = 30.0
"""Seconds between two progress lines (stderr) while the first pass creates the channels."""
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Fleet:
    accounts: int = 10_000
    per_account: int = 3
    ttl: str = "8m"
    latency: float = 0.2
    concurrency: int = 8
    token_lifetime: str = "4m"
    daemon: str = ""
    """Extra lines of the ``[daemon]`` table."""
    run_for: str | None = None
    """How long the run lasts after the first pass; None: 1.05 ttl."""

    @property
    def names(self) -> list[str]:
        return ["main", *(f"acct{n:05d}" for n in range(2, self.accounts + 1))]

    @property
    def lifetime(self) -> timedelta:
        return config.parse_duration(self.ttl)

    @property
    def after_first_pass(self) -> float:
        """Seconds the run goes on once every channel is live."""
        if self.run_for is None:
            return 1.05 * self.lifetime.total_seconds()
        return config.parse_duration(self.run_for).total_seconds()


def channels(fleet: Fleet) -> list[Chan]:
    return [
        Chan(str(FIRST_ID + a * fleet.per_account + i), ttl=fleet.ttl, account=name)
        for a, name in enumerate(fleet.names)
        for i in range(fleet.per_account)
    ]


class Proc:
    """The daemon's resident memory and CPU time, read from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_mb = 0.0

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
                self.peak_rss_mb = max(self.peak_rss_mb, rss)
                return rss
        raise RuntimeError("no VmRSS")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(fleet: Fleet, workdir: Path) -> dict[str, Any]:
    """One run; every figure of the report, JSON-ready."""
    chans = channels(fleet)
    token_lifetime = config.parse_duration(fleet.token_lifetime)
    with Emulator(access_token_lifetime=token_lifetime) as emu:
        for name in fleet.names[1:]:
            emu.add_org(org_of(name))
        emu.add_fault(Fault(status=None, latency=fleet.latency, paths="any"))
        daemon_conf = f"concurrency = {fleet.concurrency}\n{fleet.daemon}\n"
        state = write_state(
            workdir / "channels.toml", emu.url, chans, daemon=daemon_conf, accounts=fleet.names
        )
        tracker = Tracker(emu)
        daemon = DaemonProcess(state, watchdog_usec=None)
        proc = Proc(daemon.proc.pid)
        started = time.monotonic()
        try:
            created_at, rss_created = _wait_created(tracker, proc, len(chans), started)
            created_emu = emu.now()
            end = created_at + fleet.after_first_pass
            while time.monotonic() < end:
                _step(tracker, proc)
                if daemon.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited: {daemon.stderr[-2000:]}")
            tracker.observe()
            rss_end = proc.rss_mb()
            cpu = proc.cpu_s()
        finally:
            daemon.stop(timeout=60)
        keys = [(org_of(c.account or "main"), c.channel_id) for c in chans]
        return _figures(
            fleet,
            Observed(
                tracker.leads,
                {k: emu.live_intervals(k[1], org=k[0]) for k in keys},
                emu.calls,
                emu.now(),
                time.monotonic() - started,
                created_at - started,
                created_emu,
                cpu,
                (rss_created, rss_end, proc.peak_rss_mb),
            ),
        )


@dataclass(frozen=True, slots=True)
class Observed:
    """What one run saw: from the emulator, the clock and /proc."""

    leads: list[float]
    intervals: dict[tuple[str, str], list[tuple[datetime, datetime | None]]]
    calls: list[Call]
    now: datetime
    wall: float
    first_pass: float
    first_pass_end: datetime
    """The emulator's instant at which every channel was live."""
    cpu: float
    rss: tuple[float, float, float]
    """MB after the first pass, at the end, at the peak."""


def _step(tracker: Tracker, proc: Proc) -> None:
    tracker.observe()
    proc.rss_mb()
    time.sleep(POLL)


def _wait_created(tracker: Tracker, proc: Proc, total: int, started: float) -> tuple[float, float]:
    """Until every channel is live (the first pass); the monotonic instant and the RSS then."""
    deadline = started + 600 + total * 0.05
    said = started
    while time.monotonic() < deadline:
        _step(tracker, proc)
        if len(tracker.expiry) >= total:
            return time.monotonic(), proc.rss_mb()
        if time.monotonic() - said >= PROGRESS:
            said = time.monotonic()
            print(
                f"{said - started:.0f} s: {len(tracker.expiry)} of {total} channels created, "
                f"daemon RSS {proc.rss_mb():.0f} MB, CPU {proc.cpu_s():.0f} s",
                file=sys.stderr,
                flush=True,
            )
    raise RuntimeError(f"only {len(tracker.expiry)} of {total} channels created in time")


def _figures(fleet: Fleet, seen: Observed) -> dict[str, Any]:
    lifetime = fleet.lifetime.total_seconds()
    fractions = [lead / lifetime for lead in seen.leads]
    lapses = [
        ((end or seen.now) - start).total_seconds()
        for series in seen.intervals.values()
        for start, end in holes(series, seen.now)
    ]
    calls = seen.calls
    refreshes = sorted(c.at for c in calls if c.method == "TOKEN" and c.status == 200)
    later = [at for at in refreshes if at >= seen.first_pass_end]
    channels_total = fleet.accounts * fleet.per_account
    renewed = {cid for c in calls if c.method == "PATCH" and c.status < 300 for cid in c.channel_ids}
    return {
        "params": {
            "accounts": fleet.accounts,
            "per_account": fleet.per_account,
            "ttl": fleet.ttl,
            "latency_s": fleet.latency,
            "concurrency": fleet.concurrency,
            "token_lifetime": fleet.token_lifetime,
            "daemon": fleet.daemon,
            "run_for_s": round(fleet.after_first_pass, 1),
        },
        "channels": channels_total,
        "first_pass_s": round(seen.first_pass, 1),
        "wall_s": round(seen.wall, 1),
        "renewed_channels": len(renewed),
        "renewal_lead_fraction": {
            "count": len(fractions),
            "min": min(fractions, default=None),
            "median": statistics.median(fractions) if fractions else None,
            "under_half": sum(1 for f in fractions if f < 0.5),
        },
        "lapses": len(lapses),
        "largest_lapse_s": max(lapses, default=0.0),
        "calls": dict(Counter(c.method for c in calls)),
        "calls_per_s": round(len(calls) / seen.wall, 1),
        "token_refreshes": len(refreshes),
        "token_refreshes_most_in_a_minute": _most_within(refreshes, MINUTE),
        "token_refreshes_after_first_pass": len(later),
        "token_refreshes_most_in_a_minute_after_first_pass": _most_within(later, MINUTE),
        "token_refreshes_per_minute": _per_minute(refreshes, calls[0].at if calls else seen.now),
        "rss_mb": {
            name: round(mb, 1)
            for name, mb in zip(("after_first_pass", "end", "peak"), seen.rss, strict=True)
        },
        "cpu_s": round(seen.cpu, 1),
        "cpu_s_per_hour": round(seen.cpu / seen.wall * 3600, 1),
    }


def _per_minute(instants: list[datetime], start: datetime) -> list[int]:
    """How many of ``instants`` fell in each minute from ``start``."""
    counts = Counter(int((at - start) / MINUTE) for at in instants)
    return [counts[m] for m in range(max(counts, default=-1) + 1)]


def _most_within(instants: list[datetime], span: timedelta) -> int:
    """The most of ``instants`` (sorted) in any window of ``span``: a burst that straddles two
    minutes of ``_per_minute`` is counted whole."""
    most, first = 0, 0
    for last, at in enumerate(instants):
        while at - instants[first] >= span:
            first += 1
        most = max(most, last - first + 1)
    return most


def render(report: dict[str, Any]) -> str:
    p = report["params"]
    lead = report["renewal_lead_fraction"]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    return "\n".join(
        [
            f"fleet: {p['accounts']} accounts x {p['per_account']} channels, ttl {p['ttl']}, "
            f"{1000 * p['latency_s']:.0f} ms a call, concurrency {p['concurrency']}, "
            f"access tokens {p['token_lifetime']}"
            + (f", [daemon] {p['daemon']!r}" if p["daemon"] else ""),
            f"first pass (every channel created) {report['first_pass_s']} s; run {report['wall_s']} s"
            f" at {report['calls_per_s']} calls/s; calls {report['calls']}",
            f"renewed {report['renewed_channels']} of {report['channels']} channels; lifetime left "
            f"at renewal: min {pct(lead['min'])}, median {pct(lead['median'])}, "
            f"{lead['under_half']} of {lead['count']} renewals under 50 %",
            f"lapses {report['lapses']}, largest {report['largest_lapse_s']:.1f} s",
            f"token refreshes {report['token_refreshes']}, most in one minute "
            f"{report['token_refreshes_most_in_a_minute']}; after the first pass "
            f"{report['token_refreshes_after_first_pass']}, most in one minute "
            f"{report['token_refreshes_most_in_a_minute_after_first_pass']}; per minute "
            f"{report['token_refreshes_per_minute']}",
            f"daemon RSS {report['rss_mb']['after_first_pass']} MB after the first pass, "
            f"{report['rss_mb']['end']} MB at the end, peak {report['rss_mb']['peak']} MB; "
            f"CPU {report['cpu_s']} s ({report['cpu_s_per_hour']} s per hour)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fleet_10k", description=__doc__)
    defaults = Fleet()
    parser.add_argument("--accounts", type=int, default=defaults.accounts)
    parser.add_argument("--per-account", type=int, default=defaults.per_account)
    parser.add_argument("--ttl", default=defaults.ttl)
    parser.add_argument("--latency", type=float, default=defaults.latency)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--token-lifetime", default=defaults.token_lifetime)
    parser.add_argument("--daemon", default=defaults.daemon, help="extra [daemon] lines (TOML)")
    parser.add_argument("--run-for", help="how long after the first pass (default: 1.05 ttl)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    fleet = Fleet(
        args.accounts,
        args.per_account,
        args.ttl,
        args.latency,
        args.concurrency,
        args.token_lifetime,
        args.daemon,
        args.run_for,
    )
    began = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"{began}: starting {fleet}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run(fleet, workdir)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["lapses"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
