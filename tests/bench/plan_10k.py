"""`watchkeeper plan` wall time over N channels (default 10,000) against the emulator.

    python -m tests.bench.plan_10k [--channels 10000] [--runs 3]

Starts the emulator on loopback, writes a state file with N channels (two modules each), creates
them with one `watchkeeper apply`, then times `watchkeeper plan` as a separate process (the figure
an operator sees, interpreter start-up included) and prints one line per run and the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from watchkeeper.emulator import Emulator

from tests.statefiles import Chan, env, write_state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Emulator() as emu:
        chans = [Chan(str(10_000_000 + i), ttl="6d") for i in range(args.channels)]
        state = write_state(Path(tmp) / "channels.toml", emu.url, chans)
        run_env = {**os.environ, **env()}

        def watchkeeper(*argv: str) -> tuple[float, int]:
            started = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "watchkeeper.cli",
                    "--state",
                    str(state),
                    "--log-level",
                    "warning",
                    *argv,
                ],
                env=run_env,
                capture_output=True,
                check=False,
            )
            return time.perf_counter() - started, proc.returncode

        seconds, code = watchkeeper("apply")
        print(f"apply  {args.channels} channels: {seconds:.2f} s (exit {code})")
        times = []
        for i in range(args.runs):
            seconds, code = watchkeeper("plan")
            times.append(seconds)
            print(f"plan   {args.channels} channels, run {i + 1}: {seconds:.2f} s (exit {code})")
        print(f"plan   median {statistics.median(times):.2f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
