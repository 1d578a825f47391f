"""Real-time figures of the metrics listener: how long a scrape of /metrics takes, and how much
idle RSS the listener adds.

    python -m tests.bench.metrics_scrape [--channels 1000] [--scrapes 50] [--runs 3] [--idle 10]

For each run: starts the emulator and `watchkeeper run` on ``--channels`` channels twice, once
without ``[daemon].metrics`` and once with it; waits for the first pass to create every channel,
lets the daemon idle and reads VmRSS from /proc; with metrics on, then times ``--scrapes``
sequential GETs of /metrics over loopback (each one reads the store and renders every series).
Prints figures only: the targets (a scrape under 50 ms at 1,000 channels, at most 5 MB of RSS)
are read by people, not asserted.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from watchkeeper.emulator import Emulator

from tests.bench.daemon_startup import rss_mb
from tests.daemon_process import DaemonProcess
from tests.statefiles import Chan, write_state


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(channels: int, idle: float, scrapes: int, metrics: bool) -> tuple[float, list[float], int]:
    """Idle RSS (MB), the scrape times (s) and the size of one exposition (bytes)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, Emulator() as emu:
        chans = [Chan(str(20_000_000 + i), ttl="6d", name=f"bench-{i}") for i in range(channels)]
        extra = f'metrics = "127.0.0.1:{port}"' if metrics else ""
        state = write_state(Path(tmp) / "channels.toml", emu.url, chans, daemon=extra)
        daemon = DaemonProcess(state, watchdog_usec=None)
        try:
            daemon.wait_event("reconcile.finished", timeout=180)
            time.sleep(idle)
            rss = rss_mb(daemon.proc.pid)
            times: list[float] = []
            size = 0
            if metrics:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
                    for _ in range(scrapes):
                        started = time.perf_counter()
                        response = http.get("/metrics")
                        times.append(time.perf_counter() - started)
                        response.raise_for_status()
                        size = len(response.content)
            return rss, times, size
        finally:
            daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    growth: list[float] = []
    medians: list[float] = []
    for i in range(1, args.runs + 1):
        rss_off, _, _ = run(args.channels, args.idle, 0, metrics=False)
        rss_on, times, size = run(args.channels, args.idle, args.scrapes, metrics=True)
        times_ms = sorted(t * 1000 for t in times)
        median = statistics.median(times_ms)
        p95 = times_ms[int(0.95 * (len(times_ms) - 1))]
        growth.append(rss_on - rss_off)
        medians.append(median)
        print(
            f"run {i}: {args.channels} channels; /metrics ({size / 1024:.0f} KiB) median "
            f"{median:.1f} ms, p95 {p95:.1f} ms, max {times_ms[-1]:.1f} ms; idle RSS "
            f"{rss_off:.1f} MB without metrics, {rss_on:.1f} MB with (+{rss_on - rss_off:.1f} MB)"
        )
    print(
        f"median of {args.runs} runs: scrape {statistics.median(medians):.1f} ms (target < 50 ms), "
        f"RSS growth {statistics.median(growth):+.1f} MB (target <= 5 MB)"
    )


if __name__ == "__main__":
    main()
