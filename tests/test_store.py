"""watchkeeper.store against real SQLite files: round-trips, file safety, migrations (a database
written by 0.1.0 included), transactions, read-only opens, and the small journals (gaps, intents,
confirmations, access tokens) the engine and the CLI rely on."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import OperationalError, StatementError
from watchkeeper.model import (
    AccessToken,
    ChannelSpec,
    ObservedChannel,
    RegistryEntry,
    parse_events,
    token_digest,
    url_digest,
)
from watchkeeper.secrets import mask_url
from watchkeeper.store import (
    BUSY_TIMEOUT_MS,
    TABLES,
    Gap,
    Intent,
    SchemaTooNewError,
    StatusRow,
    Store,
    StoreError,
    chunks,
    migrate,
)
from watchkeeper.store.schema import METADATA, table_of
from watchkeeper.store.target import parse_url
from watchkeeper.store.upsert import upsert

from tests.helpers import SIM_START

T0 = SIM_START
IST = timezone(timedelta(hours=5, minutes=30))
CHANNEL_TOKEN = "chan-token-7f3c9a1e5d2b"


def spec(channel_id: str = "1001", account: str = "main", **changes: object) -> ChannelSpec:
    base = ChannelSpec(
        account=account,
        channel_id=channel_id,
        events=parse_events(["Deals.all", "Leads.create"]),
        notify_url="https://hooks.example.com/zoho?key=k1",
        ttl=timedelta(hours=24),
        name=f"deals-{channel_id}",
        token=CHANNEL_TOKEN,
        notify_on_related_action=True,
        return_affected_field_values=True,
        notification_condition='[{"field":"Stage"}]',
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def entry(channel_id: str = "1001", account: str = "main", **changes: object) -> RegistryEntry:
    applied = spec(channel_id, account)
    base = RegistryEntry(
        account=account,
        channel_id=channel_id,
        state="active",
        applied=applied,
        applied_token_digest=token_digest(account, channel_id, applied.token),
        expires_at=T0 + timedelta(hours=24),
        lifetime=timedelta(hours=24),
        renew_at=T0 + timedelta(hours=15, minutes=7),
        failures=0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def stored(e: RegistryEntry) -> RegistryEntry:
    """What the store hands back for ``e``: the same entry, its applied spec without the token and
    with the notify_url masked, and the URL's digest (computed if the entry had none)."""
    spec = e.applied
    if spec is None:
        return e
    digest = e.applied_url_digest or url_digest(e.account, e.channel_id, spec.notify_url)
    masked = replace(spec, token=None, notify_url=mask_url(spec.notify_url))
    return replace(e, applied=masked, applied_url_digest=digest)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "watchkeeper.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, db: Path) -> Iterator[Store]:
    """The store on a SQLite file, and on a PostgreSQL database of its own (a real server)."""
    target = db if request.param == "sqlite" else parse_url(request.getfixturevalue("pg_url"))
    with Store(target) as s:
        yield s


@pytest.fixture
def sqlite_store(db: Path) -> Iterator[Store]:
    with Store(db) as s:
        yield s


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, for what the tests build or inspect behind the store's back."""
    return sqlite3.connect(path, isolation_level=None)


def file_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


FIXTURES = Path(__file__).parent / "fixtures"
HEAD = "0005"
"""The newest migration revision: every database is upgraded to it."""


