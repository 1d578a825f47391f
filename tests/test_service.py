"""The daemon's loop in-process (the process-level behaviour is in test_daemon.py): what happens
when a pass fails, when the state file is written in steps, and when the schedule is lost."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import structlog.testing
from watchkeeper import service as service_module
from watchkeeper.emulator import Emulator, Fault
from watchkeeper.engine import Engine
from watchkeeper.notify import Notifier
from watchkeeper.service import ReloadGate, Service, Timing

from tests.daemon_process import DaemonProcess, start
from tests.statefiles import Chan, env, write_state


@pytest.fixture(autouse=True)
def _secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def live_emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


def run_for(service: Service, seconds: float) -> int:
    """Service.run() in this (the main) thread, as the daemon runs it, stopped after ``seconds``."""
    timer = threading.Timer(seconds, service.request_stop)
    timer.start()
    try:
        return service.run()
    finally:
        timer.cancel()


def test_a_failing_pass_is_retried_after_a_pause_not_at_once(
    tmp_path: Path, live_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def broken(self: Engine, now: object = None) -> None:
        calls.append(time.monotonic())
        raise RuntimeError("a bug in a pass")

    monkeypatch.setattr(Engine, "run_due", broken)
    state = write_state(tmp_path / "channels.toml", live_emulator.url, [Chan("1")])
    with structlog.testing.capture_logs() as logs:
        assert run_for(Service(state, notifier=Notifier({})), 7) == 0
    assert 1 <= len(calls) <= 3  # at 0 s, then 5 s later: not thousands a second
    if len(calls) > 1:
        assert calls[1] - calls[0] >= 4.5
    assert [e["consecutive"] for e in logs if e["event"] == "engine.failed"] == list(
        range(1, len(calls) + 1)
    )


def test_the_heap_is_frozen_after_the_first_pass_and_thawed_when_the_service_ends(
    tmp_path: Path, live_emulator: Emulator
) -> None:
    state = write_state(tmp_path / "channels.toml", live_emulator.url, [Chan("1")])
    service = Service(state, notifier=Notifier({}))
    frozen: list[int] = []

    def look() -> None:
        deadline = time.monotonic() + 2.5
        while service.health.last_pass is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the status line, then the freeze, follow the pass
        frozen.append(gc.get_freeze_count())

    watcher = threading.Thread(target=look)
    watcher.start()
    assert run_for(service, 3) == 0
    watcher.join()
    assert frozen[0] > 0
    assert gc.get_freeze_count() == 0


def test_a_state_file_written_in_steps_is_applied_once_it_settles(
    tmp_path: Path, live_emulator: Emulator
) -> None:
    chans = [Chan(str(10 + i)) for i in range(4)]
    state = write_state(tmp_path / "channels.toml", live_emulator.url, chans)
    full = state.read_text()

    def slow_writer() -> None:
        time.sleep(1.5)
        with state.open("w") as f:  # a script that writes half, pauses, then the rest
            f.write(full[: full.index("[[channels]]", full.index("[[channels]]") + 1)])
            f.flush()
            time.sleep(1.2)
            f.write(full[full.index("[[channels]]", full.index("[[channels]]") + 1) :])

    writer = threading.Thread(target=slow_writer)
    with structlog.testing.capture_logs() as logs:
        writer.start()
        assert run_for(Service(state, notifier=Notifier({})), 7) == 0
        writer.join()
    reloads = [e for e in logs if e["event"] == "config.loaded" and e.get("trigger") == "file"]
    assert [r["channels"] for r in reloads] == [4]
    assert not [e for e in logs if e["event"] == "channel.deleted"]
    assert set(live_emulator.channels()) == {"10", "11", "12", "13"}


def test_the_watchdog_is_not_fed_once_the_schedule_is_lost(tmp_path: Path) -> None:
    name = f"wk-svc-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(0.5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        service = Service(tmp_path / "channels.toml", notifier=notifier, timing=Timing())
        service._feed_watchdog()
        assert sock.recv(64) == b"WATCHDOG=1"
        service._pass_ended = time.monotonic() - 1000  # no pass for 16 minutes, none running
        service._feed_watchdog()
        with pytest.raises(TimeoutError):
            sock.recv(64)
        service._pass_ended = time.monotonic()
        service._pass_started = time.monotonic() - 601  # a pass hung for over 10 minutes
        service._feed_watchdog()
        with pytest.raises(TimeoutError):
            sock.recv(64)
    finally:
        sock.close()


# -- stopping: no deadlock, no hang, STOPPING=1 last ------------------------------------------


class NotifySocket:
    """An sd_notify socket in this process: every datagram the service sends, in order."""

    def __init__(self) -> None:
        self.name = f"wk-svc-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)

    def notifier(self) -> Notifier:
        return Notifier({"NOTIFY_SOCKET": "@" + self.name})

    def received(self) -> list[str]:
        out = []
        with contextlib.suppress(BlockingIOError):
            while True:
                out.append(self.sock.recv(4096).decode())
        return out


def test_stopping_is_the_last_datagram_while_a_pass_is_in_flight(
    tmp_path: Path, live_emulator: Emulator
) -> None:
    live_emulator.add_fault(Fault(status=None, latency=2.5, methods=frozenset({"GET"})))
    state = write_state(tmp_path / "channels.toml", live_emulator.url, [Chan("1")])
    sock = NotifySocket()
    try:
        with structlog.testing.capture_logs() as logs:
            assert run_for(Service(state, notifier=sock.notifier()), 1.0) == 0  # mid-listing
        datagrams = sock.received()
    finally:
        sock.sock.close()
    assert "READY=1" in datagrams
    assert datagrams[-1] == "STOPPING=1", datagrams
    assert logs[-1]["event"] == "daemon.stopping"


def _stop_while_rearming(state: Path) -> None:
    """In a forked child: SIGTERM (request_stop) lands while the worker computes next_due() after
    a pass, as with 10,000 channels; the worker then re-arms unless told not to."""
    service = Service(state, notifier=Notifier({}))
    real = Engine.next_due

    def slow_next_due(self: Engine) -> datetime:
        if threading.current_thread() is not threading.main_thread():
            service.request_stop()
            time.sleep(1.0)
        return real(self)

    Engine.next_due = slow_next_due  # type: ignore[method-assign]
    sys.exit(service.run())


def test_sigterm_just_after_a_pass_exits_at_once(tmp_path: Path, live_emulator: Emulator) -> None:
    state = write_state(tmp_path / "channels.toml", live_emulator.url, [Chan("1")])
    child = multiprocessing.get_context("fork").Process(target=_stop_while_rearming, args=(state,))
    child.start()
    child.join(15)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung, "the daemon deadlocked stopping while the worker re-armed"
    assert child.exitcode == 0


def timed_stop(daemon: DaemonProcess, timeout: float) -> tuple[int, float]:
    began = time.monotonic()
    code = daemon.stop(timeout=timeout)
    return code, time.monotonic() - began


def test_sigterm_during_a_reload_exits_within_seconds(
    tmp_path: Path, live_emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    live_emulator.add_fault(Fault(status=None, latency=3, methods=frozenset({"GET"})))
    state = write_state(tmp_path / "channels.toml", live_emulator.url, [Chan("1")])
    daemon = start(daemons, state)
    daemon.wait_event("daemon.ready", timeout=15)  # the first pass's listing now takes 3 s
    time.sleep(0.3)
    daemon.signal(signal.SIGHUP)
    time.sleep(0.3)
    code, took = timed_stop(daemon, 10)
    assert (code, took < 10) == (0, True), took
    assert daemon.datagrams[-1][1] == "STOPPING=1"
    assert daemon.events[-1]["event"] == "daemon.stopping"


def test_sigterm_is_obeyed_while_a_server_stalls(
    tmp_path: Path, live_emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    live_emulator.add_fault(Fault(status=None, latency=60, methods=frozenset({"GET"})))
    state = write_state(tmp_path / "channels.toml", live_emulator.url, [Chan("1")])
    daemon = start(daemons, state)
    daemon.wait_event("daemon.ready", timeout=15)
    time.sleep(0.5)
    code, took = timed_stop(daemon, 12)
    assert (code, took < 10) == (0, True), took
    assert daemon.datagrams[-1][1] == "STOPPING=1"
    assert daemon.events[-1]["event"] == "daemon.stopping"
    assert daemon.events[-1]["abandoned"] is True


# -- reloads -----------------------------------------------------------------------------------


def test_a_half_written_file_is_not_applied_on_sighup(
    tmp_path: Path, live_emulator: Emulator, daemons: list[DaemonProcess]
) -> None:
    chans = [Chan(str(8000 + i)) for i in range(100)]
    state = write_state(tmp_path / "channels.toml", live_emulator.url, chans)
    full = state.read_text()
    daemon = start(daemons, state)
    daemon.wait_event("reconcile.finished", timeout=30, created=100)
    cut = [m.start() for m in re.finditer(r"\[\[channels\]\]", full)][85]
    mark = len(daemon.events)
    with state.open("w") as f:  # an editor that writes in two steps, with a reload in between
        f.write(full[:cut])
        f.flush()
        daemon.signal(signal.SIGHUP)
        time.sleep(1.0)
        f.write(full[cut:])
        f.flush()
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config.loaded", timeout=10, after=mark, trigger="signal")
    time.sleep(2.5)  # a pass after the reload, and time for a second (wrong) reload
    reloads = [e for e in daemon.events[mark:] if e["event"] == "config.loaded"]
    assert [(e["trigger"], e["channels"]) for e in reloads] == [("signal", 100)]
    assert not [e for e in daemon.events if e["event"] == "channel.deleted"]
    assert len(live_emulator.channels()) == 100


class _SteppedClock:
    """The time module as the service sees it, with the wall clock stepped back by ``offset``."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_a_clock_jump_forces_a_listing(
    tmp_path: Path, live_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    stepped = _SteppedClock()
    monkeypatch.setattr(service_module, "time", stepped)
    state = write_state(tmp_path / "channels.toml", live_emulator.url, [Chan("1")])
    threading.Timer(2.0, lambda: setattr(stepped, "offset", -3600.0)).start()
    with structlog.testing.capture_logs() as logs:
        assert run_for(Service(state, notifier=Notifier({})), 4.5) == 0
    assert [e["event"] for e in logs].count("clock.jumped") == 1
    listings = [c for c in live_emulator.calls if c.method == "GET"]
    assert len(listings) == 2  # at start, and again to measure the skew after the step


