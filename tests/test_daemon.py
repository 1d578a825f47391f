"""`watchkeeper run` as a process against the emulator (real clock, channels of 20 s): no lapse,
reloads, sd_notify, journald prefixes, outages, restarts, and no secret in anything it prints."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from watchkeeper.emulator import Emulator, Fault
from watchkeeper.model import parse_instant

from tests.daemon_process import DaemonProcess, start, watchkeeper
from tests.statefiles import SECRETS, Chan, write_state

pytestmark = pytest.mark.slow

TTL = "20s"
FAST = 'reconcile_every = "10s"\nretry_initial = "1s"\nretry_max = "4s"'


@pytest.fixture
def live_emulator(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    with Emulator(**getattr(request, "param", {})) as emu:
        yield emu


def assert_no_secrets(daemon: DaemonProcess, emu: Emulator, stderr: str = "") -> None:
    printed = "\n".join(daemon.lines) + stderr + "".join(d for _, d in daemon.datagrams)
    for secret in SECRETS:
        assert secret not in printed
    for token in emu.access_tokens():
        assert token not in printed


def methods_for(emu: Emulator, channel_id: str) -> list[str]:
    return [c.method for c in emu.calls if channel_id in c.channel_ids]


def three_lifetimes(tmp_path: Path) -> None:
    with Emulator(access_token_lifetime=timedelta(seconds=25)) as emu:
        daemons: list[DaemonProcess] = []
        try:
            keep_alive_scenario(tmp_path, emu, daemons)
        finally:
            for daemon in daemons:
                daemon.stop()


def keep_alive_scenario(tmp_path: Path, emu: Emulator, daemons: list[DaemonProcess]) -> None:
    chans = [Chan(str(1000 + i), ttl=TTL, name=f"c{i}") for i in range(3)]
    state = write_state(tmp_path / "channels.toml", emu.url, chans, daemon=FAST)
    daemon = start(daemons, state)
    daemon.wait_datagram("READY=1", timeout=15)
    began = emu.now()
    for cid in ("1000", "1001", "1002"):
        daemon.wait_event("channel.created", channel_id=cid)

    # A broken state file on SIGHUP: not applied, the daemon keeps running and renewing.
    time.sleep(4)
    mark = len(daemon.datagrams)
    state.write_text(state.read_text().replace('"Deals.all"', '"Deals.everything"'))
    daemon.wait_event("config.invalid", timeout=10)  # seen on disk first
    daemon.signal(signal.SIGHUP)
    reloading = daemon.wait_datagram("RELOADING=1", after=mark)
    assert "MONOTONIC_USEC=" in reloading
    daemon.wait_datagram("READY=1", after=mark + 1)
    renewed_before = len(daemon.renewed())
    daemon.wait_for(lambda: len(daemon.renewed()) > renewed_before + 2, 25, "renewals")

    # Saving a valid file (atomically, no signal) adds a channel.
    new = tmp_path / "channels.toml.new"
    write_state(new, emu.url, [*chans, Chan("1003", ttl=TTL)], daemon=FAST)
    new.replace(state)
    daemon.wait_event("channel.created", channel_id="1003", timeout=10)

    # An empty channel list deletes nothing, and the channels stay alive meanwhile.
    write_state(new, emu.url, [], daemon=FAST)
    new.replace(state)
    daemon.wait_event("config.refused", timeout=10, reason="empty")
    time.sleep(25)  # longer than a lifetime
    assert set(emu.channels()) == {"1000", "1001", "1002", "1003"}
    write_state(new, emu.url, [*chans, Chan("1003", ttl=TTL)], daemon=FAST)
    new.replace(state)

    # Over three lifetimes and more: each channel was live all along, renewed by PATCH only.
    daemon.wait_for(lambda: emu.now() - began > timedelta(seconds=62), 70, "three lifetimes")
    for cid in ("1000", "1001", "1002"):
        intervals = emu.live_intervals(cid)
        assert len(intervals) == 1, intervals
        assert intervals[0][1] is None
        assert {m for m in methods_for(emu, cid)} == {"POST", "PATCH"}
        assert methods_for(emu, cid).count("POST") == 1
    assert "PUT" not in {c.method for c in emu.calls}
    assert not [c for c in emu.calls if c.status == 401]  # expiring tokens refreshed, no 401 loop
    assert emu.refreshes() >= 2
    assert "DELETE" not in {c.method for c in emu.calls}

    statuses = [d for _, d in daemon.datagrams if d.startswith("STATUS=")]
    assert any(d.startswith("STATUS=4 active, 0 at risk, next renewal in ") for d in statuses), statuses[
        -3:
    ]
    pings = [t for t, d in daemon.datagrams if d == "WATCHDOG=1"]
    assert len(pings) >= 20
    assert max(b - a for a, b in itertools.pairwise(pings)) < 4

    assert daemon.stop() == 0
    assert daemon.datagrams[-1][1] == "STOPPING=1"
    assert daemon.events[-1]["event"] == "daemon.stopping"
    assert_no_secrets(daemon, emu, daemon.stderr)


@pytest.fixture(scope="module", autouse=True)
def long_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future[None]]:
    """The three-lifetime scenario takes a minute of real time: it starts with this module and
    runs beside the shorter tests (each has its own emulator and daemon); the last test waits for
    it and re-raises whatever it asserted."""
    with ThreadPoolExecutor(1, thread_name_prefix="three-lifetimes") as pool:
        yield pool.submit(three_lifetimes, tmp_path_factory.mktemp("three-lifetimes"))


def test_journald_prefixes_lock_and_apply_while_running(
    tmp_path: Path, live_emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    emu = live_emulator
    emu.add_fault(Fault(status=500, methods=frozenset({"POST"}), count=4))  # and its retries
    state = write_state(tmp_path / "channels.toml", emu.url, [Chan("2000", ttl=TTL)], daemon=FAST)
    daemon = start(daemons, state, extra_env={"JOURNAL_STREAM": "8:12345"})
    daemon.wait_event("channel.created", channel_id="2000", timeout=20)

    second = watchkeeper(state, "run")
    assert second.returncode == 1
    assert "is held by pid" in second.stdout
    applied = watchkeeper(state, "apply")
    assert applied.returncode == 1
    assert "a running daemon applies the state file itself" in applied.stderr

    assert daemon.stop() == 0
    assert daemon.lines
    assert all(line[:3] in {"<6>", "<4>", "<3>"} for line in daemon.lines)
    warnings = [line for line in daemon.lines if '"level": "warning"' in line]
    assert warnings
    assert all(line.startswith("<4>") for line in warnings)
    assert any(json.loads(line[3:])["event"] == "api.retry" for line in warnings)


def test_invalid_state_at_start_exits_78(tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    state = write_state(
        tmp_path / "channels.toml", "http://127.0.0.1:9", [Chan("3000", events=["Nope"])]
    )
    daemon = start(daemons, state)
    assert daemon.proc.wait(30) == 78
    event = daemon.wait_event("config.invalid", timeout=5)
    assert "channels[0].events[0]" in event["errors"][0]


def test_outage_longer_than_the_lifetime_is_a_gap_matching_zoho(
    tmp_path: Path, live_emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    emu = live_emulator
    state = write_state(tmp_path / "channels.toml", emu.url, [Chan("4000", ttl="10s")], daemon=FAST)
    daemon = start(daemons, state)
    daemon.wait_event("channel.created", channel_id="4000", timeout=20)
    emu.add_fault(Fault(status=503, paths="any", end=emu.now() + timedelta(seconds=16)))
    lapsed = daemon.wait_event("channel.lapsed", channel_id="4000", timeout=30)
    recovered = daemon.wait_event("channel.recovered", channel_id="4000", timeout=30)
    assert recovered["start"] == lapsed["start"]
    assert daemon.stop() == 0

    gaps = watchkeeper(state, "gaps", "--json", check=True)
    (gap,) = json.loads(gaps.stdout)["gaps"]
    truth = emu.live_intervals("4000")
    assert len(truth) == 2
    true_start, true_end = truth[0][1], truth[1][0]
    assert true_start is not None
    assert abs((parse_instant(gap["start"]) - true_start).total_seconds()) <= 2
    assert abs((parse_instant(gap["end"]) - true_end).total_seconds()) <= 2


def test_rate_limit_retry_after_is_honoured(
    tmp_path: Path, live_emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    """Honoured as long as it ends before the channel's emergency point (1/20 of its 60 s before
    expiry, 15 s after the latest renewal time): a pause that outlasted it would be capped there
    (test_engine has that case)."""
    emu = live_emulator
    state = write_state(tmp_path / "channels.toml", emu.url, [Chan("5000", ttl="60s")], daemon=FAST)
    daemon = start(daemons, state)
    daemon.wait_event("channel.created", channel_id="5000", timeout=20)
    emu.add_fault(Fault(status=429, retry_after=6, methods=frozenset({"PATCH"}), count=1))
    limited = daemon.wait_event("api.rate_limited", timeout=70)
    assert limited["retry_after"] == 6
    daemon.wait_renewed("5000", timeout=30)
    patches = [c for c in emu.calls if c.method == "PATCH"]
    assert [c.status for c in patches[:2]] == [429, 200]
    assert (patches[1].at - patches[0].at).total_seconds() >= 6
    assert daemon.stop() == 0


def test_sigkill_then_restart_leaves_no_gap_and_posts_nothing(
    tmp_path: Path, live_emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    emu = live_emulator
    chans = [Chan("6000", ttl=TTL), Chan("6001", ttl=TTL)]
    state = write_state(tmp_path / "channels.toml", emu.url, chans, daemon=FAST)
    first = start(daemons, state)
    first.wait_event("channel.created", channel_id="6001", timeout=20)
    first.signal(signal.SIGKILL)
    first.proc.wait(10)
    time.sleep(2)
    second = start(daemons, state)
    second.wait_datagram("READY=1", timeout=15)
    second.wait_for(lambda: {"6000", "6001"} <= set(second.renewed()), 45, "a renewal of each")
    assert second.count("channel.created") == 0
    for cid in ("6000", "6001"):
        assert methods_for(emu, cid).count("POST") == 1
        assert len(emu.live_intervals(cid)) == 1
    assert [c.method for c in emu.calls].count("TOKEN") == 1  # the cached access token was reused


def test_keeps_channels_live_through_reloads_and_stops_cleanly(long_run: Future[None]) -> None:
    """Over three lifetimes: no gap, renewals by PATCH only, a broken file on SIGHUP ignored, a
    saved file applied without a signal, an empty list deleting nothing, expiring access tokens
    refreshed without a 401 loop, READY/STATUS/WATCHDOG/RELOADING/STOPPING, exit 0 on SIGTERM."""
    long_run.result(timeout=180)


@pytest.mark.parametrize(
    ("level", "renewals"),
    [
        pytest.param("info", [r"\[info\s*\] channels\.renewed "], id="info-a-line-a-request"),
        pytest.param(
            "debug",
            [r"\[info\s*\] channels\.renewed ", r"\[debug\s*\] channel\.renewed .*channel_id="],
            id="debug-a-line-a-channel-too",
        ),
    ],
)
def test_the_demo_shows_creations_renewals_and_a_notification(level: str, renewals: list[str]) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "watchkeeper", "--log-level", level),
            *("demo", "--duration", "9", "--ttl", "10s"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("channel.created") == 3
    for renewal in renewals:
        assert re.search(renewal, out), renewal
    assert "demo.notification_received" in out
    assert not out.lstrip().startswith("{")  # readable console lines, even through a pipe
    assert "demo-verification-token" not in out