def load_dump(db: Path, dump: Path) -> None:
    """A database file built from a text SQL dump (as ``sqlite3 db .dump`` writes one)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = raw(db)
    conn.executescript(dump.read_text())
    conn.close()


def revisions(db: Path) -> list[str]:
    return [row[0] for row in raw(db).execute("SELECT version_num FROM alembic_version")]


# --- registry -----------------------------------------------------------------------------------


def test_registry_round_trip_keeps_instants_spec_and_digest_but_not_token(store: Store) -> None:
    ist_expiry = datetime(2026, 1, 6, 14, 30, 0, 123456, tzinfo=IST)
    e = entry(
        expires_at=ist_expiry,
        renew_at=ist_expiry - timedelta(hours=9),
        lifetime=timedelta(hours=23, minutes=59, seconds=30, microseconds=5),
        failures=2,
        retry_at=ist_expiry - timedelta(hours=1),
        last_error="INVALID_DATA: notify_url",
        terminal=True,
    )
    store.put(e)

    got = store.get("main", "1001")
    assert got == stored(e)
    assert got is not None
    assert got.applied is not None
    assert got.applied.token is None
    assert got.applied_token_digest == token_digest("main", "1001", CHANNEL_TOKEN)
    assert got.expires_at is not None
    assert got.expires_at.utcoffset() == timedelta(0)
    assert got.expires_at == ist_expiry
    assert got.expires_at.hour == 9
    assert store.registry() == {("main", "1001"): got}
    assert store.get("main", "nope") is None


def test_put_computes_missing_digest_and_keeps_entries_without_spec(store: Store) -> None:
    store.put(entry(applied_token_digest=None))
    bare = RegistryEntry(account="main", channel_id="2002", state="pending")
    store.put(bare)

    got = store.get("main", "1001")
    assert got is not None
    assert got.applied_token_digest == token_digest("main", "1001", CHANNEL_TOKEN)
    assert got.applied_url_digest == url_digest("main", "1001", "https://hooks.example.com/zoho?key=k1")
    assert store.get("main", "2002") == bare


def test_put_upserts_and_keeps_last_renewed_at_unless_given(store: Store) -> None:
    store.put(entry(), last_renewed_at=T0)
    later = entry(state="at_risk", applied=spec(name="renamed"), renew_at=T0 + timedelta(hours=20))
    store.put(later)

    assert store.get("main", "1001") == stored(later)
    [row] = store.status_rows()
    assert row.last_renewed_at == T0
    assert row.name == "renamed"
    store.put(later, last_renewed_at=T0 + timedelta(hours=1))
    assert store.status_rows()[0].last_renewed_at == T0 + timedelta(hours=1)


def test_put_refuses_naive_instants(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        store.put(entry(expires_at=datetime(2026, 1, 6, 9, 0)))
    assert store.registry() == {}


def test_put_refuses_a_spec_of_another_channel(store: Store) -> None:
    with pytest.raises(ValueError, match="belongs to channel 9999"):
        store.put(entry(applied=spec("9999")))


def test_put_many_stores_a_large_batch_in_one_go(store: Store) -> None:
    entries = [entry(str(100000 + i), account=f"acct{i % 3}") for i in range(3000)]
    store.put_many(entries, last_renewed_at=T0)
    store.put_many([])  # nothing to do is not an error

    got = store.registry()
    assert len(got) == 3000
    assert got == {(e.account, e.channel_id): stored(e) for e in entries}
    assert {row.last_renewed_at for row in store.status_rows()} == {T0}


def test_remove_forgets_only_that_channel(store: Store) -> None:
    store.put_many([entry("1"), entry("2"), entry("1", account="other")])
    store.remove("main", "1")
    assert set(store.registry()) == {("main", "2"), ("other", "1")}


def test_mark_seen_records_the_listing_for_owned_channels(store: Store) -> None:
    store.put_many([entry("1"), entry("2"), entry("1", account="other")])
    store.mark_seen("main", ["1", "2", "not-owned"], datetime(2026, 1, 5, 15, 0, tzinfo=IST))
    store.mark_seen("main", [], T0 + timedelta(hours=5))  # an empty listing changes nothing

    assert store.last_seen("main", "1") == T0 + timedelta(minutes=30)
    assert store.last_seen("main", "2") == T0 + timedelta(minutes=30)
    assert store.last_seen("other", "1") is None
    assert store.last_seen("main", "not-owned") is None
    store.put(entry("1", state="lapsed"))  # put leaves last_seen_at alone
    assert store.last_seen("main", "1") == T0 + timedelta(minutes=30)


def test_status_rows_show_the_next_attempt_sorted(store: Store) -> None:
    failing = entry(
        "2", state="failed", failures=3, retry_at=T0 + timedelta(minutes=4), last_error="HTTP 503"
    )
    store.put_many([failing, entry("1", account="zeta"), entry("1")], last_renewed_at=T0)

    rows = store.status_rows()
    assert [(r.account, r.channel_id) for r in rows] == [("main", "1"), ("main", "2"), ("zeta", "1")]
    assert rows[0] == StatusRow(
        account="main",
        channel_id="1",
        name="deals-1",
        state="active",
        expires_at=T0 + timedelta(hours=24),
        next_renewal_at=T0 + timedelta(hours=15, minutes=7),
        last_renewed_at=T0,
        failures=0,
        last_error=None,
    )
    assert rows[1].next_renewal_at == T0 + timedelta(minutes=4)
    assert (rows[1].state, rows[1].failures, rows[1].last_error) == ("failed", 3, "HTTP 503")


def test_clear_retries_frees_terminal_failures_only(store: Store) -> None:
    retry = T0 + timedelta(hours=1)
    terminal = entry(
        "1", state="failed", failures=1, retry_at=retry, terminal=True, last_error="NO_SCOPE"
    )
    transient = entry("2", state="failed", failures=1, retry_at=retry)
    store.put_many([terminal, transient])

    store.clear_retries()

    assert store.get("main", "1") == stored(replace(terminal, retry_at=None))
    assert store.get("main", "2") == stored(transient)


# --- the file -----------------------------------------------------------------------------------


def test_database_and_wal_are_private_whatever_the_umask(db: Path) -> None:
    old = os.umask(0)
    try:
        with Store(db) as s:
            s.put(entry())
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


def test_an_existing_loose_database_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    with Store(db):
        pass
    db.chmod(0o644)
    Path(f"{db}-wal").write_bytes(b"")
    Path(f"{db}-wal").chmod(0o644)

    with Store(db):
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert stat.S_IMODE(Path(f"{db}-wal").stat().st_mode) == 0o600


def test_wal_mode_and_connection_pragmas(sqlite_store: Store, db: Path) -> None:
    with sqlite_store._tx(write=False) as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar_one() == 1
    assert raw(db).execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent in the file


def test_a_reader_is_not_blocked_by_an_open_write(db: Path) -> None:
    """``watchkeeper status`` reads while the daemon is inside a write transaction."""
    with Store(db) as daemon, Store(db) as cli:
        daemon.put(entry("1"))
        with daemon.transaction():
            daemon.put(entry("1", state="failed"))
            assert [r.state for r in cli.status_rows()] == ["active"]  # the last committed state
        assert [r.state for r in cli.status_rows()] == ["failed"]


def test_channel_tokens_never_reach_the_file(db: Path) -> None:
    with Store(db) as s:
        s.put(entry("1"))
        s.put_many([entry("2"), entry("3", account="other")])
        s.put(entry("1", applied=spec("1", token=CHANNEL_TOKEN + "-rotated"), applied_token_digest=None))
        s.token_cache("main").save(AccessToken(value="at-1", expires_at=T0, issued_at=T0))
        assert CHANNEL_TOKEN.encode() not in file_bytes(db)
    content = file_bytes(db)
    assert CHANNEL_TOKEN.encode() not in content
    assert b"deals-1" in content  # the scan does see what the store wrote


def test_errors_from_sqlite_do_not_quote_the_access_token(sqlite_store: Store, db: Path) -> None:
    raw(db).execute("DROP TABLE access_tokens")
    secret = "at-secret-value-9d8e7f"
    with pytest.raises(OperationalError, match="no such table") as caught:
        sqlite_store.token_cache("main").save(AccessToken(value=secret, expires_at=T0, issued_at=T0))
    assert secret not in str(caught.value)


# --- migrations ---------------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE registry (
    account TEXT NOT NULL, channel_id TEXT NOT NULL, state TEXT NOT NULL, applied TEXT,
    applied_token_digest TEXT, expires_at TEXT, lifetime_seconds REAL, renew_at TEXT,
    failures INTEGER NOT NULL DEFAULT 0, retry_at TEXT, last_error TEXT,
    terminal INTEGER NOT NULL DEFAULT 0, last_renewed_at TEXT, PRIMARY KEY (account, channel_id));
CREATE TABLE gaps (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL,
    channel_id TEXT NOT NULL, start TEXT NOT NULL, "end" TEXT, cause TEXT NOT NULL);
CREATE INDEX gaps_by_channel ON gaps (account, channel_id);
CREATE UNIQUE INDEX gaps_one_open ON gaps (account, channel_id) WHERE "end" IS NULL;
CREATE TABLE access_tokens (account TEXT PRIMARY KEY, value TEXT NOT NULL,
    expires_at TEXT NOT NULL, issued_at TEXT NOT NULL);
PRAGMA user_version = 1;
"""
"""Schema version 1 as released, written out by hand so the test does not trust the code under test."""


