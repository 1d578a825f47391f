"""What ``reconcile_every`` buys: calls per channel-day against how long a channel deleted behind
the daemon's back stays down.

    python -m tests.bench.reconcile_tradeoff [--every 30m 2h 4h 12h] [--channels 1000]
                                             [--ttl 23h] [--days 3] [--deletions 20] [--seed 1]

The soak's harness (simulated time, the real engine, store and client against the emulator, the
daemon's 60 s tick) without faults; ``deletions`` channels, chosen and timed by the seed, are
deleted on Zoho after the first day. Calls count from the end of the first day (the creations are
not the steady state); a deletion's gap runs from the deletion until the channel is live again,
read from the emulator's live intervals. Prints the README's trade-off table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from contextlib import ExitStack
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.soak.harness import MAX_SLEEP, Params, Watchkeeper, logging_to, simulation
from tests.soak.profile import Action
from tests.soak.report import API_METHODS, holes
from tests.statefiles import org_of

WARM_UP = timedelta(days=1)


def measure(params: Params, deletions: int, workdir: Path) -> dict[str, Any]:
    with (
        simulation(params, workdir / "channels.toml") as sim,
        logging_to(workdir / "watchkeeper.log"),
        ExitStack() as stack,
    ):
        rng = random.Random(params.seed)
        steady = sim.start + WARM_UP
        span = (sim.end - steady).total_seconds()
        picked = rng.sample(sim.keys, deletions)
        at = sorted(steady + timedelta(seconds=rng.uniform(0, span * 0.9)) for _ in picked)
        actions = tuple(Action(t, "delete", key) for t, key in zip(at, picked, strict=True))
        sim.schedule = replace(sim.schedule, actions=actions)
        policy = Watchkeeper(sim, stack)
        sim.drive("watchkeeper", policy, tick=MAX_SLEEP)
        stack.close()
        end = sim.emu.now()
        skew = params.fault_profile.clock_skew
        calls = [c for c in sim.emu.calls if c.method in API_METHODS and c.at >= steady + skew]
        gaps = []
        for action in actions:
            assert action.key is not None
            series = sim.emu.live_intervals(action.key[1], org=org_of(action.key[0]))
            when = action.at + skew
            hole = next((h for h in holes(series, end) if abs((h[0] - when).total_seconds()) <= 1), None)
            if hole is not None:  # None: it had lapsed just then, and nothing was deleted
                gaps.append(((hole[1] or end) - hole[0]).total_seconds() / 60)
    channel_days = len(sim.keys) * (end - steady) / timedelta(days=1)
    return {
        "reconcile_every": params.reconcile_every,
        "calls_per_channel_day": len(calls) / channel_days,
        "get_per_channel_day": sum(1 for c in calls if c.method == "GET") / channel_days,
        "deleted": len(gaps),
        "gap_min": {
            "median": statistics.median(gaps) if gaps else None,
            "max": max(gaps, default=None),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.reconcile_tradeoff")
    parser.add_argument("--every", nargs="+", default=["30m", "2h", "4h", "12h"])
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--ttl", default="23h")
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--deletions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    head = ("`reconcile_every`", "calls per channel-day", "of which GET", "deleted channel's gap")
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|")
    for every in args.every:
        params = Params(
            channels=args.channels,
            days=args.days,
            ttl=args.ttl,
            profile="none",
            seed=args.seed,
            reconcile_every=every,
        )
        with tempfile.TemporaryDirectory(prefix="tradeoff-") as tmp:
            row = measure(params, args.deletions, Path(tmp))
        gap = row["gap_min"]
        shown = "-" if gap["median"] is None else f"{gap['median']:.0f} / {gap['max']:.0f} min"
        print(
            f"| {every} | {row['calls_per_channel_day']:.4f} | {row['get_per_channel_day']:.4f} | "
            f"{shown} ({row['deleted']} deleted) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
