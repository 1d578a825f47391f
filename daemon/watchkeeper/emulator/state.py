"""What the emulated Zoho knows: orgs, their access tokens, and per product their channels and
live history (CRM and Bigin are separate services: a channel made through one is unknown to the
other, and the same id may live in both).

Nothing here locks or reads a clock: the Emulator holds the one lock and passes ``now`` (its own,
skewed clock) into every call, so a simulated week runs under a frozen clock.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from watchkeeper.emulator.formats import PRODUCTS, Event, Product, parse_event
from watchkeeper.emulator.records import RecordStore
from watchkeeper.emulator.resources import modules_in_order

DEFAULT_ORG = "org1"
DEFAULT_CLIENT_ID = "emu-client-id"
# the emulator's fixed credentials: printed by serve(), not secrets
DEFAULT_CLIENT_SECRET = "emu-client-secret"  # noqa: S105
DEFAULT_REFRESH_TOKEN = "emu-refresh-token"  # noqa: S105

REFRESH_WINDOW = timedelta(minutes=10)
MAX_REFRESHES = 10
"""Zoho Accounts: at most 10 access-token requests per refresh token in a rolling 10 minutes."""
MAX_LIVE_TOKENS = 10
"""...and at most 10 live access tokens per refresh token; minting the 11th revokes the oldest."""


@dataclass(frozen=True, slots=True)
class Channel:
    """One channel as Zoho holds it. Immutable: every change stores a new record, so the snapshots
    handed to tests never move under them."""

    channel_id: str
    events: frozenset[Event]
    notify_url: str
    expires_at: datetime
    token: str | None = None
    notify_on_related_action: bool = True
    return_affected_field_values: bool = False
    notification_condition: Any = None
    created_at: datetime | None = None
    """Start of the live interval this record belongs to."""
    modules: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", modules_in_order(self.events))

    def is_live(self, now: datetime) -> bool:
        return self.expires_at > now

    @property
    def event_names(self) -> list[str]:
        return sorted(f"{m}.{op}" for m, op in self.events)


@dataclass(slots=True)
class Segment:
    """A stretch of time a channel was live with one event set; ``closed_at`` when it ended
    before its expiry (deleted, or its events changed)."""

    start: datetime
    expires_at: datetime
    events: frozenset[Event]
    closed_at: datetime | None = None

    @property
    def end(self) -> datetime:
        return self.expires_at if self.closed_at is None else min(self.closed_at, self.expires_at)

    def is_open(self, now: datetime) -> bool:
        return self.closed_at is None and self.expires_at > now


@dataclass(slots=True)
class AccessToken:
    org: str
    expires_at: datetime
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """One request the emulator answered (``at`` on the emulator's clock). ``body`` is the parsed
    request JSON: it holds channel tokens, so tests must never print it."""

    at: datetime
    method: str
    path: str
    query: dict[str, str]
    status: int
    org: str | None
    items: int
    channel_ids: tuple[str, ...]
    body: dict[str, Any] | None = None
    agent: str | None = None
    """The request's User-Agent: which client (which of several instances) made the call."""


@dataclass(slots=True)
class ChannelStore:
    """One org's channels on one product."""

    channels: dict[str, Channel] = field(default_factory=dict)
    history: dict[str, list[Segment]] = field(default_factory=dict)
    _version: int = 0
    _rows: list[tuple[Channel, str]] = field(default_factory=list)
    _rows_key: tuple[int, datetime, datetime] | None = None

    def live(self, channel_id: str, now: datetime) -> Channel | None:
        channel = self.channels.get(channel_id)
        return channel if channel is not None and channel.is_live(now) else None

    def put(self, channel: Channel, now: datetime) -> Channel:
        """Create, renew or change a channel, and extend or split its live history."""
        current = self.live(channel.channel_id, now)
        if current is None:
            # a lapsed record goes, so the re-created channel lists last, as a new one would
            self.channels.pop(channel.channel_id, None)
            channel = _with_created(channel, now)
        else:
            channel = _with_created(channel, current.created_at or now)
        self.channels[channel.channel_id] = channel
        segments = self.history.setdefault(channel.channel_id, [])
        last = segments[-1] if segments else None
        if last is not None and last.is_open(now) and last.events == channel.events:
            last.expires_at = channel.expires_at
        else:
            if last is not None and last.is_open(now):
                last.closed_at = now
            segments.append(Segment(now, channel.expires_at, channel.events))
        self._version += 1
        return channel

    def remove(self, channel_id: str, now: datetime) -> Channel | None:
        """Delete a live channel; returns it, or None when there was none."""
        current = self.live(channel_id, now)
        self.channels.pop(channel_id, None)
        if current is None:
            return None
        segments = self.history.get(channel_id)
        if segments and segments[-1].is_open(now):
            segments[-1].closed_at = now
        self._version += 1
        return current

    def rows(self, now: datetime, linger: timedelta = timedelta(0)) -> list[tuple[Channel, str]]:
        """Every listed (channel, module) in listing order: the live ones, and those expired less
        than ``linger`` ago (whether Zoho lists a channel a while after its expiry is UNCONFIRMED).
        Cached until the next change or the next expiry, so paging through 20,000 rows builds the
        list once, not once per page."""
        key = self._rows_key
        if key is not None and key[0] == self._version and key[1] <= now < key[2]:
            return self._rows
        rows: list[tuple[Channel, str]] = []
        next_expiry = datetime.max.replace(tzinfo=now.tzinfo)
        for channel_id in [cid for cid, ch in self.channels.items() if not ch.is_live(now - linger)]:
            del self.channels[channel_id]
        for channel in self.channels.values():
            next_expiry = min(next_expiry, channel.expires_at + linger)
            rows.extend((channel, module) for module in channel.modules)
        self._rows, self._rows_key = rows, (self._version, now, next_expiry)
        return rows

    def intervals(
        self, channel_id: str, now: datetime, event: str | None = None
    ) -> list[tuple[datetime, datetime | None]]:
        """When the channel was live (with ``event`` among its events, when given); touching
        segments merge, and the end is None while still live."""
        wanted = parse_event(event) if event is not None else None
        out: list[tuple[datetime, datetime | None]] = []
        last_end: datetime | None = None
        for segment in self.history.get(channel_id, []):
            if wanted is not None and not wanted <= segment.events:
                continue
            end = None if segment.is_open(now) else segment.end
            if out and last_end is not None and last_end == segment.start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((segment.start, end))
            last_end = segment.end
        return out


@dataclass(slots=True)
class Org:
    name: str
    client_id: str
    client_secret: str
    refresh_token: str
    tz_offset: timedelta
    stores: dict[Product, ChannelStore] = field(
        default_factory=lambda: {product: ChannelStore() for product in PRODUCTS}
    )
    records: dict[Product, RecordStore] = field(
        default_factory=lambda: {product: RecordStore() for product in PRODUCTS}
    )
    live_tokens: deque[str] = field(default_factory=deque)
    refresh_times: deque[datetime] = field(default_factory=deque)

    def refreshes(self, now: datetime) -> int:
        while self.refresh_times and self.refresh_times[0] <= now - REFRESH_WINDOW:
            self.refresh_times.popleft()
        return len(self.refresh_times)


def _with_created(channel: Channel, created_at: datetime) -> Channel:
    return channel if channel.created_at == created_at else replace(channel, created_at=created_at)


class ZohoState:
    """All orgs plus the access tokens minted for them (looked up by token, whatever the org)."""

    def __init__(self, tz_offset: timedelta) -> None:
        self.tz_offset = tz_offset
        self.orgs: dict[str, Org] = {}
        self.by_refresh_token: dict[str, Org] = {}
        """A refresh costs a lookup, not a scan of 10,000 orgs."""
        self.tokens: dict[str, AccessToken] = {}
        self.add_org(DEFAULT_ORG, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_REFRESH_TOKEN, None)

    def add_org(
        self,
        name: str,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        tz_offset: timedelta | None,
    ) -> Org:
        """Create an org, or change an existing one's credentials (its channels stay)."""
        org = self.orgs.get(name)
        offset = self.tz_offset if tz_offset is None else tz_offset
        if org is None:
            org = self.orgs[name] = Org(name, client_id, client_secret, refresh_token, offset)
            self.by_refresh_token.setdefault(refresh_token, org)
            return org
        if org.refresh_token != refresh_token:
            org.refresh_times.clear()
            if self.by_refresh_token.get(org.refresh_token) is org:
                del self.by_refresh_token[org.refresh_token]
            self.by_refresh_token.setdefault(refresh_token, org)
        org.client_id, org.client_secret, org.refresh_token = client_id, client_secret, refresh_token
        org.tz_offset = offset
        return org

    def org(self, name: str) -> Org:
        try:
            return self.orgs[name]
        except KeyError:
            raise KeyError(f"unknown emulator org {name!r}") from None

    def mint(self, org: Org, now: datetime, lifetime: timedelta) -> str:
        token = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self.tokens[token] = AccessToken(org.name, now + lifetime)
        org.live_tokens.append(token)
        while len(org.live_tokens) > MAX_LIVE_TOKENS:
            self.tokens[org.live_tokens.popleft()].revoked = True
        return token
