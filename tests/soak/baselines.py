"""The naive policies watchkeeper is measured against, in the same harness and under the same faults.

Both drive watchkeeper.zoho.client.WatchClient directly (no engine, no store), as common integrations
do: one channel per request, each on its own timer, the expiry asked for computed on the local
clock, the expiry Zoho grants never read, no listing. A restart re-subscribes every channel by POST
(an integration subscribes on start-up; it keeps no state) and restarts the timers.

- ``fixed``: every channel renewed by PATCH (the full item) every half of its ttl. A failed call is
  not retried before the next period; a PATCH Zoho answers NOT_SUBSCRIBED is followed at once by a
  POST (that answer is explicit, not a failure).
- ``zoho-advice``: every channel re-enabled by POST every 23h55m, asking for a one-day expiry (the
  lifetime Zoho's advice is written for). A failed call waits for the next period.
"""

from __future__ import annotations

import heapq
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import httpx
from watchkeeper.config import DesiredState
from watchkeeper.model import ChannelSpec, WatchItem
from watchkeeper.runtime import make_client
from watchkeeper.zoho.client import DEFAULT_TIMEOUT, WatchClient
from watchkeeper.zoho.errors import ZohoError

from tests.helpers import SimClock
from tests.soak.harness import Params, Progress, RunResult, simulation

Kind = Literal["fixed", "zoho-advice"]
KINDS: tuple[Kind, ...] = ("fixed", "zoho-advice")
ADVICE_PERIOD = timedelta(hours=23, minutes=55)
ADVICE_LIFETIME = timedelta(days=1)


class Naive:
    """One naive integration: a timer per channel, one request per channel."""

    def __init__(self, kind: Kind, state: DesiredState, http: httpx.Client, clock: SimClock) -> None:
        self.kind = kind
        self.state = state
        self.specs = state.channels
        self.http = http
        self.clock = clock
        self.due: list[tuple[datetime, int]] = []
        self.clients: dict[str, WatchClient] = {}
        self.cpu = 0.0

    def period(self, spec: ChannelSpec) -> timedelta:
        return spec.ttl / 2 if self.kind == "fixed" else ADVICE_PERIOD

    def lifetime(self, spec: ChannelSpec) -> timedelta:
        return spec.ttl if self.kind == "fixed" else ADVICE_LIFETIME

    def restart(self, now: datetime) -> None:
        """(Re)start: fresh clients, every channel subscribed by POST, timers from now."""
        self.clients = {
            name: make_client(account, self.http, self.clock)  # no token cache: a fresh integration
            for name, account in self.state.accounts.items()
        }
        self.due = []
        for index, spec in enumerate(self.specs):
            self._call("POST", spec, now)
            heapq.heappush(self.due, (now + self.period(spec), index))

    def next_due(self) -> datetime | None:
        return self.due[0][0] if self.due else None

    def run_due(self, now: datetime) -> None:
        while self.due and self.due[0][0] <= now:
            _, index = heapq.heappop(self.due)
            spec = self.specs[index]
            if self.kind == "fixed":
                if self._call("PATCH", spec, now) == "gone":
                    self._call("POST", spec, now)
            else:
                self._call("POST", spec, now)
            heapq.heappush(self.due, (now + self.period(spec), index))

    def _call(self, method: Literal["POST", "PATCH"], spec: ChannelSpec, now: datetime) -> str:
        """One channel, one request: "ok", "gone" (Zoho no longer has it) or "failed"."""
        client = self.clients[spec.account]
        item = WatchItem(spec, now + self.lifetime(spec))
        began = time.thread_time()
        try:
            answer = client.write(method, [item])
        except ZohoError:
            return "failed"
        finally:
            self.cpu += time.thread_time() - began
        if answer.error is not None:
            return "failed"
        (result,) = answer.results
        if result.ok:
            return "ok"
        return "gone" if result.not_found else "failed"


def run_baseline(
    kind: Kind, params: Params, workdir: Path, progress: Progress | None = None
) -> RunResult:
    """A naive policy through the same simulated days and faults as ``run_watchkeeper``."""
    wall = time.perf_counter()
    with (
        simulation(params, workdir / f"{kind}.toml") as sim,
        httpx.Client(timeout=DEFAULT_TIMEOUT) as http,
    ):
        naive = Naive(kind, sim.state, http, sim.clock)
        naive.restart(sim.start)
        sim.drive(kind, naive, progress)
        return sim.result(kind, naive.cpu, time.perf_counter() - wall)
