"""PURE: what a backfill of one gap asks Zoho, what it makes of the answers, and what it redelivers.

A gap's window is widened by a minute each side (clocks and If-Modified-Since work to the second).
Records become notifications by the channel's subscribed events, in Zoho's vocabulary: ``insert``
for a record created in the window while ``create`` is subscribed, else ``update`` while ``edit``
is; ``delete`` for one deleted in the window. Polling yields each record's final state, so several
edits in a gap are one ``update``. One notification carries one (module, operation) and at most 100
ids, and its body is Zoho's callback body plus the ``backfill`` key that tells a receiver where it
came from (DESIGN.md section 9). Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from watchkeeper import policy
from watchkeeper.model import ChannelSpec, Event, format_instant
from watchkeeper.policy import Policy
from watchkeeper.zoho.records import DeletedRecord, Record

MARGIN = timedelta(minutes=1)
MAX_IDS = 100
RETRY_FOR = timedelta(days=1)
"""How long a receiver's refusals are retried before the backfill fails."""

Operation = Literal["insert", "update", "delete"]
OPERATIONS: tuple[Operation, ...] = ("insert", "update", "delete")


@dataclass(frozen=True, slots=True)
class Window:
    """The gap as recorded and the window queried, all on Zoho's clock."""

    gap_start: datetime
    gap_end: datetime

    @property
    def start(self) -> datetime:
        return self.gap_start - MARGIN

    @property
    def end(self) -> datetime:
        return self.gap_end + MARGIN

    def holds(self, instant: datetime) -> bool:
        return self.start <= instant <= self.end

    def due(self, zoho_now: datetime) -> bool:
        """Whether every change of the window can be seen: its end has passed."""
        return zoho_now >= self.end


@dataclass(frozen=True, slots=True)
class Query:
    """What to ask Zoho about one module."""

    module: str
    modified: bool
    """Records modified in the window (create or edit subscribed)."""
    deleted: bool
    """Deleted records (delete subscribed)."""


@dataclass(frozen=True, slots=True)
class Notification:
    module: str
    operation: Operation
    ids: tuple[str, ...]


def stored(module: str, operation: str, ids: Sequence[str]) -> Notification:
    """A notification read back from the store (which keeps the operation as text)."""
    for op in OPERATIONS:
        if op == operation:
            return Notification(module, op, tuple(ids))
    raise ValueError(f"stored backfill operation {operation!r} is not one of {', '.join(OPERATIONS)}")


def queries(events: Iterable[Event]) -> list[Query]:
    """One query per subscribed module, in module order."""
    ops: dict[str, set[str]] = {}
    for module, op in events:
        ops.setdefault(module, set()).add(op)
    return [
        Query(module, bool(ops[module] & {"create", "edit"}), "delete" in ops[module])
        for module in sorted(ops)
    ]


def notifications(
    module: str,
    window: Window,
    events: frozenset[Event],
    modified: Sequence[Record],
    deleted: Sequence[DeletedRecord],
) -> list[Notification]:
    """The module's changes in the window as notifications, insert then update then delete,
    each record once per operation, oldest change first."""
    by_op: dict[Operation, dict[str, None]] = {op: {} for op in OPERATIONS}
    for record in sorted(modified, key=lambda r: r.modified_time):
        if not window.holds(record.modified_time):
            continue
        if (module, "create") in events and window.holds(record.created_time):
            by_op["insert"][record.id] = None
        elif (module, "edit") in events:
            by_op["update"][record.id] = None
    if (module, "delete") in events:
        for gone in sorted(deleted, key=lambda r: r.deleted_time):
            if window.holds(gone.deleted_time):
                by_op["delete"][gone.id] = None
    out: list[Notification] = []
    for op in OPERATIONS:
        ids = list(by_op[op])
        out.extend(
            Notification(module, op, tuple(ids[i : i + MAX_IDS])) for i in range(0, len(ids), MAX_IDS)
        )
    return out


def body(
    note: Notification,
    spec: ChannelSpec,
    window: Window,
    server_time: datetime,
    resource_uri: str,
) -> dict[str, Any]:
    """Zoho's callback body for ``note`` (zoho-api.md section 3), plus ``backfill``.
    ``affected_fields`` is empty: which fields changed is unknown to a poll."""
    return {
        "server_time": int(server_time.timestamp() * 1000),
        "query_params": dict(parse_qsl(urlsplit(spec.notify_url).query, keep_blank_values=True)),
        "module": note.module,
        "resource_uri": resource_uri,
        "ids": list(note.ids),
        "affected_fields": [],
        "operation": note.operation,
        "channel_id": spec.channel_id,
        "token": spec.token,
        "backfill": {
            "gap_start": format_instant(window.gap_start),
            "gap_end": format_instant(window.gap_end),
        },
    }


def next_attempt(
    failures: int,
    first_failure: datetime,
    now: datetime,
    tuning: Policy,
    rng: random.Random,
) -> datetime | None:
    """When to try a refused delivery again (the channel backoff), or None once a day of
    refusals has passed: the backfill fails."""
    if now - first_failure >= RETRY_FOR:
        return None
    return min(now + policy.backoff(failures, tuning, rng), first_failure + RETRY_FOR)