def test_a_version_1_database_is_upgraded_with_its_history(db: Path) -> None:
    db.parent.mkdir()
    applied = {
        "events": ["Deals.all"],
        "name": "deals",
        "notification_condition": None,
        "notify_on_related_action": False,
        "notify_url": "https://hooks.example.com/zoho",
        "return_affected_field_values": False,
        "ttl": 86400.0,
    }
    conn = raw(db)
    conn.executescript(V1_SCHEMA)
    conn.execute(
        "INSERT INTO registry VALUES ('main', '1001', 'active', ?, 'digest-1',"
        " '2026-01-06T09:00:00.000000+00:00', 86400.0, '2026-01-06T00:00:00.000000+00:00',"
        " 0, NULL, NULL, 0, '2026-01-05T09:00:00.000000+00:00')",
        (json.dumps(applied),),
    )
    conn.execute(
        'INSERT INTO gaps (account, channel_id, start, "end", cause) VALUES'
        " ('main', '1001', '2026-01-01T10:00:00.000000+00:00',"
        "  '2026-01-01T11:30:00.000000+00:00', 'expired'),"
        " ('main', '1001', '2026-01-04T08:00:00.000000+00:00', NULL, 'vanished')"
    )
    conn.execute(
        "INSERT INTO access_tokens VALUES ('main', 'at-old',"
        " '2026-01-05T10:00:00.000000+00:00', '2026-01-05T09:00:00.000000+00:00')"
    )
    conn.close()

    with Store(db) as s:
        got = s.get("main", "1001")
        assert got is not None
        assert got.applied is not None
        assert got.applied.events == parse_events(["Deals.all"])
        assert (got.applied_token_digest, got.expires_at) == ("digest-1", T0 + timedelta(hours=24))
        [row] = s.status_rows()
        assert (row.name, row.last_renewed_at) == ("deals", T0)  # name filled in from the v1 spec
        jan = datetime(2026, 1, 1, tzinfo=UTC)
        assert s.gaps() == [
            Gap(1, "main", "1001", jan.replace(hour=10), jan.replace(hour=11, minute=30), "expired"),
            Gap(2, "main", "1001", jan.replace(day=4, hour=8), None, "vanished"),
        ]
        assert s.token_cache("main").load() == AccessToken("at-old", T0 + timedelta(hours=1), T0)
        s.begin("main", ["1001"], "PATCH", T0)  # the tables version 2 added are there
        s.confirm_deletes([("main", "1001")], T0)
    assert raw(db).execute("PRAGMA user_version").fetchone() == (migrate.ALEMBIC_MARK,)
    assert revisions(db) == [HEAD]


