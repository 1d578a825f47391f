"""Intents, delete confirmations, foreign channels; the registry's name and last_seen_at.

It upgrades the schema watchkeeper 0.1.0 created as its ``user_version`` 1
(registry, gaps, access_tokens, which predate Alembic). 0.1.0's ``user_version`` 2 is this
revision's schema.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

from watchkeeper.store.migrations.rows import rewrite_applied

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registry") as batch:
        batch.add_column(sa.Column("name", sa.String(), nullable=True))
        batch.add_column(sa.Column("last_seen_at", sa.String(), nullable=True))
    rewrite_applied(("name",), _name)
    _keyed("confirmations", sa.Column("confirmed_at", sa.String(), nullable=False))
    _keyed(
        "intents",
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("at", sa.String(), nullable=False),
    )
    _keyed("foreign_channels", sa.Column("modules", sa.String(), nullable=False))


def _name(_account: str, _channel_id: str, applied: str) -> dict[str, Any]:
    return {"name": json.loads(applied).get("name")}


def _keyed(name: str, *columns: sa.Column[Any]) -> None:
    """A table keyed by (account, channel_id), as every journal is."""
    op.create_table(
        name,
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("channel_id", sa.String(), nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("account", "channel_id"),
    )
