"""Zoho's callback to ``notify_url`` when a record changes (zoho-api.md section 3).

Delivered once, with no retry: nothing documents Zoho redelivering, so the emulator does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from watchkeeper.emulator.records import RecordOp
from watchkeeper.emulator.state import Channel

OPERATIONS: dict[str, str] = {"create": "insert", "edit": "update", "delete": "delete"}
"""Subscription op -> the ``operation`` word in the callback (the vocabularies differ)."""

TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One callback POST. ``payload`` carries the channel token: never print it in tests."""

    channel_id: str
    notify_url: str
    payload: dict[str, Any]
    status: int | None
    """The receiver's HTTP status; None when it could not be reached."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RecordChange:
    """What happened in the org: ``op`` on these records of ``module``."""

    module: str
    op: RecordOp
    record_ids: tuple[str, ...]


def payload(
    channel: Channel, change: RecordChange, server_time: datetime, resource_uri: str
) -> dict[str, Any]:
    ids, edit = list(change.record_ids), change.op == "edit"
    body: dict[str, Any] = {
        "server_time": int(server_time.timestamp() * 1000),
        "query_params": dict(parse_qsl(urlsplit(channel.notify_url).query, keep_blank_values=True)),
        "module": change.module,
        "resource_uri": resource_uri,
        "ids": ids,
        "affected_fields": [{rid: []} for rid in ids] if edit else [],
        "operation": OPERATIONS[change.op],
        "channel_id": channel.channel_id,
        "token": channel.token,
    }
    if channel.return_affected_field_values and edit:
        body["affected_values"] = [{"record_id": rid, "values": {}} for rid in ids]
    return body


def deliver(client: httpx.Client, targets: list[tuple[Channel, dict[str, Any]]]) -> list[Delivery]:
    """POST each payload to its channel's notify_url, in order; a failure is recorded, not raised."""
    out: list[Delivery] = []
    for channel, body in targets:
        try:
            status: int | None = client.post(channel.notify_url, json=body, timeout=TIMEOUT).status_code
            problem = None
        except httpx.HTTPError as exc:
            status, problem = None, type(exc).__name__
        out.append(Delivery(channel.channel_id, channel.notify_url, body, status, problem))
    return out