def test_a_database_written_by_0_1_0_opens_with_all_it_held(db: Path) -> None:
    """tests/fixtures/store_v2.sql is a dump of a file the 0.1.0 store wrote (its header says how)."""
    load_dump(db, FIXTURES / "store_v2.sql")
    assert raw(db).execute("PRAGMA user_version").fetchone() == (2,)

    with Store(db) as s:
        got = s.registry()
        assert set(got) == {("main", "1001"), ("main", "1002"), ("main", "1003"), ("main", "1004"),
                            ("other", "2001")}  # fmt: skip
        first = got["main", "1001"]
        assert first.applied is not None
        assert (first.applied.name, first.applied.events) == ("deals-1001", parse_events(["Deals.all"]))
        assert first.applied_token_digest == token_digest("main", "1001", "chan-token-1001-fixture")
        assert (first.expires_at, first.renew_at) == (T0 + timedelta(hours=24), T0 + timedelta(hours=15))
        assert s.last_seen("main", "1001") == T0 + timedelta(hours=1)
        assert got["other", "2001"] == RegistryEntry(account="other", channel_id="2001", state="pending")
        held = got["main", "1003"]
        assert (held.state, held.failures, held.terminal, held.retry_at) == (
            "failed", 3, True, T0 + timedelta(hours=2),
        )  # fmt: skip

        # the gap ledger decides lapsed: 1002 was left "lapsed" with no open gap, 1004 "active"
        # with one, 1003 stays failed (held back) while its gap is open
        assert (got["main", "1002"].state, got["main", "1002"].lapsed_since) == ("active", None)
        assert (got["main", "1004"].state, got["main", "1004"].lapsed_since) == (
            "lapsed", T0 - timedelta(minutes=30),
        )  # fmt: skip
        assert held.lapsed_since == T0 - timedelta(hours=2)

        # notify_urls are masked now, with the digest of the plain URL they held
        assert first.applied.notify_url == "https://hooks.example.com/zoho?key=***&source=***"
        assert first.applied_url_digest == url_digest(
            "main", "1001", "https://hooks.example.com/zoho?key=q-secret-1001&source=crm"
        )
        fourth = got["main", "1004"]
        assert fourth.applied is not None
        assert fourth.applied.notify_url == "https://hookuser:***@hooks.example.net/in?sig=***"
        assert fourth.applied_url_digest == url_digest(
            "main", "1004", "https://hookuser:pw-secret-1004@hooks.example.net/in?sig=q-secret-1004"
        )

        assert s.gaps() == [
            Gap(1, "main", "1001", T0 - timedelta(hours=5), T0 - timedelta(hours=4), "expired"),
            Gap(2, "main", "1003", T0 - timedelta(hours=2), None, "rejected"),
            Gap(3, "main", "1004", T0 - timedelta(minutes=30), None, "vanished"),
        ]
        assert s.token_cache("main").load() == AccessToken(
            "at-fixture-access-token-main", T0 + timedelta(hours=1), T0
        )
        assert s.confirmed_deletes() == {("main", "1003"), ("other", "2001")}
        assert s.pending_intents() == [
            Intent("main", "1001", "PATCH", T0 + timedelta(hours=2)),
            Intent("main", "1004", "PATCH", T0 + timedelta(hours=2)),
        ]
        assert s.foreign() == [("main", "7777", ["Calls"])]
        assert [r.state for r in s.status_rows()] == ["active", "active", "failed", "lapsed", "pending"]
        assert s.open_gap("main", "1002", T0, "expired").id == 4  # ids go on after the old ones

    assert revisions(db) == [HEAD]
    assert raw(db).execute("PRAGMA user_version").fetchone() == (migrate.ALEMBIC_MARK,)
    assert migrate.ALEMBIC_MARK > 2  # what 0.1.0 refuses to open: it never writes here again
    content = file_bytes(db)
    for secret in (b"q-secret-1001", b"q-secret-1002", b"q-secret-1004", b"pw-secret-1004"):
        assert secret not in content, secret
    assert b"hooks.example.net" in content  # the scan does see the rows


def _schema(db: Path) -> dict[str, tuple[set[str], set[tuple[str | None, bool, tuple[str, ...]]]]]:
    """Each table's columns and indexes (name, unique, columns), as the file has them."""
    conn = raw(db)
    out = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({name})")}
        indexes = {
            (row[1], bool(row[2]), tuple(c[2] for c in conn.execute(f"PRAGMA index_info({row[1]})")))
            for row in conn.execute(f"PRAGMA index_list({name})")
            if row[3] == "c"  # declared with CREATE INDEX, not a primary key's own
        }
        out[name] = (columns, indexes)
    return out


def test_upgraded_and_new_databases_have_the_schema_the_tables_declare(tmp_path: Path) -> None:
    fresh, upgraded, from_v1 = tmp_path / "fresh.db", tmp_path / "v2.db", tmp_path / "v1.db"
    load_dump(upgraded, FIXTURES / "store_v2.sql")
    conn = raw(from_v1)
    conn.executescript(V1_SCHEMA)
    conn.close()
    for path in (fresh, upgraded, from_v1):
        Store(path).close()

    declared = {
        table_of(model).name: (
            set(table_of(model).c.keys()),
            {
                (i.name, bool(i.unique), tuple(c.name for c in i.columns))
                for i in table_of(model).indexes
            },
        )
        for model in TABLES
    }
    assert set(declared) == set(METADATA.tables)
    declared["alembic_version"] = ({"version_num"}, set())
    declared["sqlite_sequence"] = ({"name", "seq"}, set())  # gaps ids: AUTOINCREMENT
    for path in (fresh, upgraded, from_v1):
        assert _schema(path) == declared, path.name
    assert raw(fresh).execute(
        "SELECT sql FROM sqlite_master WHERE name = 'gaps_one_open'"
    ).fetchone() == (
        'CREATE UNIQUE INDEX gaps_one_open ON gaps (account, channel_id) WHERE "end" IS NULL',
    )


