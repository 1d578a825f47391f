"""Rows <-> values: the applied spec as JSON, a registry entry as column values, and the channel
state as read back against the gap ledger. Pure functions, no database."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from typing import Any, get_args

from watchkeeper.model import (
    ChannelSpec,
    ChannelState,
    RegistryEntry,
    format_events,
    parse_events,
    token_digest,
    url_digest,
)
from watchkeeper.secrets import mask_url
from watchkeeper.store.errors import StoreError
from watchkeeper.values import Gap

_STATES: dict[str, ChannelState] = {state: state for state in get_args(ChannelState)}
"""Each state's one string: a registry read back shares them (and the account's name, and a
masked notify_url) instead of holding a copy of each per channel."""
_HOLD_THEIR_STATE: frozenset[ChannelState] = frozenset({"failed", "removing"})
"""States an open gap does not override: the channel is lapsed, but what is being done about it
(held back after a failure, being deleted) is what ``status`` and the planner need."""

ENTRY_COLUMNS = (
    "account", "channel_id", "state", "applied", "applied_token_digest", "applied_url_digest",
    "expires_at", "lifetime_seconds", "renew_at", "failures", "retry_at", "last_error", "terminal",
)  # fmt: skip
"""The registry columns an entry is made of, in ``entry()``'s order (``lapsed_since`` follows)."""


def spec_json(spec: ChannelSpec) -> str:
    """The applied spec as kept: no token (only its digest is kept) and the notify_url masked (only
    its digest is kept); account and channel id are the row's key."""
    return dump_json(
        {
            "events": format_events(spec.events),
            "notify_url": mask_url(spec.notify_url),
            "ttl": spec.ttl.total_seconds(),
            "name": spec.name,
            "notify_on_related_action": spec.notify_on_related_action,
            "return_affected_field_values": spec.return_affected_field_values,
            "notification_condition": spec.notification_condition,
        }
    )


def dump_json(value: dict[str, Any]) -> str:
    """The one text form of a stored JSON object (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def json_spec(account: str, channel_id: str, text: str) -> ChannelSpec:
    data = json.loads(text)
    return ChannelSpec(
        account=account,
        channel_id=channel_id,
        events=parse_events(data["events"]),
        notify_url=sys.intern(data["notify_url"]),
        ttl=timedelta(seconds=data["ttl"]),
        name=data["name"],
        notify_on_related_action=data["notify_on_related_action"],
        return_affected_field_values=data["return_affected_field_values"],
        notification_condition=data["notification_condition"],
    )


def registry_values(entry: RegistryEntry, last_renewed_at: datetime | None) -> dict[str, Any]:
    """The row for ``entry``. Digests the caller did not compute are computed from the spec, which
    still holds the real token and URL (the row will not); ``lapsed_since`` is not a column."""
    spec = entry.applied
    token, url = entry.applied_token_digest, entry.applied_url_digest
    if spec is not None:
        if (spec.account, spec.channel_id) != (entry.account, entry.channel_id):
            raise ValueError(f"applied spec of {entry.channel_id} belongs to channel {spec.channel_id}")
        if token is None:
            token = token_digest(spec.account, spec.channel_id, spec.token)
        if url is None:
            url = url_digest(spec.account, spec.channel_id, spec.notify_url)
    return {
        "account": entry.account,
        "channel_id": entry.channel_id,
        "state": entry.state,
        "name": None if spec is None else spec.name,
        "applied": None if spec is None else spec_json(spec),
        "applied_token_digest": token,
        "applied_url_digest": url,
        "expires_at": entry.expires_at,
        "lifetime_seconds": None if entry.lifetime is None else entry.lifetime.total_seconds(),
        "renew_at": entry.renew_at,
        "failures": entry.failures,
        "retry_at": entry.retry_at,
        "last_error": entry.last_error,
        "terminal": entry.terminal,
        "last_renewed_at": last_renewed_at,
    }


def checked_state(state: str) -> ChannelState:
    if state not in _STATES:
        raise StoreError(f"registry holds unknown channel state {state!r}")
    return _STATES[state]


def read_state(stored: str, lapsed_since: datetime | None) -> ChannelState:
    """The state as the gap ledger has it: an open gap means lapsed (unless the channel is held
    or being removed), and "lapsed" without one is a leftover of an old defect: active."""
    state = checked_state(stored)
    if lapsed_since is None:
        return "active" if state == "lapsed" else state
    return state if state in _HOLD_THEIR_STATE else "lapsed"


def entry(row: Any) -> RegistryEntry:
    """A RegistryEntry from ENTRY_COLUMNS followed by the open gap's start (or None)."""
    (account, channel_id, state, applied, token, url, expires_at, lifetime, renew_at, failures,
     retry_at, last_error, terminal, lapsed_since) = row  # fmt: skip
    account = sys.intern(account)
    return RegistryEntry(
        account=account,
        channel_id=channel_id,
        state=read_state(state, lapsed_since),
        applied=None if applied is None else json_spec(account, channel_id, applied),
        applied_token_digest=token,
        expires_at=expires_at,
        lifetime=None if lifetime is None else timedelta(seconds=lifetime),
        renew_at=renew_at,
        failures=failures,
        retry_at=retry_at,
        last_error=last_error,
        terminal=bool(terminal),
        lapsed_since=lapsed_since,
        applied_url_digest=url,
    )


def gap(row: Any) -> Gap:
    return Gap(id=row.id, account=row.account, channel_id=row.channel_id, start=row.start,
               end=row.end, cause=row.cause)  # fmt: skip