def test_run_exits_78_on_a_deeply_nested_file(tmp_path: Path) -> None:
    state = tmp_path / "channels.toml"
    state.write_text("x = " + "[" * 100_000)
    with structlog.testing.capture_logs() as logs:
        assert Service(state, notifier=Notifier({})).run() == 78
    (event,) = [e for e in logs if e["event"] == "config.invalid"]
    assert event["errors"] == [f"{state}: arrays or tables are nested too deeply to read"]


A, B, C = (1, 1, 10), (1, 2, 20), (1, 3, 30)
"""File fingerprints (inode, mtime, size): A as loaded, B and C two later writes."""


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([("poll", A, 0.5)], [None]),  # nothing asked, nothing changed
        ([("hup", A, 0.5)], ["signal"]),  # an untouched file reloads at once
        ([("poll", B, 0.5), ("poll", B, 1.5), ("poll", B, 2.5)], [None, None, "file"]),
        # SIGHUP while the editor is halfway: wait until the last write is 2 s old
        (
            [("hup", B, 0.5), ("poll", B, 1.0), ("hup", C, 1.5), ("poll", C, 3.0), ("poll", C, 3.5)],
            [None, None, None, None, "signal"],
        ),
        ([("poll", B, 0.5), ("poll", B, 2.5), ("poll", B, 5.0)], [None, "file", None]),  # once
        ([("poll", B, 0.5), ("poll", A, 1.0), ("poll", A, 3.5)], [None, None, None]),  # undone
    ],
    ids=["idle", "hup", "file", "hup-while-writing", "once", "written-back"],
)
def test_reloads_wait_for_the_file_to_settle(
    steps: list[tuple[str, tuple[int, int, int], float]], expected: list[str | None]
) -> None:
    gate = ReloadGate.start(A, 0.0, settle=2.0)
    seen = []
    for kind, fingerprint, now in steps:
        if kind == "hup":
            gate.signal()
        seen.append(gate.observe(fingerprint, now))
    assert seen == expected


def test_run_exits_1_with_one_clear_line_on_a_corrupt_database(
    tmp_path: Path, live_emulator: Emulator
) -> None:
    state = write_state(tmp_path / "channels.toml", live_emulator.url, [Chan("1")])
    (tmp_path / "watchkeeper.db").write_bytes(b"not a database, just bytes " * 100)
    with structlog.testing.capture_logs() as logs:
        assert Service(state, notifier=Notifier({})).run() == 1
    (event,) = [e for e in logs if e["event"] == "store.unusable"]
    assert event["error"].startswith(str(tmp_path / "watchkeeper.db"))