def test_a_newer_schema_version_is_refused_untouched(db: Path) -> None:
    with Store(db) as s:
        s.put(entry())
    newer = migrate.ALEMBIC_MARK + 1
    conn = raw(db)
    conn.execute("PRAGMA journal_mode = DELETE")  # so that even switching it to WAL would show
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    before = db.read_bytes()

    with pytest.raises(SchemaTooNewError, match=f"{db} has schema version {newer}, newer"):
        Store(db)
    with pytest.raises(SchemaTooNewError):
        Store(db, readonly=True)

    assert db.read_bytes() == before
    assert not Path(f"{db}-wal").exists()


def test_an_unknown_alembic_revision_counts_as_newer(db: Path) -> None:
    with Store(db) as s:
        s.put(entry())
    conn = raw(db)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    conn.close()
    before = db.read_bytes()

    with pytest.raises(SchemaTooNewError, match="schema revision 0099_from_the_future, newer"):
        Store(db)

    assert db.read_bytes() == before


def test_a_failing_migration_changes_nothing(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(db) as s:
        s.put(entry())
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "0099_half_a_step.py").write_text(
        textwrap.dedent(
            """
            import sqlalchemy as sa
            from alembic import op

            revision = "0099"
            down_revision = "HEAD"

            def upgrade():
                op.create_table("added", sa.Column("x", sa.Integer()))
                op.execute("DELETE FROM registry")
                op.add_column("nope", sa.Column("y", sa.String()))
            """
        ).replace("HEAD", HEAD)
    )
    monkeypatch.setattr(migrate, "SCRIPTS", scripts)

    with pytest.raises(StoreError, match=f"{db} cannot be opened .*no such table: nope"):
        Store(db)

    conn = raw(db)
    assert revisions(db) == [HEAD]
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'added'").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM registry").fetchone() == (1,)


def test_a_database_of_other_tables_is_refused(db: Path) -> None:
    db.parent.mkdir()
    raw(db).execute("CREATE TABLE notes (x TEXT)")
    with pytest.raises(StoreError, match="not a watchkeeper database"):
        Store(db)


# --- unusable files -----------------------------------------------------------------------------


def test_a_corrupt_database_is_one_clear_error(db: Path) -> None:
    db.parent.mkdir()
    db.write_bytes(b"\x00garbage, not SQLite\xff" * 300)
    for readonly in (False, True):
        with pytest.raises(
            StoreError, match=f"{db} is not a watchkeeper database, or it is damaged"
        ) as caught:
            Store(db, readonly=readonly)
        assert "restore it from a backup" in str(caught.value)


T = TypeVar("T")
NOBODY = 65534


def as_reader(fn: Callable[[], T]) -> T:
    """``fn()`` where file modes bind: in a child process that dropped root, if the tests run as
    root (who may write any file), else right here."""
    if os.geteuid() != 0:
        return fn()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome: tuple[str, object] = ("ok", fn())
        except BaseException as exc:
            outcome = ("raised", exc)
        with os.fdopen(write, "wb") as pipe:
            pipe.write(pickle.dumps(outcome))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        kind, value = pickle.loads(pipe.read())  # noqa: S301 - our own child's answer
    os.waitpid(pid, 0)
    if kind == "raised":
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


@pytest.fixture
def reader_db() -> Iterator[Path]:
    """A database in a folder the reader owns (nobody's, when the tests run as root)."""
    folder = Path(tempfile.mkdtemp(prefix="wk-ro-"))
    db = folder / "watchkeeper.db"
    with Store(db) as s:
        s.put_many([entry("1"), entry("2", state="failed", failures=1, last_error="HTTP 503")])
        s.open_gap("main", "1", T0, "vanished")
    if os.geteuid() == 0:
        for path in (folder, db):
            os.chown(path, NOBODY, NOBODY)
    try:
        yield db
    finally:
        folder.chmod(0o700)
        shutil.rmtree(folder)


def _read(db: Path) -> tuple[list[StatusRow], list[Gap]]:
    with Store(db, readonly=True) as s:
        return s.status_rows(), s.gaps()


@pytest.mark.parametrize("folder_mode", [0o700, 0o500], ids=["file-0400", "read-only-folder"])
def test_status_and_gaps_read_a_read_only_database(reader_db: Path, folder_mode: int) -> None:
    reader_db.chmod(0o400)
    reader_db.parent.chmod(folder_mode)
    assert not Path(f"{reader_db}-wal").exists()  # closed cleanly: the file alone holds the data

    rows, gaps = as_reader(lambda: _read(reader_db))

    assert [(r.channel_id, r.state) for r in rows] == [("1", "lapsed"), ("2", "failed")]
    assert gaps == [Gap(1, "main", "1", T0, None, "vanished")]
    assert stat.S_IMODE(reader_db.stat().st_mode) == 0o400


def test_a_read_only_database_refuses_the_daemon_clearly(reader_db: Path) -> None:
    reader_db.chmod(0o400)
    with pytest.raises(StoreError, match=f"{reader_db} cannot be written .*status` and `gaps` read it"):
        as_reader(lambda: Store(reader_db).close())


def test_a_read_only_store_writes_nothing(reader_db: Path) -> None:
    before = reader_db.read_bytes()
    with Store(reader_db, readonly=True) as s:
        with pytest.raises(StoreError, match="opened read-only"):
            s.put(entry("3"))
        with pytest.raises(StoreError, match="opened read-only"), s.transaction():
            pass
        assert len(s.registry()) == 2
    assert reader_db.read_bytes() == before


