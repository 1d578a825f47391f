"""The engine against the emulator over real HTTP, time driven by a shared SimClock."""

from __future__ import annotations

import copy
import itertools
import random
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from watchkeeper import config, planner
from watchkeeper.emulator import Emulator, Fault
from watchkeeper.engine import Engine
from watchkeeper.model import ObservedChannel
from watchkeeper.runtime import open_engine
from watchkeeper.store import Store

from tests.helpers import SimClock
from tests.statefiles import HOOK_TOKEN, Chan, env, org_of, write_state

OpenEngine = Callable[..., AbstractContextManager[Engine]]
Listed = dict[str, ObservedChannel]


@pytest.fixture(autouse=True)
def _secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env().items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def engine_for(tmp_path: Path, emulator: Emulator, sim_clock: SimClock) -> OpenEngine:
    """``engine_for(channels)`` -> a context manager giving an engine over a fresh state file."""

    def make(channels: list[Chan], **kwargs: str) -> AbstractContextManager[Engine]:
        path = write_state(tmp_path / "channels.toml", emulator.url, channels, **kwargs)
        return open_engine(
            config.load(path), clock=sim_clock, rng=random.Random(7), sleep=sim_clock.sleep
        )

    return make


def methods(emu: Emulator) -> list[str]:
    return [c.method for c in emu.calls if c.method != "TOKEN"]


def test_first_pass_creates_every_channel_in_one_post(
    emulator: Emulator, engine_for: OpenEngine
) -> None:
    chans = [Chan(str(1000 + i), name=f"c{i}") for i in range(3)]
    with engine_for(chans) as engine:
        report = engine.run_due()
    assert methods(emulator) == ["GET", "POST"]
    assert report.counts["create"] == 3
    assert set(emulator.channels()) == {"1000", "1001", "1002"}
    assert {e.state for e in engine.registry.values()} == {"active"}


def after_first_post(engine: Engine, then: Callable[[], None]) -> None:
    """Run ``then`` once the account's first write has been answered."""
    client = engine.memory.units["main"].client
    write = client.write

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        answer = write(*args, **kwargs)
        then()
        client.write = write  # type: ignore[method-assign]
        return answer

    client.write = wrapped  # type: ignore[method-assign]


@pytest.mark.parametrize("stop", [False, True], ids=["failed", "stopped"])
def test_a_request_is_recorded_a_slice_at_a_time_and_its_rest_goes_with_a_failed_slice(
    emulator: Emulator, engine_for: OpenEngine, monkeypatch: pytest.MonkeyPatch, stop: bool
) -> None:
    """After a failed slice the rest of the request backs off with it (one backoff, as one
    request); after a stop it is unsent (nothing held back). Either way no intent is left."""
    monkeypatch.setattr("watchkeeper.account.REQUEST_SLICE", 2)
    chans = [Chan(str(1100 + i)) for i in range(5)]
    with engine_for(chans) as engine:
        if stop:
            after_first_post(engine, lambda: setattr(engine.shell, "stopping", True))
        else:
            # the chunk and its three retries in place
            fault = Fault(status=503, methods=frozenset({"POST"}), count=4)
            after_first_post(engine, lambda: emulator.add_fault(fault))
        report = engine.run_due()
        entries = [engine.registry[("main", c.channel_id)] for c in chans]
        intents = engine.store.pending_intents()
    assert methods(emulator) == ["GET", "POST"] + ([] if stop else ["POST"] * 4)
    assert set(emulator.channels()) == {"1100", "1101"}
    assert [e.state for e in entries] == ["active"] * 2 + ["pending"] * 3
    assert [e.failures for e in entries[2:]] == [0 if stop else 1] * 3
    assert len({e.retry_at for e in entries[2:]}) == 1
    assert (entries[2].retry_at is None) == stop
    assert report.failed == (0 if stop else 3)
    assert intents == []


def test_a_request_of_several_slices_creates_every_channel(
    emulator: Emulator, engine_for: OpenEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("watchkeeper.account.REQUEST_SLICE", 2)
    chans = [Chan(str(1200 + i)) for i in range(5)]
    with engine_for(chans) as engine:
        report = engine.run_due()
        states = {e.state for e in engine.registry.values()}
        intents = engine.store.pending_intents()
    assert methods(emulator) == ["GET", "POST", "POST", "POST"]
    assert report.counts["create"] == 5
    assert set(emulator.channels()) == {c.channel_id for c in chans}
    assert states == {"active"}
    assert intents == []


def test_second_pass_sees_no_drift_from_all_expansion_or_offsets(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """Zoho lists Deals.all as three events and writes expiries in +05:30: neither is drift."""
    with engine_for([Chan("2000", events=["Deals.all", "Contacts.edit"])]) as engine:
        engine.run_due()
        emulator.clear_calls()
        sim_clock.advance(timedelta(minutes=1))
        report = engine.run_pass(sim_clock(), listing=True)
    assert methods(emulator) == ["GET"]
    assert report.counts.total() == 0


def test_renewal_is_a_patch_carrying_the_full_item_within_the_window(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("3000", ttl="1h")]) as engine:
        engine.run_due()
        first_expiry = engine.registry[("main", "3000")].expires_at
        due = engine.registry[("main", "3000")].renew_at
        assert due is not None
        assert sim_clock() + timedelta(minutes=36) <= due <= sim_clock() + timedelta(minutes=42)
        emulator.clear_calls()
        sim_clock.set(due)
        engine.run_due()
    (patch,) = [c for c in emulator.calls if c.method == "PATCH"]
    (item,) = patch.body["watch"]  # type: ignore[index]
    assert set(item) >= {"channel_id", "events", "notify_url", "token", "channel_expiry"}
    assert item["token"] == HOOK_TOKEN  # the full item: an omitted token would be nulled
    assert engine.registry[("main", "3000")].expires_at > first_expiry  # type: ignore[operator]
    assert emulator.channels()["3000"].token == HOOK_TOKEN


def test_due_renewals_take_along_channels_due_within_a_tenth_of_their_lifetime(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan(str(4000 + i), ttl="10h") for i in range(20)]) as engine:
        engine.run_due()
        engine.next_reconcile = sim_clock() + timedelta(days=1)
        sim_clock.set(engine.next_due())
        emulator.clear_calls()
        engine.run_due()
        renew_ats = sorted(e.renew_at for e in engine.registry.values())  # type: ignore[type-var]
    patches = [c for c in emulator.calls if c.method == "PATCH"]
    assert len(patches) == 1
    # The window spans 1 h of a 10 h lifetime and the horizon is 1 h: all of them go together.
    assert patches[0].items == 20
    assert renew_ats[0] > sim_clock() + timedelta(hours=5)


