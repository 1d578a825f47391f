"""Value types shared by every layer: what is desired, what Zoho shows, and what Zoho answered.

All instants are timezone-aware UTC datetimes; channel ids are strings everywhere (Zoho's SDKs mix
int and str). Events are compared as sets of (module, op) with ``Module.all`` expanded, because the
GET listing reports ``Deals.all`` as its three explicit operations.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal, NamedTuple

OPS: tuple[str, ...] = ("create", "edit", "delete")
"""The operations ``Module.all`` stands for."""

Event = tuple[str, str]
"""(module API name, op) with op one of OPS."""

_EVENT_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_ ]*)\.(create|edit|delete|all)$")


class EventError(ValueError):
    """An event string that is not ``Module.op``."""


@functools.lru_cache(maxsize=1024)
def parse_event(text: str) -> frozenset[Event]:
    """``"Deals.all"`` -> the three explicit events; anything not ``Module.op`` raises EventError.
    Cached: every channel naming an event shares its tuples."""
    match = _EVENT_RE.match(text)
    if match is None:
        raise EventError(f"event {text!r} is not Module.op (op one of create, edit, delete, all)")
    module, op = match.groups()
    if op == "all":
        return frozenset((module, o) for o in OPS)
    return frozenset({(module, op)})


def parse_events(texts: Iterable[str]) -> frozenset[Event]:
    out: set[Event] = set()
    for text in texts:
        out |= parse_event(text)
    return shared_events(frozenset(out))


@functools.lru_cache(maxsize=1024)
def shared_events(events: frozenset[Event]) -> frozenset[Event]:
    """The first instance of an equal event set: a fleet's channels mostly watch the same few, and
    a set per channel (a frozenset and its tuples each) was over a quarter of the daemon's heap per
    channel."""
    return events


def format_events(events: Iterable[Event]) -> list[str]:
    """Sorted event strings, collapsing a module with all three ops back to ``Module.all``."""
    by_module: dict[str, set[str]] = {}
    for module, op in events:
        by_module.setdefault(module, set()).add(op)
    out: list[str] = []
    for module in sorted(by_module):
        ops = by_module[module]
        if ops >= set(OPS):
            out.append(f"{module}.all")
        else:
            out.extend(f"{module}.{op}" for op in OPS if op in ops)
    return out


def modules_of(events: Iterable[Event]) -> list[str]:
    return sorted({module for module, _ in events})


def utc(dt: datetime) -> datetime:
    """An aware datetime converted to UTC; naive datetimes are refused (they hide a timezone bug)."""
    if dt.tzinfo is UTC:  # the common case, on every planner path: no conversion to make
        return dt
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: every instant must carry its offset")
    return dt.astimezone(UTC)


def parse_instant(text: str) -> datetime:
    """Zoho's ISO 8601 with an offset (``2021-05-11T15:01:32+05:30``) -> aware UTC."""
    return utc(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))


def format_instant(dt: datetime, offset: timedelta = timedelta(0)) -> str:
    """ISO 8601 with a numeric offset and no fractional seconds, as Zoho expects ``channel_expiry``."""
    return utc(dt).astimezone(timezone(offset)).replace(microsecond=0).isoformat()