def test_a_read_only_open_creates_and_upgrades_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    with pytest.raises(StoreError, match=f"{missing} does not exist"):
        Store(missing, readonly=True)
    assert not missing.exists()

    old = tmp_path / "old.db"
    load_dump(old, FIXTURES / "store_v2.sql")
    with pytest.raises(StoreError, match="older watchkeeper: open it once with write access"):
        Store(old, readonly=True)
    assert raw(old).execute("PRAGMA user_version").fetchone() == (2,)


# --- gaps ---------------------------------------------------------------------------------------


def test_gap_open_is_idempotent_and_close_ends_it(store: Store) -> None:
    first = store.open_gap("main", "1", datetime(2026, 1, 5, 14, 30, tzinfo=IST), "expired")
    again = store.open_gap("main", "1", T0 + timedelta(hours=2), "vanished")

    assert again == first == Gap(first.id, "main", "1", T0, None, "expired")
    assert store.open_gaps() == [first]

    closed = store.close_gap("main", "1", T0 + timedelta(minutes=45))
    assert closed == Gap(first.id, "main", "1", T0, T0 + timedelta(minutes=45), "expired")
    assert store.open_gaps() == []
    assert store.close_gap("main", "1", T0 + timedelta(hours=1)) is None

    reopened = store.open_gap("main", "1", T0 + timedelta(hours=3), "rejected")
    assert reopened.id != first.id
    assert store.gaps() == [closed, reopened]


def test_gap_closed_before_its_start_is_clamped(store: Store) -> None:
    store.open_gap("main", "1", T0, "expired")
    closed = store.close_gap("main", "1", T0 - timedelta(seconds=3))
    assert closed is not None
    assert closed.end == T0
    assert store.gaps() == [closed]


def test_gaps_filter_by_since_and_channel(store: Store) -> None:
    store.open_gap("main", "1", T0, "expired")
    old = store.close_gap("main", "1", T0 + timedelta(hours=1))
    store.open_gap("main", "2", T0 + timedelta(hours=2), "vanished")
    recent = store.close_gap("main", "2", T0 + timedelta(hours=4))
    still_open = store.open_gap("other", "1", T0 + timedelta(hours=3), "rejected")

    assert store.gaps() == [old, recent, still_open]  # oldest first
    assert store.gaps(since=T0 + timedelta(hours=1)) == [recent, still_open]  # ended after `since`
    assert store.gaps(since=T0 + timedelta(hours=5)) == [still_open]
    assert store.gaps(channel_id="1") == [old, still_open]
    assert store.gaps(since=T0 + timedelta(hours=2), channel_id="1") == [still_open]


# --- access-token cache, confirmations, intents, foreign channels -------------------------------


def test_token_cache_round_trip_per_account(db: Path) -> None:
    issued = datetime(2026, 1, 5, 14, 30, tzinfo=IST)
    token = AccessToken(value="at-main-1", expires_at=issued + timedelta(hours=1), issued_at=issued)
    with Store(db) as s:
        assert s.token_cache("main").load() is None
        s.token_cache("main").save(token)
        s.token_cache("other").save(AccessToken(value="at-other", expires_at=T0, issued_at=T0))

    with Store(db) as s:  # a restarted daemon finds it
        got = s.token_cache("main").load()
        assert got == token
        assert got is not None
        assert got.issued_at.utcoffset() == timedelta(0)
        newer = AccessToken(value="at-main-2", expires_at=T0 + timedelta(hours=2), issued_at=T0)
        s.token_cache("main").save(newer)
        assert s.token_cache("main").load() == newer
        assert s.token_cache("other").load() == AccessToken("at-other", T0, T0)


def test_confirmations_record_exactly_the_approved_ids(store: Store) -> None:
    assert store.confirmed_deletes() == frozenset()
    store.confirm_deletes([("main", "1"), ("main", "2"), ("other", "1")], T0)
    store.confirm_deletes([("main", "1")], T0 + timedelta(minutes=1))  # again: still one
    assert store.confirmed_deletes() == {("main", "1"), ("main", "2"), ("other", "1")}

    store.clear_confirmations([("main", "2")])
    store.clear_confirmations([])
    assert store.confirmed_deletes() == {("main", "1"), ("other", "1")}
    store.clear_confirmations()
    assert store.confirmed_deletes() == frozenset()


def test_intents_survive_a_crash_until_done(db: Path) -> None:
    with Store(db) as s:
        s.begin("main", ["1", "2"], "POST", T0)
        s.begin("other", ["1"], "DELETE", T0 + timedelta(seconds=1))
        s.done("main", ["2"])
        s.begin("main", [], "PATCH", T0)  # no ids, no journal line

    with Store(db) as s:  # the process died between begin and done
        assert s.pending_intents() == [
            Intent("main", "1", "POST", T0),
            Intent("other", "1", "DELETE", T0 + timedelta(seconds=1)),
        ]
        s.begin("main", ["1"], "PATCH", T0 + timedelta(minutes=5))
        assert s.pending_intents()[-1] == Intent("main", "1", "PATCH", T0 + timedelta(minutes=5))
        s.done("main", ["1"])
        s.done("other", ["1"])
        assert s.pending_intents() == []


