"""sd_notify in plain Python, received on a socket the test binds."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchkeeper.notify import Notifier


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    name = f"wk-notify-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    yield sock, "@" + name
    sock.close()


def test_messages_arrive_as_datagrams(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.ready("3 active")
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 active"
    assert notifier.status("2 active, 0 at risk")
    assert sock.recv(4096) == b"STATUS=2 active, 0 at risk"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.reloading()
    reloading, monotonic = sock.recv(4096).decode().split("\n")
    assert reloading == "RELOADING=1"
    assert monotonic.startswith("MONOTONIC_USEC=")
    assert int(monotonic.split("=")[1]) > 0
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_a_filesystem_socket_path_works_too(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": str(path)}).ready()
        assert sock.recv(64) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval is None


def test_an_unreachable_socket_never_raises() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "@no-such-socket-" + uuid.uuid4().hex}).ready()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "4000000"}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    env: dict[str, str], interval: float | None
) -> None:
    assert Notifier(env).watchdog_interval == interval


def test_nothing_is_sent_after_stopping(receiver: tuple[socket.socket, str]) -> None:
    sock, address = receiver
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert not notifier.status("1 active")  # a pass that finished late
    assert not notifier.watchdog()
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
