"""Store: one database, its transactions, and the queries of registry.py, gaps.py, journal.py and
leases.py behind one object, which is all the rest of watchkeeper sees of it.

SQLite (a Path) or PostgreSQL (a PostgresTarget). On PostgreSQL a lost server surfaces as
StoreUnavailable (nothing was written; try again), and ``transaction(fence=(account, epoch))``
makes every write inside conditional on the account's lease (LeaseLost otherwise).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Literal, Self

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from watchkeeper.model import AccessToken, ObservedChannel, RegistryEntry
from watchkeeper.store import backfills, gaps, journal, leases, migrate, postgres, registry, sqlite
from watchkeeper.store.errors import StoreError
from watchkeeper.store.target import PostgresTarget, Target
from watchkeeper.values import (
    Backfill,
    BackfillNote,
    Board,
    Gap,
    Intent,
    LeaseState,
    StatusRow,
)  # fmt: skip

Migrate = Literal["always", "alone", "never"]
"""When opening may upgrade the schema (PostgreSQL; a writable SQLite file always upgrades):
always (``watchkeeper migrate``), only when no other instance is live (``run``), never (the
one-shot commands, which need the schema at the head revision)."""

BACKFILL_PAGE = 100
"""Pending backfill jobs read at once: a step advances a few jobs between two renewals, and reading
every pending one each time made the step grow with the backlog."""


class Store:
    """The store, synchronous. Each method is its own transaction unless called inside
    ``transaction()``; a transaction belongs to the thread that began it.

    ``readonly=True`` opens the file as it is (``mode=ro``: no file created, no mode, WAL or schema
    change), for the commands that only read (``status``, ``gaps``): they work on a file or folder
    the reader may not write. Such a store refuses every write.
    """

    def __init__(
        self,
        target: Target,
        *,
        readonly: bool = False,
        migrate: Migrate = "always",
        instance: str | None = None,
    ) -> None:
        """Open, creating the file if missing and upgrading its schema to the head revision (unless
        ``readonly``, which requires it there; on PostgreSQL as ``migrate`` says, ``instance``
        being the opener's own heartbeat, not another's). A database that cannot be used raises
        StoreError naming the file or the host and database (StoreUnavailable when the server
        cannot be reached); SchemaTooNewError leaves a newer database untouched."""
        self.target = target
        self.readonly = readonly
        self._local = threading.local()
        if isinstance(target, PostgresTarget):
            self.path = Path(target.dbname)
            self._pg: PostgresTarget | None = target
            try:
                self._engine = self._open_postgres(migrate, instance)
            except DBAPIError as exc:
                raise postgres.open_error(target, exc) from exc
            return
        self._pg = None
        self.path = target
        try:
            self._engine = self._open()
        except (DBAPIError, OSError) as exc:
            raise sqlite.open_error(target, exc) from exc

    @property
    def where(self) -> str:
        """The database as errors and logs name it (never with a password)."""
        return str(self.target)

    @property
    def shared(self) -> bool:
        """Several instances may use it (PostgreSQL): leases, not the lock file, divide the work."""
        return self._pg is not None

    def _open_postgres(self, mode: Migrate, instance: str | None) -> Engine:
        assert self._pg is not None
        engine = postgres.open_engine(self._pg)
        where = str(self._pg)
        try:
            with engine.connect() as conn:
                if self.readonly or mode == "never":
                    migrate.check(conn, where)
                elif mode == "alone" and migrate.others_live(conn, instance):
                    migrate.check(conn, where, hint="run `watchkeeper migrate` to upgrade it")
                else:
                    migrate.upgrade(conn, where)
                conn.commit()
        except BaseException:
            engine.dispose()
            raise
        return engine

    def _open(self) -> Engine:
        if self.readonly and not self.path.exists():
            raise StoreError(f"{self.path} does not exist: nothing has run against it (check --db)")
        if not self.readonly:
            sqlite.create_private(self.path)
        engine = sqlite.open_engine(self.path, readonly=self.readonly)
        try:
            with engine.connect() as conn:
                self._prepare(conn)
        except BaseException:
            engine.dispose()
            raise
        return engine

    def _prepare(self, conn: Connection) -> None:
        where = str(self.path)
        if self.readonly:
            migrate.check(conn, where)
            conn.rollback()
            return
        migrate.steps(conn, where)  # refuses a newer database before WAL mode would change it
        conn.rollback()
        sqlite.enable_wal(conn, self.path)
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # again under the write lock: another may have won
        todo = migrate.upgrade(conn, where)
        conn.commit()
        if todo.upgrade:
            sqlite.checkpoint(conn)
            conn.commit()

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- transactions ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, fence: tuple[str, int] | None = None) -> Iterator[None]:
        """Every write inside goes to the database in one transaction, committed when the outermost
        block exits and rolled back if an exception leaves it. A nested block is a savepoint: an
        exception leaving it undoes that block's writes only. It holds the write lock (the other
        process waits up to BUSY_TIMEOUT_MS), so keep network calls outside it.

        ``fence=(account, epoch)``: first check, in the same transaction, that the account's lease
        is still at that epoch and unexpired, else raise LeaseLost and write nothing."""
        outer: Connection | None = getattr(self._local, "conn", None)
        if outer is not None:
            with outer.begin_nested():
                if fence is not None:
                    leases.fence(outer, *fence)
                yield
            return
        with self._tx() as conn:
            if fence is not None:
                leases.fence(conn, *fence)
            yield

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[Connection]:
        """The thread's open transaction, which a single query or write simply joins (a savepoint
        per statement would double the statements of a batch), or a new one; writers take the
        write lock up front (BEGIN IMMEDIATE) so that a concurrent writer waits on the busy timeout
        instead of failing a lock upgrade."""
        outer: Connection | None = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        if write and self.readonly:
            raise StoreError(f"{self.where} was opened read-only: this command cannot change it")
        try:
            with self._engine.connect() as conn:
                if self._pg is None:
                    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
                self._local.conn = conn
                try:
                    yield conn
                    conn.commit()
                except BaseException:
                    if not conn.invalidated:
                        conn.rollback()
                    raise
                finally:
                    self._local.conn = None
        except DBAPIError as exc:
            if self._pg is not None and postgres.is_lost(exc):
                raise postgres.unavailable(self._pg, exc) from exc
            raise

    # --- registry -------------------------------------------------------------------------------

    def registry(self, account: str | None = None) -> dict[tuple[str, str], RegistryEntry]:
        """Every owned channel (of ``account`` only, if given); ``lapsed_since`` and the lapsed
        state come from the open gaps."""
        with self._tx(write=False) as conn:
            return registry.all_entries(conn, account)

    def get(self, account: str, channel_id: str) -> RegistryEntry | None:
        with self._tx(write=False) as conn:
            return registry.one_entry(conn, account, channel_id)

    def put(self, entry: RegistryEntry, *, last_renewed_at: datetime | None = None) -> None:
        """Upsert. The applied spec is kept without its token and with its notify_url masked (their
        digests kept, computed if missing); ``lapsed_since`` is not written (only open_gap and
        close_gap change it); ``last_renewed_at`` None keeps the stored value."""
        self.put_many((entry,), last_renewed_at=last_renewed_at)

    def put_many(
        self, entries: Iterable[RegistryEntry], *, last_renewed_at: datetime | None = None
    ) -> None:
        """``put`` for a whole batch in one statement (a pass renews thousands)."""
        with self._tx() as conn:
            registry.put(conn, entries, last_renewed_at)

    def remove(self, account: str, channel_id: str) -> None:
        with self._tx() as conn:
            registry.remove(conn, account, channel_id)

    def mark_seen(self, account: str, channel_ids: Iterable[str], at: datetime) -> None:
        """Record that Zoho showed these channels live at ``at``."""
        with self._tx() as conn:
            registry.mark_seen(conn, account, channel_ids, at)

    def last_seen(self, account: str, channel_id: str) -> datetime | None:
        with self._tx(write=False) as conn:
            return registry.last_seen(conn, account, channel_id)

    def status_rows(self) -> list[StatusRow]:
        with self._tx(write=False) as conn:
            return registry.status_rows(conn)

    def clear_retries(self) -> None:
        """On reload: channels held back by a terminal failure are retried on the next pass (their
        failure count and last error stay for ``status``)."""
        with self._tx() as conn:
            registry.clear_retries(conn)

    # --- intents --------------------------------------------------------------------------------

    def begin(self, account: str, channel_ids: Iterable[str], action: str, at: datetime) -> None:
        """Journal a write call before it is made. ``done`` clears it in the transaction that
        records its answer; ``clear_intents`` once a listing has shown what became of it."""
        with self._tx() as conn:
            journal.begin(conn, account, channel_ids, action, at)

    def done(self, account: str, channel_ids: Iterable[str]) -> None:
        with self._tx() as conn:
            journal.done(conn, account, channel_ids)

    def clear_intents(self, account: str) -> None:
        """After a successful listing of ``account``: what its interrupted calls did is known, so
        their intents no longer warn of anything."""
        with self._tx() as conn:
            journal.clear_intents(conn, account)

    def pending_intents(self) -> list[Intent]:
        with self._tx(write=False) as conn:
            return journal.pending_intents(conn)

    # --- foreign channels (for ``status``, which runs in another process) -----------------------

    def set_foreign(self, account: str, channels: Iterable[ObservedChannel]) -> None:
        """Replace the account's foreign channels with those of its latest listing."""
        with self._tx() as conn:
            journal.set_foreign(conn, account, channels)

    def foreign(self) -> list[tuple[str, str, list[str]]]:
        """(account, channel_id, modules) of every foreign channel, as ``status --json`` shows them."""
        with self._tx(write=False) as conn:
            return journal.foreign(conn)

    # --- gaps -----------------------------------------------------------------------------------

    def open_gap(self, account: str, channel_id: str, start: datetime, cause: str) -> Gap:
        """Open a gap, or return the one already open for this channel (its start and cause win)."""
        with self._tx() as conn:
            return gaps.open_gap(conn, account, channel_id, start, cause)

    def close_gap(self, account: str, channel_id: str, end: datetime) -> Gap | None:
        """Close the channel's open gap, if any (an end before its start is clamped to the start)."""
        with self._tx() as conn:
            return gaps.close_gap(conn, account, channel_id, end)

    def open_gaps(self) -> list[Gap]:
        with self._tx(write=False) as conn:
            return gaps.open_gaps(conn)

    def gaps(self, *, since: datetime | None = None, channel_id: str | None = None) -> list[Gap]:
        """Gaps oldest first; ``since`` keeps those still open or ended after it."""
        with self._tx(write=False) as conn:
            return gaps.gaps(conn, since, channel_id)

    # --- backfill progress ----------------------------------------------------------------------

    def request_backfill(self, gap_ids: Iterable[int], at: datetime) -> int:
        """(Re)start the backfill of these closed gaps; returns how many there were."""
        with self._tx() as conn:
            return backfills.request(conn, gap_ids, at)

    def pending_backfills(
        self, account: str | None = None, *, ready_by: datetime | None = None
    ) -> Iterator[Backfill]:
        """Pending jobs oldest gap first, read a page at a time, each page in its own short
        transaction: a step that stops early has read only what it reached, and a job finished
        meanwhile is neither skipped past nor seen twice (the pages are keyed, not offset)."""
        after: tuple[datetime, int] | None = None
        while True:
            with self._tx(write=False) as conn:
                page = backfills.pending(conn, account, ready_by, after, BACKFILL_PAGE)
            yield from page
            if len(page) < BACKFILL_PAGE:
                return
            after = (page[-1].gap.start, page[-1].gap.id)

    def next_backfill_ready(self, account: str, now: datetime) -> datetime | None:
        """Zoho's clock: when the account's next pending job not ready by ``now`` will be."""
        with self._tx(write=False) as conn:
            return backfills.next_ready(conn, account, now)

    def backfill_accounts(self) -> set[str]:
        with self._tx(write=False) as conn:
            return backfills.accounts(conn)

    def backfill_states(self) -> dict[int, tuple[str, int]]:
        """gap id -> (backfill state, records redelivered), for ``gaps``."""
        with self._tx(write=False) as conn:
            return backfills.by_gap(conn)

    def backfill_collected(self, gap_id: int, notes: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        """Every notification the backfill will send, stored before the first goes out."""
        with self._tx() as conn:
            backfills.collected(conn, gap_id, notes)

    def backfill_undelivered(self, gap_id: int) -> list[BackfillNote]:
        with self._tx(write=False) as conn:
            return backfills.undelivered(conn, gap_id)

    def backfill_delivered(self, gap_id: int, seq: int, records: int, at: datetime) -> None:
        with self._tx() as conn:
            backfills.delivered(conn, gap_id, seq, records, at)

    def backfill_retry(
        self, gap_id: int, failures: int, first_failure_at: datetime, retry_at: datetime, error: str
    ) -> None:
        with self._tx() as conn:
            backfills.retry(conn, gap_id, failures, first_failure_at, retry_at, error)

    def finish_backfill(
        self, gap_id: int, state: str, reason: str | None = None, error: str | None = None
    ) -> None:
        with self._tx() as conn:
            backfills.finish(conn, gap_id, state, reason, error)

    # --- access-token cache ---------------------------------------------------------------------

    def token_cache(self, account: str) -> StoreTokenCache:
        return StoreTokenCache(self, account)

    def _load_token(self, account: str) -> AccessToken | None:
        with self._tx(write=False) as conn:
            return journal.load_token(conn, account)

    def _save_token(self, account: str, token: AccessToken) -> None:
        with self._tx() as conn:
            journal.save_token(conn, account, token)

    # --- leases (section 8 of DESIGN.md) ---------------------------------------------------------

    def lease_cycle(self, instance: str, digest: str, ttl: float) -> tuple[dict[str, LeaseState], Board]:
        """In one transaction: extend every unexpired lease ``instance`` holds for ``ttl`` seconds,
        record its heartbeat (running state file ``digest``), and read every lease and heartbeat
        and the database's clock. The leases it still holds, and what it read."""
        with self._tx() as conn:
            renewed = leases.renew(conn, instance, ttl)
            leases.beat(conn, instance, digest, ttl)
            return renewed, leases.board(conn)

    def take_lease(self, account: str, instance: str, ttl: float) -> LeaseState | None:
        with self._tx() as conn:
            return leases.take(conn, account, instance, ttl)

    def release_lease(self, account: str, instance: str, epoch: int) -> bool:
        with self._tx() as conn:
            return leases.release(conn, account, instance, epoch)

    def leave(self, instance: str) -> None:
        """Drop ``instance``'s heartbeat (it stops: the others' shares grow at once)."""
        with self._tx() as conn:
            leases.leave(conn, instance)

    def leases(self) -> list[LeaseState]:
        with self._tx(write=False) as conn:
            return leases.holders(conn)

    def live_instances(self) -> list[str]:
        with self._tx(write=False) as conn:
            return leases.live(conn)

    # --- mass-delete confirmations --------------------------------------------------------------

    def confirm_deletes(self, ids: Iterable[tuple[str, str]], at: datetime) -> None:
        """Record ``apply --allow-mass-delete`` for exactly these (account, channel_id)."""
        with self._tx() as conn:
            journal.confirm_deletes(conn, ids, at)

    def confirmed_deletes(self) -> frozenset[tuple[str, str]]:
        with self._tx(write=False) as conn:
            return journal.confirmed_deletes(conn)

    def clear_confirmations(self, ids: Iterable[tuple[str, str]] | None = None) -> None:
        """Forget these confirmations, or all of them when ``ids`` is None."""
        with self._tx() as conn:
            journal.clear_confirmations(conn, ids)


class StoreTokenCache:
    """``auth.TokenCache`` for one account, kept in the store so that a restart reuses a live
    access token instead of spending one of Zoho's 10 refreshes per 10 minutes."""

    def __init__(self, store: Store, account: str) -> None:
        self._store = store
        self._account = account

    def load(self) -> AccessToken | None:
        return self._store._load_token(self._account)

    def save(self, token: AccessToken) -> None:
        self._store._save_token(self._account, token)
