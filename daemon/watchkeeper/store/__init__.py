"""The daemon's memory: which channels it owns, when each renews, the gaps to backfill.

One SQLite file (WAL, so ``watchkeeper status`` can read while the daemon writes), or one
PostgreSQL database shared by several instances (``postgres``, ``leases``), reached only through
``Store``. The schema is declared once, as the SQLModel tables of ``schema``; Alembic
migrations (``migrations/``, run in code by ``migrate``) bring an older database up to it without
losing history. Callers only ever see frozen values (RegistryEntry, Gap, StatusRow, Intent,
AccessToken), never ORM rows.

Secrets: the store keeps the short-lived access token (so a crash loop does not burn Zoho's
refresh allowance) and nothing else secret: never refresh tokens, client secrets or channel
verification tokens (only their digest), and notify_urls only masked (beside their digest). The
file and its -wal/-shm are mode 0600.

Modules: ``schema`` the tables; ``codec`` rows <-> values; ``registry``, ``gaps``, ``journal``,
``backfills`` the queries; ``upsert`` the dialect-aware upsert; ``migrate`` and ``migrations/``
the schema's history; ``sqlite`` the file; ``postgres`` the server; ``target`` which of the two;
``leases`` who serves which account; ``database`` the Store itself.
"""

from watchkeeper.store.database import Store, StoreTokenCache
from watchkeeper.store.errors import LeaseLost, SchemaTooNewError, StoreError, StoreUnavailable
from watchkeeper.store.schema import TABLES
from watchkeeper.store.sqlite import BUSY_TIMEOUT_MS
from watchkeeper.values import Backfill, BackfillNote, Gap, Intent, StatusRow

__all__ = [
    "BUSY_TIMEOUT_MS",
    "TABLES",
    "Backfill",
    "BackfillNote",
    "Gap",
    "Intent",
    "LeaseLost",
    "SchemaTooNewError",
    "StatusRow",
    "Store",
    "StoreError",
    "StoreTokenCache",
    "StoreUnavailable",
]
