"""Backfill progress: one row per gap being backfilled, and the notifications it will send."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfills",
        sa.Column("gap_id", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("channel_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("collected", sa.Boolean(), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("notifications", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_failure_at", sa.String(), nullable=True),
        sa.Column("retry_at", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("requested_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("gap_id"),
    )
    op.create_table(
        "backfill_notifications",
        sa.Column("gap_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("module", sa.String(), nullable=False),
        sa.Column("operation", sa.String(), nullable=False),
        sa.Column("ids", sa.String(), nullable=False),
        sa.Column("delivered_at", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("gap_id", "seq"),
    )
