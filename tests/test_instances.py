"""Several `watchkeeper run` processes on one real PostgreSQL server (DESIGN.md section 8): the
accounts split between them, a killed instance's accounts taken over, leases released on SIGTERM,
a paused holder fenced out, different state files noticed, the database lost and found again.
What happened at Zoho is read from the emulator's record (each call names its instance)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from watchkeeper.emulator import Emulator
from watchkeeper.model import parse_instant

from tests.cluster import (
    accounts,
    agent_instance,
    cluster_state,
    double_renewals,
    most_concurrent_callers,
    writes_by,
)
from tests.daemon_process import DaemonProcess
from tests.pg_server import PASSWORD, PgServer, binaries
from tests.ports import free_port
from tests.statefiles import SECRETS
from tests.statefiles import env as secrets_env

pytestmark = pytest.mark.slow

LEASE = 4.0
RENEWAL_WINDOW = timedelta(seconds=5)
"""A 20 s channel renews 12-14 s into its life: two PATCHes closer than this renewed it twice."""
FAST = 'reconcile_every = "10s"\nretry_initial = "1s"\nretry_max = "4s"\nlease = "4s"'


@pytest.fixture
def live_emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


class Fleet:
    """Instances of one state file's accounts, each with its own state file naming it."""

    def __init__(self, tmp_path: Path, emu: Emulator, url: str, daemons: list[DaemonProcess]) -> None:
        self.tmp_path, self.emu, self.url, self.daemons = tmp_path, emu, url, daemons
        self.names = accounts(4)

    def state(self, instance: str, per_account: int = 1, metrics: int | None = None) -> Path:
        folder = self.tmp_path / instance
        folder.mkdir(exist_ok=True)
        daemon = f'{FAST}\ninstance = "{instance}"'
        if metrics is not None:
            daemon += f'\nmetrics = "127.0.0.1:{metrics}"'
        return cluster_state(folder / "channels.toml", self.emu, self.names, per_account, daemon=daemon)

    @property
    def env(self) -> dict[str, str]:
        """The database as a secret reference, so its password comes from the environment."""
        return {"WATCHKEEPER_DB": "env:WK_TEST_DB", "WK_TEST_DB": self.url}

    def start(self, instance: str, per_account: int = 1, metrics: int | None = None) -> DaemonProcess:
        daemon = DaemonProcess(self.state(instance, per_account, metrics), extra_env=self.env)
        self.daemons.append(daemon)
        return daemon

    def command(self, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "watchkeeper", "--state", str(state), *args],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, **secrets_env(), **self.env},
        )  # fmt: skip


@pytest.fixture
def fleet(tmp_path: Path, live_emulator: Emulator, pg_url: str, daemons: list[DaemonProcess]) -> Fleet:
    return Fleet(tmp_path, live_emulator, pg_url, daemons)


def acquired(daemon: DaemonProcess, after: int = 0) -> set[str]:
    return {e["account"] for e in daemon.events[after:] if e.get("event") == "lease.acquired"}


def wait_holding(daemon: DaemonProcess, count: int, timeout: float = 30) -> None:
    daemon.wait_datagram(f"STATUS=holding {count} of", timeout=timeout, after=len(daemon.datagrams))


def assert_no_password(*daemons: DaemonProcess) -> None:
    for daemon in daemons:
        printed = "\n".join(daemon.lines) + "".join(d for _, d in daemon.datagrams)
        assert PASSWORD not in printed
        for secret in SECRETS:
            assert secret not in printed