def test_adopts_a_desired_channel_already_live_without_posting(
    emulator: Emulator, engine_for: OpenEngine
) -> None:
    emulator.add_foreign_channel("5000", ["Contacts.create"], "https://old.example.com/hook")
    with engine_for([Chan("5000")]) as engine:
        report = engine.run_due()
    assert "POST" not in methods(emulator)
    assert report.counts["adopt"] == 1
    live = emulator.channels()["5000"]
    assert live.notify_url.startswith("https://hooks.example.com/")
    assert engine.registry[("main", "5000")].state == "active"


def test_drift_behind_our_back_is_repaired_with_put(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("6000", events=["Deals.all"])]) as engine:
        engine.run_due()
        emulator.change_channel("6000", events=["Deals.create"], notify_url="https://evil.example.com/x")
        emulator.clear_calls()
        sim_clock.advance(timedelta(minutes=5))
        report = engine.run_pass(sim_clock(), listing=True)
    assert methods(emulator) == ["GET", "PUT"]
    assert report.counts["repair"] == 1
    live = emulator.channels()["6000"]
    assert {op for _, op in live.events} == {"create", "edit", "delete"}
    assert live.notify_url.startswith("https://hooks.example.com/")


def test_deletes_an_owned_channel_no_longer_desired_and_leaves_foreign_alone(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, tmp_path: Path
) -> None:
    emulator.add_foreign_channel("9999", ["Leads.create"], "https://someone.else/hook")
    chans = [Chan(str(7000 + i)) for i in range(4)]
    with engine_for(chans) as engine:
        engine.run_due()
        path = write_state(tmp_path / "channels.toml", emulator.url, chans[:3])
        engine.reload(config.load(path))
        sim_clock.advance(timedelta(seconds=5))
        report = engine.run_due()
        foreign = engine.store.foreign()
    assert report.counts["delete"] == 1
    assert set(emulator.channels()) == {"7000", "7001", "7002", "9999"}
    assert ("main", "7003") not in engine.registry
    touched = {cid for c in emulator.calls if c.method != "GET" for cid in c.channel_ids}
    assert "9999" not in touched
    assert foreign == [("main", "9999", ["Leads"])]


def test_mass_delete_is_refused_and_the_refused_channels_stay_alive(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, tmp_path: Path
) -> None:
    chans = [Chan(str(7100 + i), ttl="1h") for i in range(4)]
    with engine_for(chans) as engine:
        engine.run_due()
        engine.reload(config.load(write_state(tmp_path / "channels.toml", emulator.url, chans[:1])))
        report = engine.run_due()
        assert [r.reason for r in report.refused] == ["mass_delete"]
        # Hours later the refused channels are still renewed: the guard protects them.
        until = sim_clock() + timedelta(hours=3)
        while sim_clock() < until:
            sim_clock.set(engine.next_due())
            engine.run_due()
    assert sim_clock() - emulator.calls[0].at > timedelta(hours=2)
    assert set(emulator.channels()) == {"7100", "7101", "7102", "7103"}
    assert "DELETE" not in methods(emulator)


def test_a_gap_opens_at_the_expiry_and_closes_when_recreated(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("8000", ttl="1h")]) as engine:
        engine.run_due()
        expiry = engine.registry[("main", "8000")].expires_at
        assert expiry is not None
        outage_end = expiry + timedelta(minutes=20)
        emulator.add_fault(Fault(status=503, end=outage_end))
        # Backoff grows to retry_max (15m) during the outage: recovery comes within that after it.
        stop = outage_end + timedelta(minutes=16)
        while sim_clock() < stop:
            sim_clock.set(min(engine.next_due(), stop))
            engine.run_due()
        gaps = engine.store.gaps()
    truth = emulator.live_intervals("8000")
    assert len(truth) == 2
    (gap,) = gaps
    assert gap.cause == "expired"
    assert gap.start == truth[0][1] == expiry
    assert gap.end is not None
    assert abs((gap.end - truth[1][0]).total_seconds()) <= 1


def test_a_channel_deleted_behind_our_back_is_recreated_and_the_gap_recorded(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("8100")]) as engine:
        engine.run_due()
        sim_clock.advance(timedelta(minutes=3))
        engine.run_pass(sim_clock(), listing=True)  # the last listing that shows it
        seen = sim_clock()
        sim_clock.advance(timedelta(minutes=1))
        emulator.delete_channel("8100")
        sim_clock.advance(timedelta(minutes=2))
        report = engine.run_pass(sim_clock(), listing=True)
        (gap,) = engine.store.gaps()
    assert report.counts["create"] == 1
    assert "8100" in emulator.channels()
    # Instants on Zoho's clock, as estimated from whole-second Date headers: within a second.
    assert gap.cause == "vanished"
    assert abs((gap.start - seen).total_seconds()) <= 1
    assert gap.end is not None
    assert abs((gap.end - sim_clock()).total_seconds()) <= 1


def test_renewal_of_a_vanished_channel_recreates_it_at_once(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """A PATCH answered NOT_SUBSCRIBED (no listing yet showed it gone) is followed by a POST."""
    with engine_for([Chan("8200")]) as engine:
        engine.run_due()
        engine.next_reconcile = sim_clock() + timedelta(days=1)  # no listing shows it gone first
        emulator.delete_channel("8200")
        emulator.clear_calls()
        sim_clock.set(engine.next_due())
        engine.run_due()
        gaps = engine.store.gaps()
    assert methods(emulator) == ["PATCH", "POST"]
    assert "8200" in emulator.channels()
    assert len(gaps) == 1
    assert gaps[0].end is not None


def test_a_transient_failure_backs_off_but_renews_before_expiry(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("8300", ttl="1h")]) as engine:
        engine.run_due()
        expiry = engine.registry[("main", "8300")].expires_at
        assert expiry is not None
        emulator.add_fault(Fault(status=500, methods=frozenset({"PATCH"}), count=4))
        while not emulator.faults[0].hits >= 4 or "PATCH" not in [
            c.method for c in emulator.calls if c.status == 200
        ]:
            sim_clock.set(engine.next_due())
            assert sim_clock() < expiry
            engine.run_due()
        gaps = engine.store.gaps()
    assert gaps == []
    assert len(emulator.live_intervals("8300")) == 1


