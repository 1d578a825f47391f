"""The daemon's loop in-process (the process-level behaviour is in test_daemon.py): what happens
when a pass fails, when the state file is written in steps, and when the schedule is lost."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing
from watchkeeper.emulator import Emulator
from watchkeeper.engine import Engine
from watchkeeper.notify import Notifier
from watchkeeper.service import Service, Timing

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
