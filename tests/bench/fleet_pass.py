"""The CPU of the engine's passes over a fleet, in process, on a simulated clock without latency.

    python -m tests.bench.fleet_pass [--accounts 3000] [--passes 60]

The fleet of fleet_10k (3 channels an account, 8-minute channels, 4-minute tokens) on one worker,
so that ``python -m cProfile -s cumulative -m tests.bench.fleet_pass`` sees every call: the first
pass (every account listed, its channels created), then ``--passes`` passes each run at the
engine's ``next_due``, as the daemon runs them, with the ``STATUS=`` summary it sends after each.
What grows with the accounts in a pass that renews a few channels is what a fleet pays at every
pass. Figures are the process's CPU, the emulator's included (it answers in the same process).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from watchkeeper import config, logs, runtime, service
from watchkeeper.emulator import Emulator

from tests.bench.fleet_10k import Fleet, channels
from tests.helpers import SimClock
from tests.statefiles import env as secrets_env
from tests.statefiles import org_of, write_state

T = TypeVar("T")


def cpu_ms(work: Callable[[], T]) -> tuple[float, T]:
    began = time.process_time()
    result = work()
    return 1000 * (time.process_time() - began), result


def run(accounts: int, passes: int, workdir: Path) -> dict[str, float]:
    fleet = Fleet(accounts=accounts, concurrency=1)
    clock = SimClock()
    with (workdir / "watchkeeper.log").open("w") as log:
        logs.configure("json", stream=log)
        lifetime = config.parse_duration(fleet.token_lifetime)
        with Emulator(access_token_lifetime=lifetime, clock=clock) as emu:
            for name in fleet.names[1:]:
                emu.add_org(org_of(name))
            path = write_state(
                workdir / "channels.toml",
                emu.url,
                channels(fleet),
                daemon="concurrency = 1\n",
                accounts=fleet.names,
            )
            state = config.load(path, environ={**os.environ, **secrets_env()})
            with runtime.open_engine(state, clock=clock) as engine:
                first, _ = cpu_ms(lambda: engine.run_due(clock()))
                due_ms, pass_ms, status_ms, renewed = [], [], [], []
                for _ in range(passes):
                    ms, due = cpu_ms(engine.next_due)
                    due_ms.append(ms)
                    clock.advance(max(due - clock(), timedelta(0)))
                    ms, report = cpu_ms(lambda: engine.run_due(clock()))
                    pass_ms.append(ms)
                    renewed.append(report.counts["renew"])
                    status_ms.append(cpu_ms(lambda: service.summary(engine, clock()))[0])
    return {
        "accounts": accounts,
        "first_pass_cpu_s": round(first / 1000, 2),
        "next_due_ms": round(statistics.median(due_ms), 1),
        "run_due_ms": round(statistics.median(pass_ms), 1),
        "status_ms": round(statistics.median(status_ms), 1),
        "renewed_per_pass": statistics.median(renewed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fleet_pass", description=__doc__)
    parser.add_argument("--accounts", type=int, default=3000)
    parser.add_argument("--passes", type=int, default=60)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleet-pass-") as tmp:
        figures = run(args.accounts, args.passes, Path(tmp))
    print(
        f"{figures['accounts']} accounts: first pass {figures['first_pass_cpu_s']} CPU s; then, "
        f"medians over {args.passes} passes renewing {figures['renewed_per_pass']:g} channels: "
        f"next_due {figures['next_due_ms']} ms, run_due {figures['run_due_ms']} ms, STATUS= "
        f"summary {figures['status_ms']} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
