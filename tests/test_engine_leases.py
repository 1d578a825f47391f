"""The engine under leases, in-process, on a real PostgreSQL database and the emulator under a
simulated clock: it serves only what it holds, starts no call within the lease's margin of its end,
and a commit that finds its lease taken (fencing) writes nothing and stops serving the account."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
import structlog.testing
from watchkeeper import config
from watchkeeper.emulator import Emulator
from watchkeeper.engine import Engine
from watchkeeper.leases import Held
from watchkeeper.model import RegistryEntry
from watchkeeper.runtime import open_engine
from watchkeeper.store import Store
from watchkeeper.store.target import parse_url

from tests.cluster import agent_instance
from tests.helpers import SimClock
from tests.statefiles import Chan, env, write_state


@pytest.fixture(autouse=True)
def _secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)


@contextmanager
def leased_engine(tmp_path: Path, emu: Emulator, clock: SimClock, url: str) -> Iterator[Engine]:
    chans = [Chan("1000", ttl="1h")]
    path = write_state(tmp_path / "channels.toml", emu.url, chans, daemon='instance = "A"')
    state, target = config.load(path), parse_url(url)
    Store(target, migrate="always").close()  # as `run` does first (open_engine never migrates)
    with open_engine(state, target, clock=clock, rng=random.Random(3)) as engine:
        yield engine


def writes(emu: Emulator) -> list[str]:
    return [c.method for c in emu.calls if c.method in {"POST", "PATCH", "PUT", "DELETE"}]


def hold_off_cycles(engine: Engine) -> None:
    """No lease cycle for a day: what the engine does with the lease it has in memory."""
    assert engine.shell.leasing is not None
    engine.shell.leasing._cycled_at = engine.clock() + timedelta(days=1)


def test_the_engine_serves_under_its_lease_and_names_itself_in_every_call(
    tmp_path: Path, emulator: Emulator, sim_clock: SimClock, pg_url: str
) -> None:
    with (
        structlog.testing.capture_logs() as logs,
        leased_engine(tmp_path, emulator, sim_clock, pg_url) as engine,
    ):
        engine.run_due()
        assert len(engine.served()) == 1
    acquired = [e for e in logs if e["event"] == "lease.acquired"]
    assert [(e["account"], e["instance"], e["reason"]) for e in acquired] == [("main", "A", "free")]
    assert writes(emulator) == ["POST"]
    assert {agent_instance(c) for c in emulator.calls if c.method != "TOKEN"} == {"A"}


def test_an_account_taken_is_served_only_once_its_rows_are_loaded(
    tmp_path: Path,
    emulator: Emulator,
    sim_clock: SimClock,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool's top-up loop looks at the served units from another thread while a worker runs
    the lease cycle: a unit must not be served while its rows are being reloaded."""
    with leased_engine(tmp_path, emulator, sim_clock, pg_url) as engine:
        unit = engine.memory.units["main"]
        served_during: list[list[str]] = []
        reload = unit.reload

        def watched_reload(entries: dict[str, RegistryEntry]) -> None:
            served_during.append([u.name for u in engine.served()])
            reload(entries)

        monkeypatch.setattr(unit, "reload", watched_reload)
        engine.run_due()
        assert served_during == [[]]
        assert [u.name for u in engine.served()] == ["main"]
    assert writes(emulator) == ["POST"]


def test_no_call_starts_within_the_margin_of_the_lease(
    tmp_path: Path, emulator: Emulator, sim_clock: SimClock, pg_url: str
) -> None:
    with leased_engine(tmp_path, emulator, sim_clock, pg_url) as engine:
        engine.run_due()
        assert engine.shell.leasing is not None
        margin = engine.shell.leasing.cluster.timing.margin
        unit = engine.memory.units["main"]
        assert unit.lease is not None
        epoch = unit.lease.epoch
        sim_clock.advance(timedelta(minutes=50))  # the renewal is due
        hold_off_cycles(engine)
        unit.lease = Held(epoch, sim_clock() + margin - timedelta(seconds=1))
        emulator.clear_calls()
        engine.run_due()
        assert writes(emulator) == []  # due, but the lease is too close to its end
        unit.lease = Held(epoch, sim_clock() + margin + timedelta(seconds=1))
        engine.run_due()
        assert writes(emulator) == ["PATCH"]


def test_a_commit_that_finds_the_lease_taken_writes_nothing_and_stops_serving(
    tmp_path: Path, emulator: Emulator, sim_clock: SimClock, pg_url: str
) -> None:
    with (
        structlog.testing.capture_logs() as logs,
        leased_engine(tmp_path, emulator, sim_clock, pg_url) as engine,
    ):
        engine.run_due()
        before = engine.store.registry()
        with psycopg.connect(pg_url, autocommit=True) as conn:  # instance B took it meanwhile
            conn.execute("UPDATE leases SET holder = 'B', epoch = epoch + 1 WHERE account = 'main'")
        sim_clock.advance(timedelta(minutes=50))  # the renewal is due
        hold_off_cycles(engine)
        unit = engine.memory.units["main"]
        assert unit.lease is not None
        unit.lease = Held(unit.lease.epoch, sim_clock() + timedelta(minutes=5))  # A believes it
        emulator.clear_calls()
        engine.run_due()
        assert writes(emulator) == []  # its first commit was refused: the PATCH was never sent
        assert engine.store.registry() == before
        assert len(engine.served()) == 0
        engine.run_due()
        assert writes(emulator) == []
    lost = [e for e in logs if e["event"] == "lease.lost"]
    assert [(e["account"], e["reason"]) for e in lost] == [("main", "fenced")]