@pytest.mark.parametrize("slow", [0, 30])
def test_rate_limit_pauses_the_account_until_retry_after(
    emulator: Emulator,
    engine_for: OpenEngine,
    sim_clock: SimClock,
    monkeypatch: pytest.MonkeyPatch,
    slow: int,
) -> None:
    """With a slow Zoho (the 429 comes ``slow`` s into the pass) the Retry-After counts from the
    answer, not from the start of the pass."""
    with engine_for([Chan("8400")]) as engine:
        engine.run_due()
        engine.next_reconcile = sim_clock() + timedelta(days=1)
        emulator.add_fault(Fault(status=429, retry_after=120, methods=frozenset({"PATCH"}), count=1))
        sim_clock.set(engine.next_due())
        unit = next(iter(engine.memory.units.values()))
        send = unit.client.write

        def slow_write(*args: Any, **kwargs: Any) -> Any:
            sim_clock.advance(timedelta(seconds=slow))
            return send(*args, **kwargs)

        monkeypatch.setattr(unit.client, "write", slow_write)
        answered = sim_clock() + timedelta(seconds=slow)
        engine.run_due()
        assert engine.next_due() >= answered + timedelta(seconds=120)
        sim_clock.set(engine.next_due())
        engine.run_due()
    statuses = [(c.method, c.status) for c in emulator.calls if c.method == "PATCH"]
    assert statuses == [("PATCH", 429), ("PATCH", 200)]


def test_crash_before_the_post_leaves_nothing_duplicated(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("8500"), Chan("8501")]) as engine:

        def crash(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt  # the process dies after the store write, before the call

        engine.memory.units["main"].client.write = crash  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            engine.run_due()
    assert "POST" not in methods(emulator)
    with engine_for([Chan("8500"), Chan("8501")]) as engine:
        assert {e.state for e in engine.registry.values()} == {"pending"}
        engine.run_due()
    assert methods(emulator).count("POST") == 1
    assert set(emulator.channels()) == {"8500", "8501"}


def test_crash_after_the_post_renews_instead_of_posting_again(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("8600")]) as engine:
        client = engine.memory.units["main"].client
        real = client.write

        def crash_after(*args: object, **kwargs: object) -> None:
            real(*args, **kwargs)  # type: ignore[arg-type]
            raise KeyboardInterrupt  # Zoho did it; we died before recording the answer

        client.write = crash_after  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            engine.run_due()
    with engine_for([Chan("8600")]) as engine:
        sim_clock.advance(timedelta(seconds=10))
        engine.run_due()
        state = engine.registry[("main", "8600")].state
    assert methods(emulator) == ["GET", "POST", "GET", "PATCH"]
    assert state == "active"
    assert len(emulator.live_intervals("8600")) == 1


def test_restart_reuses_the_stored_renewal_time_and_access_token(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("8700")]) as engine:
        engine.run_due()
        due = engine.registry[("main", "8700")].renew_at
    with engine_for([Chan("8700")]) as engine:
        engine.next_reconcile = due + timedelta(hours=1)  # only the renewal is due
        assert engine.next_due() == due
    assert [c.method for c in emulator.calls].count("TOKEN") == 1


def test_store_never_holds_tokens_or_secrets(
    emulator: Emulator, engine_for: OpenEngine, tmp_path: Path
) -> None:
    with engine_for([Chan("8800")]) as engine:
        engine.run_due()
        db = engine.store
        assert isinstance(db, Store)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("watchkeeper.db*"))
    assert HOOK_TOKEN.encode() not in raw
    for secret in env().values():
        assert secret.encode() not in raw


