"""Leases per account and instance heartbeats, for several instances on one PostgreSQL database
(unused, but present, on SQLite: one schema for both)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("account"),
    )
    op.create_table(
        "instances",
        sa.Column("instance", sa.String(), nullable=False),
        sa.Column("expires_at", sa.String(), nullable=False),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("started_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("instance"),
    )
