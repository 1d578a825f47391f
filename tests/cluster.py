"""Several `watchkeeper run` processes on one PostgreSQL database, for test_instances and the chaos
measurement: their state files, and what the emulator's record of calls says about them.

What is measured comes from the emulator (its calls, each with the User-Agent naming the instance
that made it, and its live intervals), not from the daemons' own bookkeeping.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from watchkeeper.emulator import Emulator
from watchkeeper.emulator.state import Call

from tests.statefiles import Chan, org_of, write_state

WRITES = frozenset({"POST", "PATCH", "PUT", "DELETE"})


def accounts(n: int) -> list[str]:
    return [f"acct{i:02}" for i in range(n)]


def channel_id(account_index: int, channel: int) -> str:
    return str(7_000_000 + account_index * 100 + channel)


def cluster_state(
    path: Path,
    emu: Emulator,
    names: Sequence[str],
    per_account: int,
    *,
    ttl: str = "20s",
    daemon: str = "",
) -> Path:
    """A state file of ``names`` accounts (each an org of its own, added to the emulator) with
    ``per_account`` channels each. The database comes from $WATCHKEEPER_DB, ``instance`` and
    ``lease`` from ``daemon``."""
    for name in names:
        emu.add_org(org_of(name))
    chans = [
        Chan(channel_id(i, c), ttl=ttl, account=name, name=f"{name}-{c}")
        for i, name in enumerate(names)
        for c in range(per_account)
    ]
    return write_state(path, emu.url, chans, daemon=daemon, accounts=names)


def agent_instance(call: Call) -> str | None:
    """The instance named in the User-Agent: ``watchkeeper/0.1.0 (host-a)`` -> ``host-a``."""
    agent = call.agent or ""
    return agent[agent.find("(") + 1 : -1] if agent.endswith(")") and "(" in agent else None


def stints(calls: Iterable[Call]) -> dict[str, list[tuple[str, datetime, datetime]]]:
    """Per org: maximal runs of consecutive calls (token refreshes aside) made by one instance,
    as (instance, first call, last call)."""
    runs: dict[str, list[tuple[str, datetime, datetime]]] = defaultdict(list)
    for call in sorted(calls, key=lambda c: c.at):
        who = agent_instance(call)
        if call.org is None or who is None:
            continue
        org_runs = runs[call.org]
        if org_runs and org_runs[-1][0] == who:
            org_runs[-1] = (who, org_runs[-1][1], call.at)
        else:
            org_runs.append((who, call.at, call.at))
    return runs


def most_concurrent_callers(calls: Iterable[Call]) -> int:
    """The largest number of instances calling Zoho for one account at the same moment: an
    instance is calling from its first to its last call of a run that no other instance's call
    interrupts; two such spans of one org that overlap are two callers at once."""
    worst = 0
    for runs in stints(calls).values():
        events = sorted([(start, 1) for _, start, _ in runs] + [(end, -1) for _, _, end in runs],
                        key=lambda e: (e[0], -e[1]))  # fmt: skip
        current = 0
        for _, step in events:
            current += step
            worst = max(worst, current)
    return worst


def double_renewals(calls: Iterable[Call], window: timedelta) -> int:
    """Renewals sent twice: two accepted PATCHes of one channel closer together than ``window``
    (a renewal window: a second one so soon renewed nothing that needed it)."""
    last: dict[str, datetime] = {}
    twice = 0
    for call in sorted(calls, key=lambda c: c.at):
        if call.method != "PATCH" or call.status >= 300:
            continue
        for cid in call.channel_ids:
            if cid in last and call.at - last[cid] < window:
                twice += 1
            last[cid] = call.at
    return twice


def coverage(
    emu: Emulator, org: str, cid: str, start: datetime, end: datetime
) -> tuple[float, list[tuple[datetime, datetime]]]:
    """The share of [start, end] in which the channel was live on the emulator, and the holes."""
    live = emu.live_intervals(cid, org)
    covered = timedelta(0)
    holes: list[tuple[datetime, datetime]] = []
    cursor = start
    for begin, finish in live:
        finish = finish or end
        lo, hi = max(begin, start), min(finish, end)
        if hi <= lo:
            continue
        if lo > cursor:
            holes.append((cursor, lo))
        covered += hi - lo
        cursor = max(cursor, hi)
    if cursor < end:
        holes.append((cursor, end))
    return covered / (end - start), holes


def writes_by(calls: Iterable[Call], instance: str, after: datetime) -> list[Call]:
    return [c for c in calls if c.method in WRITES and agent_instance(c) == instance and c.at > after]
