"""The schema watchkeeper 0.1.0 released as its ``user_version`` 1: registry, gaps, access_tokens.

It predates Alembic; this revision writes it out so that every database, SQLite or PostgreSQL,
reaches the head by the same scripts from an empty start (``alembic upgrade head`` included). A
0.1.0 file already holds it and is stamped here instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry",
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("channel_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("applied", sa.String(), nullable=True),
        sa.Column("applied_token_digest", sa.String(), nullable=True),
        sa.Column("expires_at", sa.String(), nullable=True),
        sa.Column("lifetime_seconds", sa.Float(), nullable=True),
        sa.Column("renew_at", sa.String(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("retry_at", sa.String(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("terminal", sa.Boolean(), nullable=False),
        sa.Column("last_renewed_at", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("account", "channel_id"),
    )
    op.create_table(
        "gaps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("channel_id", sa.String(), nullable=False),
        sa.Column("start", sa.String(), nullable=False),
        sa.Column("end", sa.String(), nullable=True),
        sa.Column("cause", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("gaps_by_channel", "gaps", ["account", "channel_id"])
    is_open = sa.text('"end" IS NULL')
    op.create_index(
        "gaps_one_open", "gaps", ["account", "channel_id"],
        unique=True, sqlite_where=is_open, postgresql_where=is_open,
    )  # fmt: skip
    op.create_table(
        "access_tokens",
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("expires_at", sa.String(), nullable=False),
        sa.Column("issued_at", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("account"),
    )