def test_many_rows_are_journalled_seen_and_cleared_past_one_chunk(store: Store) -> None:
    """Statements over many rows go a chunk at a time (store.chunks): none is left out."""
    ids = [str(100000 + i) for i in range(2 * chunks.ROWS + 1)]
    store.put_many([entry(cid) for cid in ids])
    store.begin("main", ids, "PATCH", T0)
    assert [i.channel_id for i in store.pending_intents()] == sorted(ids)
    store.mark_seen("main", ids, T0)
    assert {store.last_seen("main", cid) for cid in (ids[0], ids[-1])} == {T0}
    store.done("main", ids)
    assert store.pending_intents() == []


def test_foreign_channels_are_replaced_per_account(store: Store) -> None:
    def observed(channel_id: str, *events: str) -> ObservedChannel:
        return ObservedChannel(channel_id, parse_events(events), "https://x.example", T0)

    store.set_foreign("main", [observed("7", "Leads.create", "Deals.edit"), observed("8", "Calls.all")])
    store.set_foreign("other", [observed("9", "Tasks.delete")])
    assert store.foreign() == [
        ("main", "7", ["Deals", "Leads"]),
        ("main", "8", ["Calls"]),
        ("other", "9", ["Tasks"]),
    ]
    store.set_foreign("main", [])
    assert store.foreign() == [("other", "9", ["Tasks"])]


# --- the gap ledger decides lapsed --------------------------------------------------------------


def test_lapsed_since_and_state_come_from_the_open_gap(store: Store) -> None:
    store.put_many([entry("1"), entry("2", state="failed"), entry("3", state="removing"), entry("4")])
    for channel_id in ("1", "2", "3"):
        store.open_gap("main", channel_id, T0, "vanished")

    got = store.registry()
    assert {cid: (e.state, e.lapsed_since) for (_, cid), e in got.items()} == {
        "1": ("lapsed", T0),
        "2": ("failed", T0),  # held back after a failure: that is what the planner must see
        "3": ("removing", T0),
        "4": ("active", None),
    }
    assert store.get("main", "1") == got["main", "1"]
    assert [r.state for r in store.status_rows()] == ["lapsed", "failed", "removing", "active"]

    store.put(replace(got["main", "1"], lapsed_since=None, state="active"))  # put never writes it
    assert store.get("main", "1") == got["main", "1"]

    store.close_gap("main", "1", T0 + timedelta(minutes=5))
    recovered = store.get("main", "1")
    assert recovered is not None
    assert (recovered.state, recovered.lapsed_since) == ("active", None)


def test_a_lapsed_state_without_an_open_gap_reads_as_active(store: Store) -> None:
    """Rows an old defect left "lapsed" after their gap closed (issue 9, defect 1)."""
    store.put(entry("1", state="lapsed"))
    store.open_gap("main", "1", T0, "expired")
    store.close_gap("main", "1", T0 + timedelta(minutes=1))

    assert store.registry()["main", "1"].state == "active"
    assert store.status_rows()[0].state == "active"


# --- transactions -------------------------------------------------------------------------------


def _pending(store: Store) -> tuple[int, int, int]:
    """(registry rows, gaps, intents) as another connection sees them."""
    with store._engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar_one()  # noqa: S608
            for name in ("registry", "gaps", "intents")
        )


def test_a_transaction_commits_every_write_at_once_when_the_outermost_block_exits(
    store: Store,
) -> None:
    store.begin("main", ["1", "2"], "POST", T0)
    with store.transaction():
        store.put(entry("1"))
        store.put_many([entry("2")], last_renewed_at=T0)
        store.mark_seen("main", ["1"], T0)
        with store.transaction():  # nesting is fine
            store.open_gap("main", "2", T0, "rejected")
            store.done("main", ["1", "2"])
        assert store.get("main", "1") is not None  # its own writes are visible inside
        assert _pending(store) == (0, 0, 2)  # ... and nowhere else yet
    assert _pending(store) == (2, 1, 0)
    assert store.pending_intents() == []


def _killed_mid_answer(store: Store) -> None:
    with store.transaction():
        store.put(entry("2"))
        store.remove("main", "1")
        store.open_gap("main", "1", T0, "expired")
        store.done("main", ["2"])
        store.confirm_deletes([("main", "1")], T0)
        store.set_foreign("main", [ObservedChannel("9", parse_events(["Calls.all"]), "https://x", T0)])
        store.clear_retries()
        raise RuntimeError("killed")


def test_an_exception_rolls_the_whole_transaction_back(store: Store) -> None:
    store.put(entry("1"))
    store.begin("main", ["2"], "POST", T0)
    with pytest.raises(RuntimeError, match="killed"):
        _killed_mid_answer(store)
    assert set(store.registry()) == {("main", "1")}
    assert (store.open_gaps(), store.confirmed_deletes(), store.foreign()) == ([], frozenset(), [])
    assert store.pending_intents() == [Intent("main", "2", "POST", T0)]


def _failing_block(store: Store) -> None:
    with store.transaction():
        store.put(entry("4"))
        store.open_gap("main", "4", T0, "expired")
        raise KeyError("inner")


def test_a_nested_block_that_fails_undoes_only_its_own_writes(store: Store) -> None:
    with store.transaction():
        store.put(entry("1"))
        with pytest.raises(KeyError, match="inner"):
            _failing_block(store)
        store.put(entry("5"))
    assert set(store.registry()) == {("main", "1"), ("main", "5")}
    assert store.open_gaps() == []