def test_a_joining_instance_gets_its_share_and_a_killed_ones_accounts_are_taken_over(
    fleet: Fleet,
) -> None:
    a = fleet.start("A")
    wait_holding(a, 4)
    for name in fleet.names:
        a.wait_event("channel.created", account=name, timeout=30)

    b = fleet.start("B")  # joins: A hands back the excess after its pass, B takes it
    b.wait_event("lease.acquired", reason="free", timeout=30)
    wait_holding(b, 2)
    released = a.wait_event("lease.released", reason="rebalance", timeout=10)
    assert released["instance"] == "A"
    wait_holding(a, 2)
    taken_by_b = acquired(b)
    assert len(taken_by_b) == 2

    mark = len(a.events)
    b.signal(signal.SIGKILL)
    b.proc.wait()
    killed = time.monotonic()
    for name in taken_by_b:
        got = a.wait_event("lease.acquired", account=name, after=mark, timeout=3 * LEASE)
        assert (got["reason"], got["previous"]) == ("expired", "B")
    failover = time.monotonic() - killed
    assert failover <= LEASE + 3  # one lease, one renewal tick, the daemon's own tick
    wait_holding(a, 4)

    calls = fleet.emu.calls
    assert {agent_instance(c) for c in calls if c.method in {"POST", "PATCH"}} <= {"A", "B"}
    assert most_concurrent_callers(calls) == 1
    assert double_renewals(calls, window=RENEWAL_WINDOW) == 0
    assert a.count("lease.lost") == 0
    status = fleet.command(a.state, "status", "--json")
    assert PASSWORD not in status.stdout + status.stderr
    rows = json.loads(status.stdout)["accounts"]
    assert [(r["account"], r["holder"]) for r in rows] == [(n, "A") for n in fleet.names]
    assert all(r["lease_expires_at"] for r in rows)
    assert_no_password(a)


def test_sigterm_hands_the_leases_over_at_once(fleet: Fleet) -> None:
    a = fleet.start("A")
    wait_holding(a, 4)
    b = fleet.start("B")
    wait_holding(b, 2)
    wait_holding(a, 2)
    mark = len(a.events)
    stopped = time.monotonic()
    assert b.stop() == 0
    released = [e for e in b.events if e.get("event") == "lease.released"]
    assert {e["reason"] for e in released} == {"shutdown"}
    assert len(released) == 2
    for e in released:
        got = a.wait_event("lease.acquired", account=e["account"], after=mark, timeout=LEASE)
        assert got["reason"] == "free"  # released, not expired
    assert time.monotonic() - stopped < LEASE  # no waiting for the lease to run out
    assert_no_password(a, b)


def test_each_instance_s_lease_gauge_shows_the_accounts_it_holds(fleet: Fleet) -> None:
    ports = {"A": free_port(), "B": free_port()}
    a = fleet.start("A", metrics=ports["A"])
    wait_holding(a, 4)
    b = fleet.start("B", metrics=ports["B"])
    wait_holding(b, 2)
    wait_holding(a, 2)

    def held() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for instance, port in ports.items():
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            (family,) = [f for f in text_string_to_metric_families(text)
                         if f.name == "watchkeeper_account_lease_held"]  # fmt: skip
            assert {s.labels["account"] for s in family.samples} == set(fleet.names)
            out[instance] = {s.labels["account"] for s in family.samples if s.value == 1.0}
        return out

    def split() -> dict[str, set[str]] | None:
        shown = held()
        return shown if len(shown["A"]) == len(shown["B"]) == 2 else None

    shown = a.wait_for(split, 10, "two accounts shown held by each")
    assert shown["A"].isdisjoint(shown["B"])
    status = json.loads(fleet.command(a.state, "status", "--json").stdout)["accounts"]
    assert {r["account"]: r["holder"] for r in status} == {
        account: instance for instance, names in shown.items() for account in names
    }
    assert a.stop() == 0 == b.stop()


def test_a_paused_holder_is_fenced_out_and_calls_nothing_after_its_lease(fleet: Fleet) -> None:
    """SIGSTOP past the lease (a VM paused, a long GC): B takes the accounts; A, woken, finds its
    leases gone, logs lease.lost and neither writes its rows nor calls Zoho for them."""
    a = fleet.start("A")
    wait_holding(a, 4)
    for name in fleet.names:
        a.wait_event("channel.created", account=name, timeout=30)
    b = fleet.start("B")
    wait_holding(b, 2)
    wait_holding(a, 2)
    a.signal(signal.SIGSTOP)
    paused = fleet.emu.now()
    try:
        wait_holding(b, 4, timeout=4 * LEASE)
    finally:
        a.signal(signal.SIGCONT)
    lost = a.wait_event("lease.lost", timeout=10)
    assert lost["instance"] == "A"
    mark = a.events.index(lost)
    # The share is 2 again with A back: B hands two accounts back, A takes them with a new epoch.
    wait_holding(a, 2, timeout=20)
    time.sleep(LEASE)
    retaken = {
        e["account"]: parse_instant(e["timestamp"])
        for e in a.events[mark:]
        if e.get("event") == "lease.acquired"
    }
    for call in writes_by(fleet.emu.calls, "A", after=paused):
        assert call.org in retaken, call.org  # nothing for an account it had lost ...
        assert call.at >= retaken[call.org]  # ... nor before it held that one's lease again
    assert most_concurrent_callers(fleet.emu.calls) == 1


