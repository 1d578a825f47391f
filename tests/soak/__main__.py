"""``python -m tests.soak``: see tests/soak/__init__.py."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from watchkeeper import logs

from tests.soak.baselines import KINDS, run_baseline
from tests.soak.harness import Params, run_watchkeeper
from tests.soak.profile import PROFILES
from tests.soak.report import summarize, table, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak",
        description="Days of simulated operation under faults: watchkeeper against naive policies.",
    )
    defaults = Params()
    parser.add_argument("--channels", type=int, default=defaults.channels)
    parser.add_argument("--modules", type=int, default=defaults.modules, help="modules per channel")
    parser.add_argument("--accounts", type=int, default=defaults.accounts)
    parser.add_argument("--days", type=float, default=defaults.days, help="simulated days")
    parser.add_argument("--ttl", default=defaults.ttl, help="requested channel lifetime, e.g. 23h")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=defaults.profile)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--reconcile-every", default=None, help="the state file's reconcile_every (default 30m)"
    )
    parser.add_argument(
        "--account-reconcile",
        default=None,
        help="every account's own reconcile_every ([accounts.NAME]; default none: [daemon]'s)",
    )
    parser.add_argument(
        "--change-every",
        default=defaults.change_every,
        help="one record change per watched module this often (default 15m; off for none)",
    )
    parser.add_argument("--no-backfill", action="store_true", help="channels without backfill = true")
    parser.add_argument(
        "--baselines",
        default=",".join(KINDS),
        help=f"comma-separated, from {', '.join(KINDS)}; empty for none",
    )
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of the table")
    parser.add_argument(
        "--workdir", type=Path, help="keep the state files, database and log here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    kinds = [k for k in args.baselines.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown baseline(s) {', '.join(unknown)}: choose from {', '.join(KINDS)}")
    try:
        params = Params(
            channels=args.channels,
            modules=args.modules,
            accounts=args.accounts,
            days=args.days,
            ttl=args.ttl,
            profile=args.profile,
            seed=args.seed,
            reconcile_every=args.reconcile_every,
            account_reconcile=args.account_reconcile,
            backfill=not args.no_backfill,
            change_every=None if args.change_every == "off" else args.change_every,
        )
    except ValueError as exc:
        parser.error(str(exc))

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        # stdout carries the table or the JSON and nothing else: the baselines' clients log to
        # stderr (JSON, instants in ISO 8601), watchkeeper's engine to workdir/watchkeeper.log.
        logs.configure("json", "warning", stream=sys.stderr, journal=False)
        results = [run_watchkeeper(params, workdir, progress)]
        results += [run_baseline(kind, params, workdir, progress) for kind in kinds]
    summaries = [summarize(result) for result in results]
    goals = targets(summaries)
    if args.json:
        out: dict[str, Any] = {
            "watchkeeper": summaries[0],
            "baselines": {s["name"]: s for s in summaries[1:]},
            "targets": goals,
        }
        print(json.dumps(out, indent=2, default=str))
    else:
        print(table(summaries, goals))
    return 0 if goals["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
