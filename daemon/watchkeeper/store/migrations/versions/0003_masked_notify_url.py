"""notify_url secrets out of the registry: the applied URL is kept masked, beside its digest.

Query values and a password in a notify_url can authenticate a callback, so they must not sit in
the database. Existing rows still hold the plain URL, from which their digest is computed here.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from watchkeeper.model import url_digest
from watchkeeper.secrets import mask_url
from watchkeeper.store.codec import dump_json
from watchkeeper.store.migrations.rows import rewrite_applied

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("registry") as batch:
        batch.add_column(sa.Column("applied_url_digest", sa.String(), nullable=True))
    rewrite_applied(("applied", "applied_url_digest"), _masked)


def _masked(account: str, channel_id: str, applied: str) -> dict[str, str]:
    spec = json.loads(applied)
    url = spec["notify_url"]
    spec["notify_url"] = mask_url(url)
    return {"applied": dump_json(spec), "applied_url_digest": url_digest(account, channel_id, url)}