@pytest.mark.parametrize("emulator", [{"forbidden_modules": frozenset({"Invoices"})}], indirect=True)
def test_one_rejected_item_does_not_stop_the_others(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    chans = [Chan("9100"), Chan("9101", events=["Invoices.create"]), Chan("9102")]
    with engine_for(chans) as engine:
        report = engine.run_due()
        rejected = engine.registry[("main", "9101")]
        sim_clock.advance(timedelta(minutes=10))
        emulator.clear_calls()
        engine.run_due()  # the rejected channel is not retried in a hot loop
        assert rejected.retry_at is not None
        assert engine.next_due() < rejected.retry_at  # the others' schedule is unaffected
    assert (report.counts["create"], report.failed) == (2, 1)
    assert set(emulator.channels()) == {"9100", "9102"}
    assert rejected.state == "failed"
    assert rejected.last_error == "INVALID_DATA events"
    assert rejected.retry_at - sim_clock() > timedelta(minutes=45)
    assert "9101" not in {cid for c in emulator.calls for cid in c.channel_ids}


def test_a_batch_that_failed_together_is_retried_together(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """One backoff draw per failed request: with one draw per channel, every retry of a 20-channel
    batch went out as its own request (the soak saw 12,000 of them in three 2-hour outages)."""
    with engine_for([Chan(str(9200 + i), ttl="10h") for i in range(20)]) as engine:
        engine.run_due()
        engine.next_reconcile = sim_clock() + timedelta(days=1)
        # two attempts: the request and its three retries in place, then (Zoho failing) once
        emulator.add_fault(Fault(status=500, methods=frozenset({"PATCH"}), count=5))
        passes = 0
        while not [c for c in emulator.calls if c.method == "PATCH" and c.status == 200]:
            sim_clock.set(engine.next_due())
            engine.run_due()
            passes += 1
    patches = [(c.status, c.items) for c in emulator.calls if c.method == "PATCH"]
    assert patches == [(500, 20)] * 5 + [(200, 20)]
    assert passes == 3


@pytest.mark.parametrize("emulator", [{"clock_skew": timedelta(minutes=5)}], indirect=True)
def test_a_restart_just_after_an_expiry_measures_the_skew_before_judging_the_listing(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """Zoho's clock runs 5 minutes ahead. A daemon down across a channel's expiry that comes back
    within those 5 minutes must not take the channel for one deleted behind its back (a gap from
    the last listing that showed it): it expired, and the gap starts at its expiry."""
    chans = [Chan("9300", ttl="1h")]
    with engine_for(chans) as engine:
        engine.run_due()
        sim_clock.advance(timedelta(minutes=10))
        engine.run_pass(sim_clock(), listing=True)  # the last listing that shows it
        expiry = engine.registry[("main", "9300")].expires_at
    assert expiry is not None
    sim_clock.set(expiry - timedelta(minutes=2))  # Zoho's clock reads expiry + 3 min
    with engine_for(chans) as engine:
        engine.run_due()
        (gap,) = engine.store.gaps()
    assert gap.cause == "expired"
    assert gap.start == expiry == emulator.live_intervals("9300")[0][1]


def test_a_channel_deleted_before_any_listing_showed_it_dates_its_gap_from_its_creation(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """Zoho's answer to the POST is evidence the channel was live then; without it, the gap of a
    channel deleted before the next listing started at the listing that noticed, later than the
    deletion: the ledger then hid events that need a backfill."""
    with engine_for([Chan("9400")]) as engine:
        engine.run_due()  # lists (nothing there yet), then creates
        created = sim_clock()
        sim_clock.advance(timedelta(minutes=10))
        emulator.delete_channel("9400")
        sim_clock.advance(timedelta(minutes=15))
        engine.run_pass(sim_clock(), listing=True)
        (gap,) = engine.store.gaps()
    assert gap.cause == "vanished"
    deleted_at = emulator.live_intervals("9400")[0][1]
    assert deleted_at is not None
    assert gap.start <= deleted_at
    assert abs((gap.start - created).total_seconds()) <= 1


def _events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == name]


def test_at_risk_is_announced_once_not_on_every_retry(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("9200", ttl="1h")]) as engine:
        engine.run_due()
        expiry = engine.registry[("main", "9200")].expires_at
        assert expiry is not None
        engine.next_reconcile = expiry + timedelta(hours=1)
        emulator.add_fault(Fault(status=500, methods=frozenset({"PATCH"})))
        with structlog.testing.capture_logs() as logs:
            sim_clock.set(expiry - timedelta(minutes=2))  # inside the last twentieth
            for _ in range(5):
                engine.run_due()
                sim_clock.advance(timedelta(seconds=10))
        patches = [c for c in emulator.calls if c.method == "PATCH"]
    assert len(patches) >= 3  # it kept trying
    (risk,) = _events(logs, "channel.at_risk")
    assert risk["channel_id"] == "9200"
    assert engine.registry[("main", "9200")].state == "at_risk"


def test_expiry_clamped_is_logged_when_it_starts_not_on_every_renewal(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("9300", ttl="6d")]) as engine:
        emulator.grant_only_default(sim_clock(), sim_clock() + timedelta(hours=5))
        with structlog.testing.capture_logs() as logs:
            engine.run_due()
            for _ in range(4):
                sim_clock.set(engine.registry[("main", "9300")].renew_at)  # type: ignore[arg-type]
                engine.run_due()
        renewed = _events(logs, "channel.renewed")
    assert len(renewed) == 4
    (clamped,) = _events(logs, "channel.expiry_clamped")
    assert abs(clamped["granted"] - timedelta(hours=1)) <= timedelta(seconds=1)  # type: ignore[operator]


def test_drift_is_announced_with_field_names_only(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("9400")]) as engine:
        engine.run_due()
        emulator.change_channel("9400", token="changed-behind-our-back-123")
        sim_clock.advance(timedelta(minutes=1))
        with structlog.testing.capture_logs() as logs:
            engine.run_pass(sim_clock(), listing=True)
    (drift,) = _events(logs, "channel.drift")
    assert drift["drift"] == ["token"]
    assert "changed-behind-our-back-123" not in repr(logs)
    assert HOOK_TOKEN not in repr(logs)
    assert emulator.channels()["9400"].token == HOOK_TOKEN


def test_a_reload_that_adds_an_account_connects_to_it(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, tmp_path: Path
) -> None:
    emulator.add_org(org_of("second"))
    with engine_for([Chan("9500")]) as engine:
        engine.run_due()
        chans = [Chan("9500", account="main"), Chan("9501", account="second")]
        path = write_state(tmp_path / "channels.toml", emulator.url, chans, accounts=("main", "second"))
        engine.reload(config.load(path))
        report = engine.run_due()
    assert report.counts["create"] == 1
    assert set(emulator.channels(org_of("second"))) == {"9501"}


# -- regressions found in review ---------------------------------------------------------------


