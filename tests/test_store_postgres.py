"""The store on a real PostgreSQL server (and, where the behaviour is shared, on SQLite too): one
migration path for both, a password that never shows, a server that goes away and comes back, and
leases with their fencing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from watchkeeper.model import RegistryEntry
from watchkeeper.store import LeaseLost, Store, StoreError, StoreUnavailable, database, migrate
from watchkeeper.store.schema import METADATA
from watchkeeper.store.target import PostgresTarget, Target, parse_url

from tests.pg_server import PASSWORD, PgServer, binaries

HEAD = "0005"
T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)


def target_of(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return tmp_path / "wk.db"
    return parse_url(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return target_of(request, tmp_path)


def sqlalchemy_url(target: Target) -> str:
    if isinstance(target, PostgresTarget):
        return make_url(target.url).set(drivername="postgresql+psycopg").render_as_string(False)
    return f"sqlite:///{target}"


def entry(channel_id: str, account: str = "main") -> RegistryEntry:
    return RegistryEntry(account=account, channel_id=channel_id, state="pending")


# --- one migration path -------------------------------------------------------------------------


def test_a_bare_alembic_upgrade_head_builds_the_declared_schema(target: Target) -> None:
    """What an operator's ``alembic upgrade head`` does to an empty database: every script runs
    from the first, and the result is exactly the schema the tables declare."""
    engine = create_engine(sqlalchemy_url(target))
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(migrate.SCRIPTS))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), METADATA) == []
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [(HEAD,)]
    finally:
        engine.dispose()
    with Store(target) as store:  # and the store takes it as its own
        store.put(entry("1"))
        assert set(store.registry()) == {("main", "1")}


def test_the_store_creates_the_declared_schema_by_the_same_scripts(target: Target) -> None:
    Store(target).close()
    engine = create_engine(sqlalchemy_url(target))
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), METADATA) == []
    finally:
        engine.dispose()


def test_one_shot_opens_never_migrate_postgresql(pg_url: str) -> None:
    target = parse_url(pg_url)
    with pytest.raises(StoreError, match=r"holds no watchkeeper data yet.*watchkeeper migrate"):
        Store(target, migrate="never")
    Store(target, migrate="always").close()
    Store(target, migrate="never").close()


# --- the password -------------------------------------------------------------------------------


def test_a_wrong_password_is_refused_naming_host_and_database_only(pg_server: PgServer) -> None:
    url = pg_server.url("postgres").replace(PASSWORD, "wrong-pass-81c2d")
    with pytest.raises(StoreError) as caught:
        Store(parse_url(url))
    text = str(caught.value)
    assert f"postgres on 127.0.0.1:{pg_server.port} refused watchkeeper" in text
    assert "password authentication failed" in text
    assert "wrong-pass-81c2d" not in text
    assert "wrong-pass-81c2d" not in repr(caught.value.__cause__)


def test_a_target_never_shows_its_password(pg_url: str) -> None:
    target = parse_url(pg_url)
    assert PASSWORD not in str(target)
    assert PASSWORD not in repr(target)
    assert target.secrets() == {PASSWORD}
    with Store(target) as store:
        assert PASSWORD not in store.where


def test_an_unreachable_server_is_unavailable_naming_the_host(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = parse_url(f"postgresql://wk:{PASSWORD}@127.0.0.1:{port}/wk")
    with pytest.raises(StoreUnavailable, match=rf"wk on 127.0.0.1:{port} cannot be reached") as got:
        Store(target)
    assert PASSWORD not in str(got.value)


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A cluster of this test's own, to stop and start without disturbing the others."""
    bindir = binaries()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries")
    server = PgServer(bindir).init()
    try:
        yield server
    finally:
        server.destroy()


def test_a_server_that_goes_away_is_unavailable_and_then_recovers(own_server: PgServer) -> None:
    target = parse_url(own_server.url(own_server.fresh_database()))
    with Store(target) as store:
        store.put(entry("1"))
        own_server.stop("immediate")
        with pytest.raises(StoreUnavailable, match="cannot be reached") as caught:
            store.put(entry("2"))
        assert PASSWORD not in str(caught.value)
        with pytest.raises(StoreUnavailable):
            store.registry()
        own_server.start()
        store.put(entry("3"))
        assert set(store.registry()) == {("main", "1"), ("main", "3")}


# --- leases and fencing -------------------------------------------------------------------------


@pytest.fixture
def store(target: Target) -> Iterator[Store]:
    with Store(target) as s:
        yield s


def test_a_free_account_is_taken_once_and_its_epoch_grows_with_each_holder(store: Store) -> None:
    first = store.take_lease("main", "a", 30)
    assert first is not None
    assert (first.holder, first.epoch) == ("a", 1)
    assert store.take_lease("main", "b", 30) is None  # held
    assert store.release_lease("main", "a", 1)
    second = store.take_lease("main", "b", 30)
    assert second is not None
    assert (second.holder, second.epoch) == ("b", 2)
    assert not store.release_lease("main", "a", 1)  # not a's to give back any more


