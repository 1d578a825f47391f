"""Wiring: from a validated desired state to a store, one Zoho client per account, and an engine.

Kept apart from cli.py so that the daemon, the one-shot commands, the demo and the soak harness
build their engines the same way.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from watchkeeper import leases, logs
from watchkeeper.cluster import Cluster
from watchkeeper.config import AccountSpec, DesiredState
from watchkeeper.engine import Engine
from watchkeeper.model import AccessToken
from watchkeeper.store import Store
from watchkeeper.store.database import Migrate
from watchkeeper.store.target import Target
from watchkeeper.zoho.auth import Credentials, OAuth, StaticToken, TokenCache
from watchkeeper.zoho.client import DEFAULT_TIMEOUT, USER_AGENT, WatchClient

if TYPE_CHECKING:
    from watchkeeper.metrics import Meter


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_client(
    account: AccountSpec,
    http: httpx.Client,
    clock: Callable[[], datetime] = utcnow,
    cache: TokenCache | None = None,
    instance: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> WatchClient:
    """The account's watch client; ``cache`` keeps its access token across restarts (and, on a
    shared database, between instances); ``instance`` goes into its User-Agent; ``sleep`` waits
    between the retries of a listing page."""
    log = logs.get_logger()

    def refreshed(token: AccessToken) -> None:
        logs.REDACTOR.add_rotating(account.name, token.value)
        # debug: routine, once an hour per account (240,000 lines a day at 10,000 accounts)
        log.debug("auth.refreshed", account=account.name, expires_at=token.expires_at)

    auth: OAuth | StaticToken
    if account.access_token is not None:
        auth = StaticToken(account.access_token)
    else:
        auth = OAuth(
            Credentials(
                account.endpoint.accounts_url,
                account.client_id or "",
                account.client_secret or "",
                account.refresh_token or "",
            ),
            http=http,
            clock=clock,
            cache=cache,
            on_refresh=refreshed,
        )
    client = WatchClient(account.endpoint, auth, http=http, clock=clock, sleep=sleep)
    if instance is not None:
        client.session.user_agent = f"{USER_AGENT} ({instance})"
    return client


def instance_name(state: DesiredState) -> str:
    """``[daemon].instance``, else "<hostname>:<pid>" (unique while the process lives)."""
    return state.instance or f"{socket.gethostname()}:{os.getpid()}"


def database_path(state: DesiredState, override: Target | None = None) -> Target:
    """The database every command and the daemon use: ``--db`` (or ``$WATCHKEEPER_DB``, which the
    command line reads) over the state file's ``[daemon].database``. The one place this is decided."""
    return override or state.database


@contextmanager
def open_store(
    state: DesiredState,
    db: Target | None = None,
    *,
    readonly: bool = False,
    migrate: Migrate = "never",
    instance: str | None = None,
) -> Iterator[Store]:
    """The state's store (or ``db``'s), redactor fed with the state's secrets first. On
    PostgreSQL, ``migrate`` says whether opening may upgrade the schema (the one-shot commands
    never do: ``watchkeeper migrate`` or a lone ``run`` does), ``instance`` being the opener's."""
    logs.REDACTOR.add(state.secrets())
    store = Store(database_path(state, db), readonly=readonly, migrate=migrate, instance=instance)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def open_engine(
    state: DesiredState,
    db: Target | None = None,
    *,
    clock: Callable[[], datetime] = utcnow,
    rng: random.Random | None = None,
    meter: Meter | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Engine]:
    """An engine over the state's database (or ``db``), closed with everything it opened;
    ``meter`` counts its writes and each account's requests; ``sleep`` is the clients' (a
    simulated clock's, under test). On a shared database (PostgreSQL) the engine serves the
    accounts under leases, as the instance ``instance_name`` names; it never upgrades the schema
    there (``run`` and ``apply`` have opened it with ``migrate="alone"`` first)."""
    transport = httpx.HTTPTransport()
    with (
        open_store(state, db) as store,
        httpx.Client(timeout=DEFAULT_TIMEOUT, transport=transport) as http,
    ):
        instance = instance_name(state) if store.shared else None

        def connect(account: AccountSpec) -> WatchClient:
            client = http if meter is None else meter.http(transport, account.name)
            cache = store.token_cache(account.name)
            return make_client(account, client, clock, cache, instance, sleep)

        clients = {name: connect(account) for name, account in state.accounts.items()}
        engine = Engine(state, store, clients, clock=clock, rng=rng, connect=connect)
        if meter is not None:
            engine.shell.on_commit, engine.backfills.on_delivered = meter.committed, meter.backfilled
        if instance is not None:
            engine.lease_with(Cluster(store, instance, leases.digest(state), state.lease, clock))
        try:
            yield engine
        finally:
            engine.close()


def confirm_deletes(state: DesiredState, store: Store, now: datetime) -> list[tuple[str, str]]:
    """Record in the store that every owned channel the state file no longer wants may go: the
    ``apply --allow-mass-delete`` of an operator whose daemon is running (it applies them)."""
    wanted = {(c.account, c.channel_id) for c in state.channels}
    keys = sorted(key for key in store.registry() if key not in wanted)
    store.confirm_deletes(keys, now)
    return keys
