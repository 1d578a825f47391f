"""Data steps shared by the revisions, written with SQLAlchemy Core so that they run on any
database (no SQLite json_extract, no PostgreSQL jsonb)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op


def rewrite_applied(columns: tuple[str, ...], change: Callable[[str, str, str], dict[str, Any]]) -> None:
    """For every registry row with an applied spec, set ``columns`` to what
    ``change(account, channel_id, applied)`` returns for them."""
    names = dict.fromkeys(("account", "channel_id", "applied", *columns))
    registry = sa.table("registry", *(sa.column(name) for name in names))
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(registry.c.account, registry.c.channel_id, registry.c.applied).where(
            registry.c.applied.is_not(None)
        )
    ).all()
    params = [
        {
            "k_account": account,
            "k_channel": channel_id,
            **{f"v_{name}": value for name, value in change(account, channel_id, applied).items()},
        }
        for account, channel_id, applied in rows
    ]
    if not params:
        return
    statement = (
        sa.update(registry)
        .where(
            registry.c.account == sa.bindparam("k_account"),
            registry.c.channel_id == sa.bindparam("k_channel"),
        )
        .values({name: sa.bindparam(f"v_{name}") for name in columns})
    )
    bind.execute(statement, params)
