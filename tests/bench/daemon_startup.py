"""Real-time figures of `watchkeeper run`: start to READY=1, and idle RSS.

    python -m tests.bench.daemon_startup [--channels 10 1000] [--runs 3] [--idle 10]

For each channel count: starts the emulator, spawns the daemon as a process with NOTIFY_SOCKET
bound here, times spawn -> READY=1 (interpreter start-up, imports, state file, database, first
pass started), waits for the first pass to create every channel, lets it idle, then reads VmRSS
from /proc. Prints one line per run and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from watchkeeper.emulator import Emulator

from tests.daemon_process import DaemonProcess
from tests.statefiles import Chan, write_state


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def measure(channels: int, idle: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, Emulator() as emu:
        chans = [Chan(str(20_000_000 + i), ttl="6d") for i in range(channels)]
        state = write_state(Path(tmp) / "channels.toml", emu.url, chans)
        daemon = DaemonProcess(state, watchdog_usec=None)
        try:
            daemon.wait_datagram("READY=1", timeout=60)
            ready = next(t for t, d in daemon.datagrams if d.startswith("READY=1")) - daemon.started
            daemon.wait_event("reconcile.finished", timeout=120)
            time.sleep(idle)
            return ready, rss_mb(daemon.proc.pid)
        finally:
            daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    for channels in args.channels:
        results = [measure(channels, args.idle) for _ in range(args.runs)]
        for i, (ready, rss) in enumerate(results, 1):
            print(
                f"{channels:>5} channels, run {i}: start to READY=1 {ready:.2f} s, idle RSS {rss:.1f} MB"
            )
        print(
            f"{channels:>5} channels, median: start to READY=1 "
            f"{statistics.median(r for r, _ in results):.2f} s, "
            f"idle RSS {statistics.median(m for _, m in results):.1f} MB"
        )


if __name__ == "__main__":
    main()
