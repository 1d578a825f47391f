"""Backfill end to end: the engine against the emulator over real HTTP, a receiver on 127.0.0.1,
a real SQLite file. A channel lapses while records change, its gap closes, and the receiver must
get every change of the gap in Zoho's shape, once its window has passed, after the renewals."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from watchkeeper import config
from watchkeeper.emulator import Emulator, Fault
from watchkeeper.engine import Engine
from watchkeeper.model import parse_instant
from watchkeeper.runtime import open_engine
from watchkeeper.store import Store

from tests.helpers import SimClock
from tests.receiver import Receiver
from tests.statefiles import HOOK_TOKEN, SECRETS, URL_SECRET, Chan, env, write_state

OpenEngine = Callable[..., AbstractContextManager[Engine]]
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
KEYS = [
    "server_time",
    "query_params",
    "module",
    "resource_uri",
    "ids",
    "affected_fields",
    "operation",
    "channel_id",
    "token",
    "backfill",
]


@pytest.fixture(autouse=True)
def _secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as hook:
        yield hook


@pytest.fixture
def engine_for(tmp_path: Path, emulator: Emulator, sim_clock: SimClock) -> OpenEngine:
    def make(channels: list[Chan]) -> AbstractContextManager[Engine]:
        path = write_state(tmp_path / "channels.toml", emulator.url, channels)
        return open_engine(config.load(path), clock=sim_clock, rng=random.Random(7))

    return make


def chan(receiver: Receiver, channel_id: str = "7001", **kwargs: Any) -> Chan:
    kwargs.setdefault("backfill", True)
    return Chan(channel_id, notify_url=receiver.url(f"key={URL_SECRET}"), **kwargs)


def outage(engine: Engine, emulator: Emulator, clock: SimClock) -> None:
    """The daemon is down for two hours: its 1 h channel lapses, and records change meanwhile."""
    engine.run_due()
    emulator.simulate_record_change("Deals", "create", ["2"])  # live: delivered by Zoho itself
    clock.advance(90 * MINUTE)  # the channel expired 30 minutes ago
    emulator.simulate_record_change("Deals", "create", ["1"])
    emulator.simulate_record_change("Deals", "edit", ["2", "1"])
    emulator.simulate_record_change("Deals", "delete", ["3"])
    emulator.simulate_record_change("Contacts", "create", ["10"])
    emulator.simulate_record_change("Contacts", "edit", ["11"])  # Contacts.edit not subscribed
    clock.advance(30 * MINUTE)


def backfill_calls(emulator: Emulator) -> list[tuple[str, str]]:
    return [(c.method, c.path) for c in emulator.calls if c.method == "GET" and "actions" not in c.path]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_a_closed_gap_is_redelivered_in_zohos_shape_once_its_window_has_passed(
    emulator: Emulator,
    engine_for: OpenEngine,
    sim_clock: SimClock,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    delivered: list[tuple[str, str, int]] = []
    with engine_for([chan(receiver)]) as engine, structlog.testing.capture_logs() as logs:
        engine.backfills.on_delivered = lambda *counted: delivered.append(counted)
        outage(engine, emulator, sim_clock)
        emulator.clear_calls()
        engine.run_due()  # re-created: the gap closes, its window ends a minute later
        assert receiver.backfilled() == []
        assert backfill_calls(emulator) == []
        sim_clock.advance(2 * MINUTE)
        engine.run_due()
        (gap,) = engine.store.gaps()
        states = engine.store.backfill_states()
    sent = receiver.backfilled()
    assert [(b["module"], b["operation"], b["ids"]) for b in sent] == [
        ("Contacts", "insert", ["10"]),
        ("Deals", "insert", ["1"]),
        ("Deals", "update", ["2"]),
        ("Deals", "delete", ["3"]),
    ]
    first = sent[0]
    assert list(first) == KEYS
    assert first["token"] == HOOK_TOKEN
    assert first["query_params"] == {"key": URL_SECRET}
    assert first["channel_id"] == "7001"
    assert first["affected_fields"] == []
    assert first["resource_uri"] == f"{emulator.url}/crm/v8/Contacts"
    assert gap.end is not None
    assert parse_instant(first["backfill"]["gap_start"]) == gap.start.replace(microsecond=0)
    assert parse_instant(first["backfill"]["gap_end"]) == gap.end.replace(microsecond=0)
    assert states == {gap.id: ("done", 4)}
    assert sorted(delivered) == [
        ("main", "delete", 1),
        ("main", "insert", 1),
        ("main", "insert", 1),
        ("main", "update", 1),
    ]  # what the metrics count, one call a notification
    # the cost of this gap: one list per module with create/edit, one deleted list for Deals
    assert sorted(backfill_calls(emulator)) == [
        ("GET", "/crm/v8/Contacts"),
        ("GET", "/crm/v8/Deals"),
        ("GET", "/crm/v8/Deals/deleted"),
    ]
    (started,) = events(logs, "backfill.started")
    assert started["modules"] == ["Contacts", "Deals"]
    (finished,) = events(logs, "backfill.finished")
    assert (finished["records"], finished["notifications"]) == (4, 4)
    text = repr(logs)
    for secret in (*SECRETS, *emulator.access_tokens()):
        assert secret not in text
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("watchkeeper.db*"))
    for secret in (HOOK_TOKEN, URL_SECRET):  # the store never keeps what the body carried
        assert secret.encode() not in stored


def test_a_channel_without_backfill_records_its_gap_and_sends_nothing(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, receiver: Receiver
) -> None:
    with engine_for([chan(receiver, backfill=False)]) as engine:
        outage(engine, emulator, sim_clock)
        for _ in range(3):
            engine.run_due()
            sim_clock.advance(2 * MINUTE)
        assert engine.store.backfill_states() == {}
        assert len(engine.store.gaps()) == 1
    assert receiver.backfilled() == []
    assert backfill_calls(emulator) == []


def test_a_refusing_receiver_is_retried_with_backoff_and_then_gets_everything(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, receiver: Receiver
) -> None:
    with engine_for([chan(receiver)]) as engine:
        outage(engine, emulator, sim_clock)
        engine.run_due()
        receiver.status = 503
        sim_clock.advance(2 * MINUTE)
        with structlog.testing.capture_logs() as logs:
            engine.run_due()
        assert len(receiver.bodies) - len(receiver.accepted) == 1  # stopped at the first refusal
        (retry,) = events(logs, "backfill.retry")
        assert retry["reason"] == "receiver"
        assert "503" in retry["error"]
        assert URL_SECRET not in retry["error"]
        receiver.status = 200
        sim_clock.set(engine.next_due())
        engine.run_due()
        (gap,) = engine.store.gaps()
        assert engine.store.backfill_states() == {gap.id: ("done", 4)}
    assert len(receiver.backfilled()) == 4


def test_a_receiver_refusing_for_a_day_fails_the_backfill(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, receiver: Receiver
) -> None:
    receiver.answer = lambda body: 500 if "backfill" in body else 200
    with engine_for([chan(receiver, ttl="23h")]) as engine, structlog.testing.capture_logs() as logs:
        engine.run_due()
        sim_clock.advance(24 * HOUR)  # down for a day: lapsed for an hour
        emulator.simulate_record_change("Deals", "create", ["1"])
        engine.run_due()
        for _ in range(400):
            sim_clock.set(engine.next_due())
            engine.run_due()
            (gap,) = engine.store.gaps()
            if engine.store.backfill_states()[gap.id][0] != "pending":
                break
        assert engine.store.backfill_states() == {gap.id: ("failed", 0)}
    (failed,) = events(logs, "backfill.failed")
    assert failed["reason"] == "receiver"
    assert failed["log_level"] == "error"
    assert engine.registry[("main", "7001")].state == "active"  # renewals went on meanwhile


def test_missing_read_scope_fails_the_backfill_alone(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, receiver: Receiver
) -> None:
    emulator.add_fault(Fault(status=401, code="OAUTH_SCOPE_MISMATCH", paths="records"))
    with engine_for([chan(receiver)]) as engine, structlog.testing.capture_logs() as logs:
        outage(engine, emulator, sim_clock)
        engine.run_due()
        sim_clock.advance(2 * MINUTE)
        engine.run_due()
        (gap,) = engine.store.gaps()
        assert engine.store.backfill_states() == {gap.id: ("failed", 0)}
        unit = engine.memory.units["main"]
        assert unit.paused_until is None  # renewals are not held back
        renew_at = engine.registry[("main", "7001")].renew_at
        assert renew_at is not None
        emulator.clear_calls()
        sim_clock.set(renew_at)
        engine.run_due()
    assert "PATCH" in [c.method for c in emulator.calls]
    assert backfill_calls(emulator) == []  # a failed backfill is not retried by itself
    (failed,) = events(logs, "backfill.failed")
    assert failed["reason"] == "scope"
    assert "ZohoCRM.modules.READ" in failed["error"]
    assert "auth.failed" not in [e["event"] for e in logs]


def test_a_rate_limited_records_read_pauses_the_account_and_resumes(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, receiver: Receiver
) -> None:
    with engine_for([chan(receiver)]) as engine:
        outage(engine, emulator, sim_clock)
        engine.run_due()
        emulator.add_fault(Fault(status=429, retry_after=120, paths="records", count=1))
        sim_clock.advance(2 * MINUTE)
        engine.run_due()
        unit = engine.memory.units["main"]
        assert unit.paused_until == sim_clock() + timedelta(seconds=120)
        (gap,) = engine.store.gaps()
        assert engine.store.backfill_states() == {gap.id: ("pending", 0)}
        emulator.clear_calls()
        sim_clock.advance(MINUTE)
        engine.run_due()
        assert backfill_calls(emulator) == []  # the pause holds for backfill too
        sim_clock.set(engine.next_due())
        engine.run_due()
        assert engine.store.backfill_states() == {gap.id: ("done", 4)}


def test_a_crash_mid_delivery_resumes_without_losing_a_notification(
    emulator: Emulator,
    engine_for: OpenEngine,
    sim_clock: SimClock,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = Store.backfill_delivered
    calls = 0

    def crash_on_second(self: Store, gap_id: int, seq: int, records: int, at: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # the process dies after the receiver took the second one
        real(self, gap_id, seq, records, at)

    with engine_for([chan(receiver)]) as engine:
        outage(engine, emulator, sim_clock)
        engine.run_due()
        sim_clock.advance(2 * MINUTE)
        monkeypatch.setattr(Store, "backfill_delivered", crash_on_second)
        with pytest.raises(KeyboardInterrupt):
            engine.run_due()
    monkeypatch.setattr(Store, "backfill_delivered", real)
    assert len(receiver.backfilled()) == 2
    with engine_for([chan(receiver)]) as engine:  # the restart
        sim_clock.advance(MINUTE)
        engine.run_due()
        (gap,) = engine.store.gaps()
        assert engine.store.backfill_states()[gap.id][0] == "done"
    sent = [(b["module"], b["operation"], tuple(b["ids"])) for b in receiver.backfilled()]
    assert len(sent) == 5  # the one in flight at the crash arrives twice, none zero times
    assert set(sent) == {
        ("Contacts", "insert", ("10",)),
        ("Deals", "insert", ("1",)),
        ("Deals", "update", ("2",)),
        ("Deals", "delete", ("3",)),
    }


def test_a_renewal_falling_due_stops_the_backfill_until_it_is_done(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, receiver: Receiver
) -> None:
    """A slow receiver: the first delivery takes until the channel's renewal is due. The renewal
    goes out before the next delivery."""
    renewals_seen: list[int] = []
    renew_at: list[Any] = []

    def slow(body: dict[str, Any]) -> int:
        if "backfill" in body:
            renewals_seen.append(len([c for c in emulator.calls if c.method == "PATCH"]))
            if renew_at:
                sim_clock.set(renew_at.pop() + timedelta(seconds=1))
        return 200

    receiver.answer = slow
    with engine_for([chan(receiver)]) as engine:
        outage(engine, emulator, sim_clock)
        engine.run_due()
        renew_at.append(engine.registry[("main", "7001")].renew_at)
        sim_clock.advance(2 * MINUTE)
        emulator.clear_calls()
        for _ in range(3):
            engine.run_due()
            sim_clock.set(max(sim_clock(), engine.next_due()))
        (gap,) = engine.store.gaps()
        assert engine.store.backfill_states()[gap.id][0] == "done"
    assert renewals_seen == [0, 1, 1, 1]  # the renewal went out between the first two deliveries