def test_a_stale_holders_fenced_write_is_refused_and_writes_nothing(store: Store) -> None:
    held = store.take_lease("main", "a", 0.5)
    assert held is not None
    with store.transaction(fence=("main", held.epoch)):
        store.put(entry("1"))
    time.sleep(0.7)  # a pauses past its lease; b takes the account
    taken = store.take_lease("main", "b", 30)
    assert taken is not None
    assert taken.epoch == held.epoch + 1
    with pytest.raises(LeaseLost, match="main"), store.transaction(fence=("main", held.epoch)):
        store.put(entry("2"))
    with store.transaction(fence=("main", taken.epoch)):
        store.put(entry("3"))
    assert set(store.registry()) == {("main", "1"), ("main", "3")}


def test_an_expired_lease_fences_even_before_anyone_takes_it(store: Store) -> None:
    held = store.take_lease("main", "a", 0.3)
    assert held is not None
    time.sleep(0.5)
    with pytest.raises(LeaseLost), store.transaction(fence=("main", held.epoch)):
        store.put(entry("1"))
    assert store.registry() == {}


def test_renewal_extends_only_live_leases_of_the_holder(store: Store) -> None:
    a = store.take_lease("one", "a", 30)
    store.take_lease("two", "a", 0.3)
    store.take_lease("three", "b", 30)
    time.sleep(0.5)
    renewed, _ = store.lease_cycle("a", "digest-a", 30)
    assert set(renewed) == {"one"}
    assert a is not None
    assert renewed["one"].epoch == a.epoch
    assert renewed["one"].expires_at > a.expires_at


def test_the_board_reads_the_databases_clock_and_heartbeats(store: Store) -> None:
    store.lease_cycle("a", "digest-a", 30)
    store.lease_cycle("b", "digest-b", 30)
    _, board = store.lease_cycle("a", "digest-a", 30)
    assert [(i.instance, i.digest) for i in board.instances] == [("a", "digest-a"), ("b", "digest-b")]
    assert all(i.expires_at - board.now <= timedelta(seconds=30) for i in board.instances)
    assert all(i.expires_at > board.now for i in board.instances)
    store.leave("b")
    assert [i.instance for i in store.lease_cycle("a", "digest-a", 30)[1].instances] == ["a"]


# --- backfill jobs, a page at a time -------------------------------------------------------------


def backlog(store: Store, account: str, count: int, start: datetime) -> list[int]:
    """``count`` closed gaps requested for backfill, three to each start (ties order by gap id)."""
    ids = []
    for n in range(count):
        begun = start + timedelta(minutes=n // 3)
        ids.append(store.open_gap(account, str(1000 + n), begun, "expired").id)
        store.close_gap(account, str(1000 + n), begun + timedelta(minutes=5))
    assert store.request_backfill(ids, start) == count
    return ids


def test_pending_jobs_come_a_page_at_a_time_each_once_even_as_they_finish(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "BACKFILL_PAGE", 4)
    ids = backlog(store, "main", 15, T0)
    backlog(store, "other", 2, T0)
    seen = []
    for job in store.pending_backfills("main"):
        seen.append(job.gap.id)
        store.finish_backfill(job.gap.id, "done")  # the page after it is keyed, not offset
    assert seen == ids
    assert list(store.pending_backfills("main")) == []
    assert store.backfill_accounts() == {"other"}


def test_only_ready_jobs_are_read_and_the_next_one_says_when(store: Store) -> None:
    now = T0 + timedelta(hours=1)
    ready, retried, later = backlog(store, "main", 3, T0)
    store.backfill_retry(retried, 1, now, now + timedelta(minutes=10), "HTTP 503")
    store.backfill_retry(ready, 1, T0, now, "HTTP 503")  # its retry time has come
    (unended,) = backlog(store, "main", 1, now)  # its window ends 5 minutes from now
    assert [j.gap.id for j in store.pending_backfills("main", ready_by=now)] == [ready, later]
    assert store.next_backfill_ready("main", now) == now + timedelta(minutes=5)
    store.finish_backfill(unended, "done")
    assert store.next_backfill_ready("main", now) == now + timedelta(minutes=10)
    assert store.next_backfill_ready("other", now) is None
    assert store.backfill_accounts() == {"main"}


# --- watchkeeper migrate --------------------------------------------------------------------------


def test_the_migrate_command_brings_either_backend_to_the_head(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from watchkeeper import cli

    from tests.statefiles import Chan, env, write_state

    state = write_state(tmp_path / "channels.toml", "http://127.0.0.1:9", [Chan("1001")])
    for name, value in env().items():
        monkeypatch.setenv(name, value)
    url = target.url if isinstance(target, PostgresTarget) else str(target)
    monkeypatch.setenv("WK_TEST_DB", url)
    monkeypatch.setenv("WATCHKEEPER_DB", "env:WK_TEST_DB")  # a secret reference, like the key
    assert cli.main(["--state", str(state), "migrate"]) == 0
    out, err = capsys.readouterr()
    assert f"schema at revision {HEAD}" in out
    assert PASSWORD not in out + err
    with Store(target, migrate="never") as store:  # at the head: the one-shot commands open it
        assert store.registry() == {}