@pytest.mark.parametrize("emulator", [{"expired_listed_for": timedelta(hours=1)}], indirect=True)
def test_an_expired_row_still_listed_does_not_end_the_gap(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """Whether Zoho lists a channel a while after its expiry is unconfirmed: an expired row is
    not a live channel, so it neither hides the lapse nor closes the gap early."""
    with engine_for([Chan("9600", ttl="1h")]) as engine:
        engine.run_due()
        expiry = engine.registry[("main", "9600")].expires_at
        assert expiry is not None
        outage_end = expiry + timedelta(minutes=40)
        emulator.add_fault(
            Fault(status=503, methods=frozenset({"POST", "PATCH", "PUT"}), end=outage_end)
        )
        stop = outage_end + timedelta(minutes=20)
        while sim_clock() < stop:
            sim_clock.set(min(engine.next_due(), stop))
            engine.run_due()
        (gap,) = engine.store.gaps()
    truth = emulator.live_intervals("9600")
    assert gap.start == expiry == truth[0][1]
    assert gap.end is not None
    assert abs((gap.end - truth[1][0]).total_seconds()) <= 1
    assert gap.end >= outage_end


def test_a_per_item_internal_error_is_retried_before_the_expiry(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """Only codes that say the definition is wrong wait an hour; an INTERNAL_ERROR item backs off."""
    with engine_for([Chan("9700", ttl="1h")]) as engine:
        engine.run_due()
        engine.next_reconcile = sim_clock() + timedelta(days=1)
        emulator.add_fault(
            Fault(status=207, body="items", code="INTERNAL_ERROR", methods=frozenset({"PATCH"}), count=1)
        )
        sim_clock.set(engine.next_due())
        engine.run_due()
        entry = engine.registry[("main", "9700")]
        assert (entry.failures, entry.terminal) == (1, False)
        assert entry.retry_at is not None
        assert entry.retry_at - sim_clock() <= timedelta(seconds=30)
        sim_clock.set(engine.next_due())
        engine.run_due()
        gaps = engine.store.gaps()
    assert [c.status for c in emulator.calls if c.method == "PATCH"] == [207, 200]
    assert gaps == []


def test_a_failed_listing_is_not_due_again_at_once(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("9800", ttl="6d")]) as engine:  # no renewal due for days
        engine.run_due()
        emulator.add_fault(Fault(status=503, methods=frozenset({"GET"})))
        sim_clock.set(engine.next_reconcile)
        report = engine.run_due()
        assert report.list_failed == ["main"]
        due = engine.next_due()
    # Retried on the backoff scale (retry_initial 30 s for a first failure), not at once.
    assert timedelta(seconds=1) <= due - sim_clock() <= timedelta(seconds=30)


def test_a_failing_listing_keeps_probing_within_two_minutes(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """A failed listing costs one request and is the probe that ends an outage: however long the
    outage, the next one comes within probe_max, and the first that succeeds brings all back."""
    with engine_for([Chan("9810", ttl="6d")]) as engine:
        engine.run_due()
        emulator.add_fault(Fault(status=503, methods=frozenset({"GET"})))
        waits = []
        for _ in range(12):
            sim_clock.set(engine.next_reconcile)
            assert engine.run_due().list_failed == ["main"]
            waits.append(engine.next_reconcile - sim_clock())
    assert max(waits) <= timedelta(minutes=2)
    assert min(waits) >= timedelta(seconds=1)


def test_a_gap_closes_when_the_channel_is_live_again_whatever_failed_in_between(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("9900", ttl="1d")]) as engine:
        engine.run_due()
        emulator.delete_channel("9900")
        emulator.add_fault(
            Fault(status=202, body="items", code="NO_PERMISSION", methods=frozenset({"POST"}), count=1)
        )
        sim_clock.advance(timedelta(minutes=31))
        engine.run_due()  # the listing shows it gone; the re-creation is refused: failed for an hour
        assert engine.registry[("main", "9900")].state == "failed"
        # Someone else puts it back: the next listing shows it live, so the gap ends there.
        emulator.add_foreign_channel("9900", ["Contacts.create"], "https://restored.example.com/")
        restored = sim_clock()
        stop = sim_clock() + timedelta(hours=2)
        while sim_clock() < stop:
            sim_clock.set(min(engine.next_due(), stop))
            engine.run_due()
        (gap,) = engine.store.gaps()
    assert engine.registry[("main", "9900")].state == "active"
    assert gap.end is not None
    assert gap.end - restored <= timedelta(minutes=34)  # the first listing after it came back


def test_channels_whose_deletion_is_refused_stay_alive_across_a_restart(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """Without a token or a notify_url secret the stored spec is complete: renewed. With one (the
    store keeps neither), it cannot be renewed faithfully, but its lapse is recorded, not silent."""
    chans = [
        Chan("9910", ttl="1h", token=False, notify_url="https://hooks.example.com/zoho"),
        Chan("9911", ttl="1h"),
        Chan("9913", ttl="1h", token=False),  # its notify_url holds a secret
        Chan("9912", ttl="1h", token=False),
    ]
    with engine_for(chans) as engine:
        engine.run_due()
    with engine_for(chans[3:]) as engine:  # restarted on a file that drops three of four: refused
        stop = sim_clock() + timedelta(hours=3)
        while sim_clock() < stop:
            sim_clock.set(min(engine.next_due(), stop))
            engine.run_due()
        gaps = {g.channel_id: g for g in engine.store.gaps()}
    assert len(emulator.live_intervals("9910")) == 1
    assert emulator.live_intervals("9910")[0][1] is None
    assert set(gaps) == {"9911", "9913"}
    assert gaps["9911"].cause == gaps["9913"].cause == "expired"
    assert len(emulator.live_intervals("9913")) == 1  # never renewed with the masked URL
    assert "DELETE" not in methods(emulator)


def test_once_zoho_answers_again_held_back_channels_go_at_once(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """After an outage the first successful listing ends the transient holds of its account: the
    lapsed channels are re-created in that pass, not at the end of a 15-minute backoff."""
    with engine_for([Chan("9930", ttl="1h"), Chan("9931", ttl="1h")]) as engine:
        first_listing = _through_an_outage(engine, emulator, sim_clock)
        engine.run_due()
    for cid in ("9930", "9931"):
        intervals = emulator.live_intervals(cid)
        assert len(intervals) == 2
        assert intervals[1][0] == first_listing


def test_a_5xx_on_the_first_re_creation_after_an_outage_backs_off_afresh(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """The failures of the outage are over with it: one 5xx on the POST that re-creates the lapsed
    channels retries them within retry_initial, not on the outage's streak (up to 15 minutes)."""
    with engine_for([Chan("9930", ttl="1h"), Chan("9931", ttl="1h")]) as engine:
        first_listing = _through_an_outage(engine, emulator, sim_clock)
        # the POST and its three retries in place
        emulator.add_fault(Fault(status=500, methods=frozenset({"POST"}), count=4))
        engine.run_due()
        retries = [e.retry_at for e in engine.registry.values()]
    soon = first_listing + engine.state.policy.retry_initial
    assert all(at is not None and at <= soon for at in retries)


def _through_an_outage(engine: Engine, emulator: Emulator, sim_clock: SimClock) -> datetime:
    """Channels lapse in a 503 outage of every path; the clock stops at the first listing after it,
    which comes before the channels' holds end. Returns that instant."""
    engine.run_due()
    expiry = engine.registry[("main", "9930")].expires_at
    assert expiry is not None
    outage_end = expiry + timedelta(hours=1)
    emulator.add_fault(Fault(status=503, paths="any", end=outage_end))
    while sim_clock() < outage_end:
        sim_clock.set(min(engine.next_due(), outage_end))
        engine.run_due()
    first_listing = outage_end + timedelta(seconds=1)
    engine.next_reconcile = first_listing
    held = [e.retry_at for e in engine.registry.values()]
    assert all(at is not None and at > first_listing for at in held)
    sim_clock.set(first_listing)
    return first_listing


def test_a_confirmation_lapses_once_its_channel_is_wanted_again(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, tmp_path: Path
) -> None:
    chans = [Chan(str(9920 + i)) for i in range(4)]
    with engine_for(chans) as engine:
        engine.run_due()
        engine.store.confirm_deletes([("main", "9921"), ("main", "9922"), ("main", "9923")], sim_clock())
        sim_clock.advance(timedelta(minutes=31))
        engine.run_due()  # the file still wants them: nothing deleted, the confirmation is void
        assert engine.store.confirmed_deletes() == frozenset()
        engine.reload(config.load(write_state(tmp_path / "channels.toml", emulator.url, chans[:1])))
        report = engine.run_due()
    assert [r.reason for r in report.refused] == ["mass_delete"]
    assert len(emulator.channels()) == 4


# -- defects of the one-class engine (issue 9) and its hardening (issue 10) ------------------------


def run_until(engine: Engine, sim_clock: SimClock, stop: datetime) -> None:
    while sim_clock() < stop:
        sim_clock.set(min(engine.next_due(), stop))
        engine.run_due()


def test_a_lapsed_channel_that_reappears_is_active_again_and_not_posted(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """The lapsed state was kept three times; a listing that showed the channel back closed the gap
    but left the state "lapsed", so the next pass without a listing POSTed a live channel."""
    with engine_for([Chan("9950", ttl="1d")]) as engine:
        engine.run_due()
        # One listing omits the channel (Zoho answers 204), so a gap opens; the re-creating POST
        # gets a 503; the next listing shows the channel live again, exactly as desired.
        emulator.add_fault(Fault(status=204, body="empty", methods=frozenset({"GET"}), count=1))
        fault_end = sim_clock() + timedelta(minutes=40)
        emulator.add_fault(Fault(status=503, methods=frozenset({"POST"}), end=fault_end))
        sim_clock.advance(timedelta(minutes=31))
        engine.next_reconcile = sim_clock()
        engine.run_due()
        assert engine.registry[("main", "9950")].state == "lapsed"
        sim_clock.advance(timedelta(minutes=1))
        engine.next_reconcile = sim_clock()
        engine.run_due()  # the listing shows it live: the gap closes
        assert engine.registry[("main", "9950")].state == "active"
        assert engine.next_due() > sim_clock()
        emulator.clear_calls()
        engine.next_reconcile = sim_clock() + timedelta(days=1)
        run_until(engine, sim_clock, fault_end + timedelta(minutes=5))
        (gap,) = engine.store.gaps()
    assert "POST" not in methods(emulator)
    assert gap.end is not None


@pytest.mark.parametrize(
    "emulator",
    [{"patch_unknown": "invalid_data"}, {"patch_unknown": "error"}],
    indirect=True,
    ids=["invalid-data", "not-subscribed"],
)
def test_a_vanished_channel_whose_patch_zoho_refuses_is_recreated_at_once(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """Zoho's answer to a PATCH of a channel it no longer knows is UNCONFIRMED; answered
    INVALID_DATA, the channel was parked for an hour. The listing decides: it is re-created."""
    with engine_for([Chan("9960", ttl="1h")]) as engine:
        engine.run_due()
        renew_at = engine.registry[("main", "9960")].renew_at
        assert renew_at is not None
        engine.next_reconcile = renew_at + timedelta(days=1)
        sim_clock.set(renew_at - timedelta(seconds=5))
        emulator.delete_channel("9960")
        deleted = sim_clock()
        run_until(engine, sim_clock, renew_at + timedelta(minutes=5))
        (gap,) = engine.store.gaps()
    intervals = emulator.live_intervals("9960")
    assert len(intervals) == 2
    assert intervals[1][0] - deleted <= timedelta(seconds=30)
    assert gap.cause == "vanished"
    assert gap.end is not None


def test_one_accounts_failure_of_any_kind_never_stops_the_others(
    emulator: Emulator, tmp_path: Path, sim_clock: SimClock
) -> None:
    emulator.add_org(org_of("second"))
    chans = [Chan("9970", account="main", ttl="1h"), Chan("9971", account="second", ttl="1h")]
    path = write_state(tmp_path / "channels.toml", emulator.url, chans, accounts=("main", "second"))
    with (
        structlog.testing.capture_logs() as logged,
        open_engine(
            config.load(path), clock=sim_clock, rng=random.Random(7), sleep=sim_clock.sleep
        ) as engine,
    ):
        engine.run_due()

        def overflow(*args: object, **kwargs: object) -> None:
            raise OverflowError("date value out of range")

        engine.memory.units["main"].client.write = overflow  # type: ignore[method-assign]
        run_until(engine, sim_clock, sim_clock() + timedelta(hours=3))
        gaps = engine.store.gaps()
    assert {g.channel_id for g in gaps} == {"9970"}  # only the broken account's channel lapsed
    assert len(emulator.live_intervals("9971", org=org_of("second"))) == 1
    failed = [e for e in logged if e["event"] == "engine.account_failed"]
    assert failed
    assert {e["account"] for e in failed} == {"main"}


def test_a_rate_limit_pause_never_outlasts_a_channels_emergency_point(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """A 429 asking for an hour, on channels with 20 minutes to live: they are probed from their
    emergency point on and Zoho's recovery is seen at once, instead of a lapse."""
    with engine_for([Chan("9980", ttl="20m"), Chan("9981", ttl="20m")]) as engine:
        engine.run_due()
        renew_at = engine.registry[("main", "9980")].renew_at
        assert renew_at is not None
        sim_clock.set(renew_at)
        emulator.add_fault(Fault(status=429, retry_after=3600, methods=frozenset({"PATCH"}), count=1))
        run_until(engine, sim_clock, sim_clock() + timedelta(hours=1))
        gaps = engine.store.gaps()
    assert gaps == []
    assert all(len(emulator.live_intervals(c)) == 1 for c in ("9980", "9981"))


def test_a_listing_skipped_during_a_pause_is_due_when_the_pause_ends(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("9990", ttl="1h")], daemon='reconcile_every = "12h"') as engine:
        engine.run_due()
        renew_at = engine.registry[("main", "9990")].renew_at
        assert renew_at is not None
        sim_clock.set(renew_at)
        engine.next_reconcile = renew_at + timedelta(seconds=30)
        emulator.add_fault(Fault(status=429, retry_after=120, methods=frozenset({"PATCH"}), count=1))
        emulator.clear_calls()
        run_until(engine, sim_clock, renew_at + timedelta(minutes=10))
    listings = [c for c in emulator.calls if c.method == "GET"]
    assert listings, "the listing due during the pause never came"


def test_request_listing_makes_the_next_pass_list(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    with engine_for([Chan("9995", ttl="1d")]) as engine:
        engine.run_due()
        sim_clock.advance(timedelta(minutes=1))
        emulator.clear_calls()
        engine.run_due()
        assert methods(emulator) == []
        engine.request_listing()
        engine.run_due()
    assert methods(emulator) == ["GET"]


def test_preview_changes_nothing(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, tmp_path: Path
) -> None:
    """``watchkeeper plan`` is read-only: neither the store nor the engine's memory change, even
    when the ledger would open a gap and a guard refuses deletions."""
    chans = [Chan(str(9996 + i), ttl="1h", token=False) for i in range(3)]
    with engine_for(chans) as engine:
        engine.run_due()
    with engine_for(chans[:1]) as engine:
        sim_clock.advance(timedelta(hours=2))  # every channel expired
        before = (copy.deepcopy(engine.memory.units["main"].entries), engine.store.gaps())
        first = engine.preview(sim_clock())
        second = engine.preview(sim_clock())
        after = (engine.memory.units["main"].entries, engine.store.gaps())
        registry = engine.store.registry()
    assert first == second
    assert {a.kind for a in first.actions} == {"create"}
    assert [r.reason for r in first.refused] == ["mass_delete"]
    assert before == after
    assert all(e.lapsed_since is None for e in registry.values())


def test_a_reload_lifts_the_token_servers_hold(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, tmp_path: Path
) -> None:
    """A 429 from the accounts server with a Retry-After of 31 years holds refreshes back ten
    minutes at most, and an operator's reload lifts the hold at once."""
    chans = [Chan("9997", ttl="1d")]
    emulator.add_fault(
        Fault(status=429, retry_after=999999999, methods=frozenset({"TOKEN"}), paths="token", count=1)
    )
    with engine_for(chans) as engine:
        assert engine.run_due().list_failed == ["main"]
        engine.reload(config.load(write_state(tmp_path / "channels.toml", emulator.url, chans)))
        report = engine.run_due()
    assert report.counts["create"] == 1
    assert [c.method for c in emulator.calls].count("TOKEN") == 2


def test_an_interrupted_request_is_reported_once_then_cleared_by_a_listing(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock
) -> None:
    """A kill after the answer's registry write but before the journal was cleared left the
    intents behind for good: ``engine.interrupted`` on every start, even after clean passes."""
    chans = [Chan("9998")]
    with engine_for(chans) as engine:
        engine.run_due()
        renew_at = engine.registry[("main", "9998")].renew_at
        assert renew_at is not None
        sim_clock.set(renew_at)

        def crash(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt  # the process dies right there

        engine.store.done = crash  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            engine.run_due()
    starts = []
    for _ in range(2):
        sim_clock.advance(timedelta(seconds=10))
        with structlog.testing.capture_logs() as logged, engine_for(chans) as engine:
            engine.run_due()
        starts.append([e["event"] for e in logged].count("engine.interrupted"))
    assert starts == [1, 0]


def test_accounts_are_served_concurrently_each_in_order(
    emulator: Emulator, tmp_path: Path, sim_clock: SimClock
) -> None:
    """Four accounts whose listings each take a while: with ``concurrency = 4`` they overlap; each
    account's own calls still come one after another (GET, then POST)."""
    names = ["main", "a1", "a2", "a3"]
    for name in names[1:]:
        emulator.add_org(org_of(name))
    chans = [Chan(str(9900 + i), account=name) for i, name in enumerate(names)]
    path = write_state(
        tmp_path / "channels.toml", emulator.url, chans, accounts=names, daemon="concurrency = 4"
    )
    lock, active, most = threading.Lock(), [0], [0]
    with open_engine(
        config.load(path), clock=sim_clock, rng=random.Random(7), sleep=sim_clock.sleep
    ) as engine:
        for client in (u.client for u in engine.memory.units.values()):
            real = client.list_counted

            def listing(
                real: Callable[..., tuple[dict[str, ObservedChannel], int]] = real,
                **kwargs: Any,
            ) -> tuple[dict[str, ObservedChannel], int]:
                with lock:
                    active[0] += 1
                    most[0] = max(most[0], active[0])
                try:
                    return real(**kwargs)
                finally:
                    with lock:
                        active[0] -= 1

            client.list_counted = listing  # type: ignore[method-assign]
        emulator.add_fault(Fault(status=None, latency=0.3, methods=frozenset({"GET"})))
        report = engine.run_due()
    assert report.counts["create"] == 4
    assert most[0] > 1
    for name in names:
        calls = [c for c in emulator.calls if c.org == org_of(name) and c.method in ("GET", "POST")]
        assert [c.method for c in calls] == ["GET", "POST"]


def test_a_pass_also_serves_an_account_that_falls_due_while_it_runs(
    emulator: Emulator, tmp_path: Path, sim_clock: SimClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first account's renewal takes 10 minutes (a slow Zoho, a fleet of thousands): the
    second account's renewal, due meanwhile, is made in the same pass, not left for the next."""
    emulator.add_org(org_of("second"))
    chans = [Chan("9950", account="main"), Chan("9951", account="second")]
    path = write_state(tmp_path / "channels.toml", emulator.url, chans, accounts=("main", "second"))
    with open_engine(
        config.load(path), clock=sim_clock, rng=random.Random(7), sleep=sim_clock.sleep
    ) as engine:
        engine.run_due()
        engine.next_reconcile = sim_clock() + timedelta(days=1)
        first, other = sorted(
            engine.memory.units.values(), key=lambda u: u.next_due(sim_clock(), engine.state.policy)
        )
        assert other.next_due(sim_clock(), engine.state.policy) < first.next_due(
            sim_clock(), engine.state.policy
        ) + timedelta(minutes=10)
        send = first.client.write

        def slow_write(*args: Any, **kwargs: Any) -> Any:
            sim_clock.advance(timedelta(minutes=10))
            return send(*args, **kwargs)

        monkeypatch.setattr(first.client, "write", slow_write)
        sim_clock.set(engine.next_due())
        report = engine.run_due()
    assert report.counts["renew"] == 2
    assert [c.org for c in emulator.calls if c.method == "PATCH"] == [
        org_of(first.name),
        org_of(other.name),
    ]


@pytest.mark.parametrize("emulator", [{"forbidden_modules": frozenset({"Invoices"})}], indirect=True)
def test_the_cached_censuses_match_a_recount_after_every_change(
    emulator: Emulator, engine_for: OpenEngine, sim_clock: SimClock, tmp_path: Path
) -> None:
    """The status line and the deletion guards count from the units' cached censuses (an idle tick
    must not recount every channel): whatever a pass or a reload changed, they say what counting
    the registry says."""

    def recount(engine: Engine) -> tuple[Counter[str], datetime | None]:
        desired = {(c.account, c.channel_id) for c in engine.state.channels}
        owned = [e for k, e in engine.registry.items() if k in desired]
        renewals = [e.renew_at for e in owned if e.renew_at is not None]
        return Counter(e.state for e in owned), min(renewals, default=None)

    def check(engine: Engine) -> None:
        counted = engine.memory.census()
        assert (counted.states, counted.renew_at) == recount(engine)
        policy = engine.state.policy
        guarded = planner.guard(engine.memory.desired, engine.registry, policy)
        assert engine.memory.guard(policy, frozenset()) == guarded

    chans = [Chan("9970", ttl="1h"), Chan("9971", events=["Invoices.create"]), Chan("9972", ttl="2h")]
    with engine_for(chans) as engine:
        check(engine)  # nothing owned yet
        engine.run_due()  # two created, one rejected
        check(engine)
        assert engine.memory.census().states == Counter(active=2, failed=1)
        expiry = engine.registry[("main", "9970")].expires_at
        assert expiry is not None
        engine.next_reconcile = expiry + timedelta(hours=1)
        # two attempts: the request and its three retries in place, then (Zoho failing) once
        emulator.add_fault(Fault(status=500, methods=frozenset({"PATCH"}), count=5))
        sim_clock.set(expiry - timedelta(minutes=2))  # inside the last twentieth: at risk
        engine.run_due()
        check(engine)
        assert engine.memory.census().states["at_risk"] >= 1
        sim_clock.advance(timedelta(minutes=1))
        run_until(engine, sim_clock, expiry + timedelta(minutes=5))  # renewed once Zoho answers
        check(engine)
        path = write_state(tmp_path / "channels.toml", emulator.url, chans[:1])
        engine.reload(config.load(path))  # two no longer desired: out of the counts at once
        check(engine)
        engine.run_due()  # and deleted
        check(engine)
    assert engine.memory.census().states == Counter(active=1)


# -- each account's own look interval (``[accounts.NAME].reconcile_every``) ------------------------


def look_gaps(emu: Emulator, org: str, since: datetime) -> list[timedelta]:
    """The time between an org's consecutive looks (GETs of its channels) from ``since`` on."""
    looks = [c.at for c in emu.calls if c.method == "GET" and c.org == org and c.at >= since]
    return [b - a for a, b in itertools.pairwise(looks)]


def test_each_account_is_looked_at_on_its_own_interval_and_a_reload_changes_it(
    emulator: Emulator, tmp_path: Path, sim_clock: SimClock
) -> None:
    """``main`` says 2h, ``second`` nothing (the daemon's 30m); a reload swaps them (``main``
    nothing, ``second`` 2h) and the new intervals apply from the listing the reload makes, with
    the clients kept."""
    emulator.add_org(org_of("second"))
    chans = [Chan("9980", account="main", ttl="23h"), Chan("9981", account="second", ttl="23h")]
    path, names = tmp_path / "channels.toml", ("main", "second")

    def state(slow: str) -> config.DesiredState:
        accounts = {name: 'reconcile_every = "2h"' if name == slow else "" for name in names}
        return config.load(write_state(path, emulator.url, chans, accounts=accounts))

    with open_engine(
        state("main"), clock=sim_clock, rng=random.Random(7), sleep=sim_clock.sleep
    ) as engine:
        start = sim_clock()
        run_until(engine, sim_clock, start + timedelta(hours=8))
        gaps = {o: look_gaps(emulator, org_of(o), start) for o in names}
        clients = {name: unit.client for name, unit in engine.memory.units.items()}
        engine.reload(state("second"))
        reloaded = emulator.now()
        kept = {name: unit.client for name, unit in engine.memory.units.items()}
        run_until(engine, sim_clock, sim_clock() + timedelta(hours=8))
        swapped = {o: look_gaps(emulator, org_of(o), reloaded) for o in names}

    def within(found: list[timedelta], every: timedelta) -> bool:
        """At least three looks apart (8 hours of 2h ±10 %), each ``every`` ±10 % after the last."""
        return len(found) >= 3 and all(every * 0.9 <= gap <= every * 1.1 for gap in found)

    # The same client objects (and access tokens): only the intervals changed.
    assert [kept[name] is client for name, client in clients.items()] == [True, True]
    two_hours, half_hour = timedelta(hours=2), timedelta(minutes=30)
    assert within(gaps["main"], two_hours), gaps["main"]
    assert within(gaps["second"], half_hour), gaps["second"]
    assert within(swapped["main"], half_hour), swapped["main"]
    assert within(swapped["second"], two_hours), swapped["second"]
