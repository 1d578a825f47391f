"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from watchkeeper.emulator import Emulator

from tests.daemon_process import DaemonProcess
from tests.helpers import SimClock
from tests.pg_server import PgServer, binaries


@pytest.fixture
def sim_clock() -> SimClock:
    return SimClock()


@pytest.fixture
def emulator(request: pytest.FixtureRequest, sim_clock: SimClock) -> Iterator[Emulator]:
    """A started Emulator on 127.0.0.1 (free port) driven by ``sim_clock``; stopped afterwards.

    Extra Emulator kwargs via indirect parametrisation:
    ``@pytest.mark.parametrize("emulator", [{"patch_unknown": "create"}], indirect=True)``.
    """
    kwargs: dict[str, Any] = {"clock": sim_clock, **getattr(request, "param", {})}
    emu = Emulator(**kwargs).start(host="127.0.0.1", port=0)
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Commands run in-process configure structlog onto pytest's captured streams, which close
    after the test: put the defaults back so later tests do not write to a closed file."""
    yield
    import logging
    import sys
    import threading

    import structlog

    structlog.reset_defaults()
    sys.excepthook = sys.__excepthook__
    threading.excepthook = threading.__excepthook__
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_StdlibBridge":
            root.removeHandler(handler)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL cluster for the session. In CI (``$CI`` set) a missing server is a failure;
    elsewhere the PostgreSQL tests are skipped when no server binary is installed."""
    bindir = binaries()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("no PostgreSQL server (initdb) found: .ci/run installs it")
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    server = PgServer(bindir).init()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL (password included) of a database of its own for this test."""
    name = pg_server.fresh_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemon processes a test started (``tests.daemon_process.start``), stopped when it ends."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()
