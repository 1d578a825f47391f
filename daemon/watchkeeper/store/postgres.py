"""The PostgreSQL database: an engine on psycopg 3, and the reasons it cannot be reached told in one
sentence that names the host and the database, never the password.

Connections are checked before use (``pool_pre_ping``), so a server that restarted costs one failed
pass, not a pool of dead connections; ``connect_timeout`` bounds how long a lost server stalls one.
"""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from watchkeeper.store.errors import StoreError, StoreUnavailable
from watchkeeper.store.target import PostgresTarget

CONNECT_TIMEOUT = 5
"""Seconds a connection attempt may take."""
STATEMENT_TIMEOUT_MS = 20_000
"""No statement waits longer (a lock held by a stuck instance must not stall a pass for ever)."""


def open_engine(target: PostgresTarget) -> Engine:
    url = make_url(target.url).set(drivername="postgresql+psycopg")
    return create_engine(
        url,
        hide_parameters=True,  # errors would otherwise quote the access token
        pool_pre_ping=True,
        pool_size=4,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "watchkeeper",
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c timezone=UTC",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 2,
        },
    )


def reason(exc: BaseException) -> str:
    """libpq's first line, without the password (libpq never prints it; the URL might be quoted)."""
    cause: Any = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def is_lost(exc: DBAPIError) -> bool:
    """The server went away or cannot be reached (as opposed to a query it refused)."""
    return exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError)


def unavailable(target: PostgresTarget, exc: BaseException) -> StoreUnavailable:
    message = f"the database {target.dbname} on {target.host}:{target.port} cannot be reached"
    return StoreUnavailable(_scrub(f"{message} ({reason(exc)})", target))


def open_error(target: PostgresTarget, exc: BaseException) -> StoreError:
    """An open that failed: unreachable (retry later) or refused (authentication, no such database:
    the operator must act); both name host and database."""
    text = reason(exc)
    lowered = text.lower()
    refused = ("password authentication", "does not exist", "no password supplied", "permission")
    if any(word in lowered for word in refused):
        where = f"the database {target.dbname} on {target.host}:{target.port}"
        return StoreError(_scrub(f"{where} refused watchkeeper ({text})", target))
    return unavailable(target, exc)


def _scrub(text: str, target: PostgresTarget) -> str:
    return text.replace(target.password, "***") if target.password else text