def test_instances_running_different_state_files_are_told(fleet: Fleet) -> None:
    a = fleet.start("A")
    wait_holding(a, 4)
    b = fleet.start("B", per_account=2)  # one more channel per account
    warned = a.wait_event("config.diverged", timeout=20)
    assert warned["instances"] == ["B"]
    assert b.wait_event("config.diverged", timeout=20)["instances"] == ["A"]


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A PostgreSQL server of the test's own, to stop and start (the session's is shared)."""
    bindir = binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries")
    server = PgServer(bindir).init()
    try:
        yield server
    finally:
        server.destroy()


def test_the_database_going_away_stops_every_write_until_it_is_back(
    tmp_path: Path, live_emulator: Emulator, daemons: list[DaemonProcess], own_server: PgServer
) -> None:
    server = own_server
    fleet = Fleet(tmp_path, live_emulator, server.url(server.fresh_database()), daemons)
    a = fleet.start("A")
    wait_holding(a, 4)
    for name in fleet.names:
        a.wait_event("channel.created", account=name, timeout=30)
    server.stop("immediate")
    down = fleet.emu.now()
    a.wait_event("store.unavailable", timeout=20)
    time.sleep(8)
    up = fleet.emu.now()
    server.start()
    a.wait_event("store.recovered", timeout=30)
    wait_holding(a, 4, timeout=30)
    # A write goes out only after its intent was recorded: none while the server was down
    # (a second of grace for a request whose intent committed just before the stop).
    writes = [c for c in writes_by(fleet.emu.calls, "A", after=down) if c.at < up]
    assert [c for c in writes if (c.at - down).total_seconds() > 1] == []
    for name in fleet.names:
        a.wait_renewed(account=name, timeout=40)
    assert a.proc.poll() is None
    assert_no_password(a)


def test_a_database_unreachable_at_start_is_retried_not_crash_looped(
    tmp_path: Path, live_emulator: Emulator, daemons: list[DaemonProcess], own_server: PgServer
) -> None:
    server = own_server
    url = server.url(server.fresh_database())
    server.stop()
    fleet = Fleet(tmp_path, live_emulator, url, daemons)
    a = fleet.start("A")
    first = a.wait_event("store.unavailable", timeout=20)
    assert f"127.0.0.1:{server.port} cannot be reached" in first["error"]
    a.wait_datagram("READY=1", timeout=10)  # up, and saying what it waits for
    a.wait_datagram("STATUS=waiting for the database", timeout=10)
    a.wait_event("store.unavailable", attempt=2, timeout=20)
    assert a.proc.poll() is None
    server.start()
    wait_holding(a, 4, timeout=40)
    a.wait_event("channel.created", timeout=30)
    assert_no_password(a)


def test_apply_on_a_shared_database_acts_alone_or_leaves_it_to_the_daemons(fleet: Fleet) -> None:
    state = fleet.state("A")
    applied = fleet.command(state, "apply", "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["created"] == 4
    assert {agent_instance(c) for c in fleet.emu.calls if c.method == "POST"} == {"A"}
    rows = json.loads(fleet.command(state, "status", "--json").stdout)["accounts"]
    assert {r["holder"] for r in rows} == {None}  # released when it was done

    a = fleet.start("A")
    wait_holding(a, 4)
    refused = fleet.command(state, "apply")
    assert refused.returncode == 1
    assert "A run on postgresql://watchkeeper@127.0.0.1" in refused.stderr
    assert PASSWORD not in refused.stderr