def test_writes_outside_a_transaction_commit_each_on_its_own(store: Store) -> None:
    store.put(entry("1"))
    assert _pending(store) == (1, 0, 0)
    store.open_gap("main", "1", T0, "expired")
    assert _pending(store) == (1, 1, 0)


# --- notify_url secrets -------------------------------------------------------------------------

SECRET_URL = "https://hookuser:hook-pass-73a9@hooks.example.com/zoho?key=qv-secret-1&sig=qv%2Fsecret-2"


def test_notify_url_secrets_never_reach_the_file(db: Path) -> None:
    """Query values and a URL password are kept masked, beside the URL's digest (issue 10, item 6)."""
    with Store(db) as s:
        s.put(entry("1", applied=spec("1", notify_url=SECRET_URL)))
        digest = url_digest("main", "2", SECRET_URL)
        s.put_many([entry("2", applied=spec("2", notify_url=SECRET_URL), applied_url_digest=digest)])
        got = s.get("main", "1")
        assert got is not None
        assert got.applied is not None
        assert got.applied.notify_url == "https://hookuser:***@hooks.example.com/zoho?key=***&sig=***"
        assert got.applied_url_digest == url_digest("main", "1", SECRET_URL)
        assert s.registry()["main", "2"].applied_url_digest == digest  # the caller's digest is kept
        while_open = file_bytes(db)  # the -wal holds the rows
        assert b"hooks.example.com/zoho?key=***" in while_open  # the scan does see the rows
    for content in (while_open, file_bytes(db)):
        for secret in (b"hook-pass-73a9", b"qv-secret-1", b"qv%2Fsecret-2", b"qv/secret-2"):
            assert secret not in content, secret


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://h.example/z?key=k1&source=crm", "https://h.example/z?key=***&source=***"),
        ("https://u:p%40ss@h.example:8443/p?bare", "https://u:***@h.example:8443/p?***"),
        ("https://u@h.example/p", "https://u@h.example/p"),
        ("https://h.example/p", "https://h.example/p"),
        ("https://h.example/p?a=&b=2&&c#frag", "https://h.example/p?a=&b=***&&***#frag"),
        ("http://[::1/x?k=v", "***"),  # does not parse: masked whole
    ],
)
def test_mask_url_masks_what_url_secrets_finds(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# --- stale intents ------------------------------------------------------------------------------

_KILLED_MID_ANSWER = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from watchkeeper.model import RegistryEntry
from watchkeeper.store import Store

now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
store = Store(Path(sys.argv[1]))
store.put(RegistryEntry(account="main", channel_id="1", state="active"))
store.begin("main", ["1", "2"], "PATCH", now)  # journalled before the call
with store.transaction():  # the answer is being recorded ...
    store.put(RegistryEntry(account="main", channel_id="1", state="active", failures=0, expires_at=now))
    store.put(RegistryEntry(account="main", channel_id="2", state="active"))
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the process is killed, before done()
"""


def test_intents_left_by_a_kill_clear_after_a_clean_cycle(db: Path) -> None:
    """Issue 10, item 17: a kill between the registry writes and done() left intents behind for
    good, so every start reported ``engine.interrupted``."""
    db.parent.mkdir()
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_ANSWER, str(db)], check=False)
    assert killed.returncode == -signal.SIGKILL

    with Store(db) as s:  # the restart
        assert s.pending_intents() == [
            Intent("main", "1", "PATCH", T0),
            Intent("main", "2", "PATCH", T0),
        ]
        registry = s.registry()
        assert set(registry) == {("main", "1")}  # the answer's writes went with the kill, all of them
        assert registry["main", "1"].expires_at is None
        # a clean cycle: the listing shows what became of the calls, then an answer is recorded
        s.clear_intents("main")
        s.begin("main", ["1"], "PATCH", T0 + timedelta(minutes=1))
        with s.transaction():
            s.put(entry("1"))
            s.done("main", ["1"])

    with Store(db) as s:  # the next start
        assert s.pending_intents() == []


def test_clear_intents_is_per_account(store: Store) -> None:
    store.begin("main", ["1"], "POST", T0)
    store.begin("other", ["1"], "DELETE", T0)
    store.clear_intents("main")
    assert store.pending_intents() == [Intent("other", "1", "DELETE", T0)]


# --- portable SQL -------------------------------------------------------------------------------


def test_upsert_speaks_both_dialects() -> None:
    table = Table("t", MetaData(), Column("k", String, primary_key=True), Column("v", Integer),
                  Column("w", Integer))  # fmt: skip
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        sql = " ".join(str(upsert(dialect, table, ("k",), ("v",), keep_when_null=("w",)).compile(
            dialect=dialect)).split())  # fmt: skip
        assert "ON CONFLICT (k) DO UPDATE SET v = excluded.v, w = coalesce(excluded.w, t.w)" in sql
    with pytest.raises(NotImplementedError, match="mysql"):
        upsert(mysql.dialect(), table, ("k",), ("v",))


def test_the_store_does_not_import_zoho() -> None:
    code = "import sys, watchkeeper.store; print(sorted(m for m in sys.modules if '.zoho' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_report_imports_neither_the_engine_nor_the_store() -> None:
    """The one-shot commands' output is a pure function of value types."""
    code = (
        "import sys, watchkeeper.report; "
        "print(sorted(m for m in sys.modules"
        " if m.startswith(('watchkeeper.engine', 'watchkeeper.store'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
