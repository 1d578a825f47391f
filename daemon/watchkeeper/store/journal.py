"""Queries on the small journals beside the registry: write intents, mass-delete confirmations,
foreign channels (for ``status``, which runs in another process) and the access-token cache."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, Table, bindparam, delete, select

from watchkeeper.model import AccessToken, ObservedChannel
from watchkeeper.store import chunks
from watchkeeper.store.schema import CONFIRMATIONS, FOREIGN, INTENTS, TOKENS
from watchkeeper.store.upsert import upsert
from watchkeeper.values import Intent

_KEY = ("account", "channel_id")

# --- intents --------------------------------------------------------------------------------------


def begin(conn: Connection, account: str, channel_ids: Iterable[str], action: str, at: datetime) -> None:
    rows = ({"account": account, "channel_id": cid, "action": action, "at": at} for cid in channel_ids)
    chunks.execute(conn, upsert(conn.dialect, INTENTS, _KEY, ("action", "at")), rows)


def done(conn: Connection, account: str, channel_ids: Iterable[str]) -> None:
    _delete_keys(conn, INTENTS, [(account, cid) for cid in channel_ids])


def clear_intents(conn: Connection, account: str) -> None:
    conn.execute(delete(INTENTS).where(INTENTS.c.account == account))


def pending_intents(conn: Connection) -> list[Intent]:
    c = INTENTS.c
    query = select(c.account, c.channel_id, c.action, c.at).order_by(c.at, c.account, c.channel_id)
    return [Intent(r.account, r.channel_id, r.action, r.at) for r in conn.execute(query)]


# --- mass-delete confirmations --------------------------------------------------------------------


def confirm_deletes(conn: Connection, ids: Iterable[tuple[str, str]], at: datetime) -> None:
    values = [{"account": a, "channel_id": c, "confirmed_at": at} for a, c in ids]
    if values:
        conn.execute(upsert(conn.dialect, CONFIRMATIONS, _KEY, ("confirmed_at",)), values)


def confirmed_deletes(conn: Connection) -> frozenset[tuple[str, str]]:
    rows = conn.execute(select(CONFIRMATIONS.c.account, CONFIRMATIONS.c.channel_id))
    return frozenset((row[0], row[1]) for row in rows)


def clear_confirmations(conn: Connection, ids: Iterable[tuple[str, str]] | None) -> None:
    if ids is None:
        conn.execute(delete(CONFIRMATIONS))
    else:
        _delete_keys(conn, CONFIRMATIONS, list(ids))


# --- foreign channels -----------------------------------------------------------------------------


def set_foreign(conn: Connection, account: str, channels: Iterable[ObservedChannel]) -> None:
    values = [
        {"account": account, "channel_id": c.channel_id, "modules": json.dumps(c.modules)}
        for c in channels
    ]
    conn.execute(delete(FOREIGN).where(FOREIGN.c.account == account))
    if values:
        conn.execute(FOREIGN.insert(), values)


def foreign(conn: Connection) -> list[tuple[str, str, list[str]]]:
    c = FOREIGN.c
    rows = conn.execute(select(c.account, c.channel_id, c.modules).order_by(c.account, c.channel_id))
    return [(row.account, row.channel_id, json.loads(row.modules)) for row in rows]


# --- access-token cache ---------------------------------------------------------------------------


def load_token(conn: Connection, account: str) -> AccessToken | None:
    c = TOKENS.c
    query = select(c.value, c.expires_at, c.issued_at).where(c.account == account)
    row = conn.execute(query).one_or_none()
    if row is None:
        return None
    return AccessToken(value=row.value, expires_at=row.expires_at, issued_at=row.issued_at)


def save_token(conn: Connection, account: str, token: AccessToken) -> None:
    statement = upsert(conn.dialect, TOKENS, ("account",), ("value", "expires_at", "issued_at"))
    conn.execute(
        statement,
        {"account": account, "value": token.value, "expires_at": token.expires_at,
         "issued_at": token.issued_at},
    )  # fmt: skip


def _delete_keys(conn: Connection, table: Table, keys: list[tuple[str, str]]) -> None:
    """Delete the rows of these (account, channel_id) keys (one statement, run once per key)."""
    statement = delete(table).where(
        table.c.account == bindparam("k_account"), table.c.channel_id == bindparam("k_channel")
    )
    chunks.execute(conn, statement, ({"k_account": a, "k_channel": c} for a, c in keys))