def canonical_json(value: Any) -> str | None:
    """A stable text form of a JSON value (for ``notification_condition``), None for None."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


Product = Literal["crm", "bigin"]


class Digests(NamedTuple):
    """A spec's fingerprints of its secrets (see token_digest and url_digest)."""

    token: str | None
    url: str


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One desired channel, secrets already resolved (never log ``token``)."""

    account: str
    channel_id: str
    events: frozenset[Event]
    notify_url: str
    ttl: timedelta
    name: str | None = None
    token: str | None = field(default=None, repr=False)
    notify_on_related_action: bool = False
    return_affected_field_values: bool = False
    notification_condition: str | None = None
    """canonical_json of the list as written in the state file, passed through to Zoho."""
    backfill: bool = False
    """Redeliver what changed in each gap once it closes (DESIGN.md section 9); never sent to Zoho."""
    _digests: Digests | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def label(self) -> str:
        return self.name or self.channel_id

    def digests(self) -> Digests:
        """The token and URL digests of this spec, computed on first use and kept: the planner
        compares them with the applied ones on every pass (a sha256 per channel per pass was a
        fifth of its time), and a registry entry granted from this spec shares the two strings.
        Kept here rather than in a cache keyed by (account, channel_id, secret), whose keys and
        links cost the daemon 300 bytes per channel."""
        digests = self._digests
        if digests is None:
            key = (self.account, self.channel_id)
            digests = Digests(token_digest(*key, self.token), url_digest(*key, self.notify_url))
            object.__setattr__(self, "_digests", digests)
        return digests


@dataclass(frozen=True, slots=True)
class WatchItem:
    """A channel as sent in a POST/PUT/PATCH: the spec plus the expiry we ask for."""

    spec: ChannelSpec
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ObservedChannel:
    """One channel as the GET listing shows it, its per-module rows merged."""

    channel_id: str
    events: frozenset[Event]
    notify_url: str
    expires_at: datetime
    """The earliest expiry over its modules, aware UTC."""
    token: str | None = field(default=None, repr=False)
    notify_on_related_action: bool | None = None
    return_affected_field_values: bool | None = None
    notification_condition: str | None = None

    @property
    def modules(self) -> list[str]:
        return modules_of(self.events)


@dataclass(frozen=True, slots=True)
class ItemResult:
    """Zoho's answer for one channel in a write request, whatever the HTTP status was."""

    channel_id: str
    ok: bool
    code: str
    message: str = ""
    expires_at: datetime | None = None
    """On success, the earliest ``channel_expiry`` over the modules Zoho reported."""
    api_name: str | None = None
    json_path: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def not_found(self) -> bool:
        """Zoho no longer knows the channel (lapsed, or deleted behind our back)."""
        return self.code in NOT_FOUND_CODES


def token_digest(account: str, channel_id: str, token: str | None) -> str | None:
    """A one-way fingerprint of a channel token, so the store can notice a changed token without
    keeping it (DESIGN.md section 5: verification tokens are never stored). A desired spec keeps
    its own: ``ChannelSpec.digests``."""
    if token is None:
        return None
    material = "\0".join(("watchkeeper-token-v1", account, channel_id, token)).encode()
    return hashlib.sha256(material).hexdigest()


def url_digest(account: str, channel_id: str, url: str) -> str:
    """A one-way fingerprint of a notify_url, whose query values and password are secrets: the store
    keeps the URL masked, and a changed URL is noticed by comparing digests."""
    material = "\0".join(("watchkeeper-url-v1", account, channel_id, url)).encode()
    return hashlib.sha256(material).hexdigest()


NOT_FOUND_CODES = frozenset({"NOT_SUBSCRIBED", "RESOURCE_NOT_FOUND"})


ChannelState = Literal["pending", "active", "at_risk", "lapsed", "failed", "removing"]


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """What the store knows of a channel watchkeeper owns (created or adopted): the planner's view.

    ``applied`` is the spec last accepted by Zoho, so a changed state file is seen as drift even
    on a pass that did not list. ``renew_at`` is drawn once per granted lifetime and stored, so a
    restart does not redraw it. ``retry_at`` holds a failed channel back until then.
    """

    account: str
    channel_id: str
    state: ChannelState
    applied: ChannelSpec | None = None
    """Its ``token`` is always None: the store never keeps channel tokens, only their digest."""
    applied_token_digest: str | None = None
    expires_at: datetime | None = None
    lifetime: timedelta | None = None
    renew_at: datetime | None = None
    failures: int = 0
    retry_at: datetime | None = None
    last_error: str | None = None
    terminal: bool = False
    """The last failure was one retrying will not fix (a rejected item, bad credentials)."""
    lapsed_since: datetime | None = None
    """The start of the channel's open gap, None while it has none. Read from the gap ledger (the
    store derives it from the open gap row, which is the one place the fact is kept); writing an
    entry never changes it: only opening or closing a gap does."""
    applied_url_digest: str | None = None
    """url_digest of the applied notify_url: the store keeps that URL with its secrets masked."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A short-lived access token; its value is kept out of the repr."""

    value: str = field(repr=False)
    expires_at: datetime
    issued_at: datetime
