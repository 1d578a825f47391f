"""What ``reconcile_every`` buys: calls per channel-day against how long a channel deleted behind
the daemon's back stays down.

    python -m tests.bench.reconcile_tradeoff [--rules 30m/each 2h/each 4h/each 12h/each 30m]
                                             [--channels 1000] [--accounts 1] [--per-account]
                                             [--ttl 23h] [--days 3] [--deletions 20] [--seed 1]

A rule is ``EVERY[/FULL]``: each account is looked at every EVERY (``reconcile_every``) and listed
in full every FULL (``Policy.full_listing_every``), its other looks a one-page tally of its row
count; ``/each`` makes every look a full listing (the daemon before the tallies), no ``/FULL``
keeps the default. ``--per-account`` sets EVERY as each account's own ``reconcile_every``
(``[accounts.NAME]``) instead of ``[daemon]``'s; ``--accounts`` spreads the channels over that
many accounts, as the soak does.

Each rule runs twice on the soak's harness (simulated time, the real engine, store and client
against the emulator, the daemon's 60 s tick) without faults: once as it is (the steady state's
calls), and once with ``deletions`` channels, chosen and timed by the seed, deleted on Zoho after
the first day (what each costs on top: a tally that sees it lists the account in full, and a
POST re-creates it). Calls are the watch API's (GET, POST, PUT, PATCH and DELETE on
actions/watch), counted from the end of the first day (the creations are not the steady state):
neither token refreshes nor the backfill's records reads, as in the soak's report. A deletion's gap
runs from the deletion until the channel is live again, read from the emulator's live intervals.
Prints the README's trade-off table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from watchkeeper.config import format_duration, parse_duration
from watchkeeper.policy import Policy

from tests.soak.harness import MAX_SLEEP, Params, Simulation, Watchkeeper, logging_to, simulation
from tests.soak.profile import Action
from tests.soak.report import API_METHODS, holes
from tests.statefiles import org_of

WARM_UP = timedelta(days=1)
DEFAULT_FULL = Policy().full_listing_every


@dataclass(frozen=True, slots=True)
class Measured:
    calls_per_channel_day: float
    get_per_channel_day: float
    gaps_min: list[float]
    """One per deletion that found its channel live (one that had lapsed just then deletes nothing)."""


def measure(params: Params, deletions: int, workdir: Path) -> Measured:
    with (
        simulation(params, workdir / "channels.toml") as sim,
        logging_to(workdir / "watchkeeper.log"),
        ExitStack() as stack,
    ):
        steady = sim.start + WARM_UP
        actions = _deletions(sim, steady, deletions, random.Random(params.seed))
        sim.schedule = replace(sim.schedule, actions=actions)
        sim.drive("watchkeeper", Watchkeeper(sim, stack), tick=MAX_SLEEP)
        stack.close()
        end = sim.emu.now()
        skew = params.fault_profile.clock_skew
        calls = [
            c
            for c in sim.emu.calls
            if c.method in API_METHODS and c.path.endswith("/actions/watch") and c.at >= steady + skew
        ]
        gaps = []
        for action in actions:
            assert action.key is not None
            series = sim.emu.live_intervals(action.key[1], org=org_of(action.key[0]))
            when = action.at + skew
            hole = next((h for h in holes(series, end) if abs((h[0] - when).total_seconds()) <= 1), None)
            if hole is not None:
                gaps.append(((hole[1] or end) - hole[0]).total_seconds() / 60)
    channel_days = len(sim.keys) * (end - steady) / timedelta(days=1)
    gets = sum(1 for c in calls if c.method == "GET")
    return Measured(len(calls) / channel_days, gets / channel_days, gaps)


def _deletions(sim: Simulation, steady: datetime, count: int, rng: random.Random) -> tuple[Action, ...]:
    span = (sim.end - steady).total_seconds()
    picked = rng.sample(sim.keys, count)
    at = sorted(steady + timedelta(seconds=rng.uniform(0, span * 0.9)) for _ in picked)
    return tuple(Action(t, "delete", key) for t, key in zip(at, picked, strict=True))


def rule(text: str) -> tuple[str, timedelta | None]:
    """``EVERY[/FULL]`` -> (reconcile_every, full_listing_every: zero for ``each``, None default)."""
    every, _, full = text.partition("/")
    parse_duration(every)  # ValueError, worded for the command line
    if not full:
        return every, None
    return every, timedelta(0) if full == "each" else parse_duration(full)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.reconcile_tradeoff")
    parser.add_argument("--rules", nargs="+", type=rule, default=None)
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument(
        "--per-account", action="store_true", help="EVERY as each account's own reconcile_every"
    )
    parser.add_argument("--ttl", default="23h")
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--deletions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rules = args.rules or [rule(r) for r in ("30m/each", "2h/each", "4h/each", "12h/each", "30m")]
    head = (
        "`reconcile_every`",
        "full listing",
        "calls per channel-day",
        "of which GET",
        f"with {args.deletions} deletions",
        "deleted channel's gap, median / max",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for every, full in rules:
        params = Params(
            channels=args.channels,
            accounts=args.accounts,
            days=args.days,
            ttl=args.ttl,
            profile="none",
            seed=args.seed,
            reconcile_every=None if args.per_account else every,
            account_reconcile=every if args.per_account else None,
            full_listing_every=full,
        )
        with tempfile.TemporaryDirectory(prefix="tradeoff-") as tmp:
            steady = measure(params, 0, Path(tmp))
        with tempfile.TemporaryDirectory(prefix="tradeoff-") as tmp:
            deleting = measure(params, args.deletions, Path(tmp))
        gaps = deleting.gaps_min
        shown = f"{statistics.median(gaps):.0f} / {max(gaps):.0f} min" if gaps else "-"
        listing = "each look" if full == timedelta(0) else format_duration(full or DEFAULT_FULL)
        print(
            f"| {every} | {listing} | {steady.calls_per_channel_day:.4f} | "
            f"{steady.get_per_channel_day:.4f} | {deleting.calls_per_channel_day:.4f} | "
            f"{shown} ({len(gaps)} deleted) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
