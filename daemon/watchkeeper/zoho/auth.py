"""Access tokens for Zoho's APIs: the OAuth refresh-token flow, or a fixed token from the state file.

Zoho's accounts server allows only 10 refreshes per refresh token in 10 minutes and then blocks the
rest of the window, so the token is cached (in memory and, through TokenCache, in the store so a
restarted daemon reuses it), refreshed by one thread at a time, and a refresh answered with "too
many requests" blocks further attempts locally until the server's delay has passed (at most
REFRESH_BLOCK; a reload lifts it early through ``clear_block``). Each token is refreshed at its own
point of the last quarter of its lifetime (``refresh_due``), so the thousands of accounts of a fleet,
whose first tokens all come in the first pass, do not refresh together ever after.

No secret (refresh token, client secret, access token) ever appears in a message or a repr.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx

from watchkeeper.model import AccessToken
from watchkeeper.zoho.errors import AuthError, RateLimited, RefreshFailed, TransientError
from watchkeeper.zoho.exchange import DEFAULT_LIMITS, Answer, Limits, Request, exchange
from watchkeeper.zoho.regions import check_base_url
from watchkeeper.zoho.wire import json_object, retry_after_seconds

REFRESH_PATH = "/oauth/v2/token"
"""Under ``accounts_url``."""
REFRESH_BLOCK = 600.0
"""Seconds to wait after the accounts server says "too many requests": its window is 10 minutes.
Also the longest wait believed: a larger ``Retry-After`` is cut to it."""
DEFAULT_TOKEN_LIFETIME = timedelta(hours=1)
"""Zoho's documented access-token lifetime, assumed when a refresh answer omits expires_in."""
MAX_TOKEN_LIFETIME = timedelta(days=1)
"""The longest lifetime believed (Zoho's is an hour); a longer ``expires_in`` is cut to it, and a
token that dies sooner is refreshed on its first 401 anyway."""
_MS_THRESHOLD = 86400
"""An ``expires_in`` above one day in seconds is the older millisecond form."""
EARLY_REFRESH = timedelta(minutes=5)
"""A token is refreshed at the latest this long before it expires ..."""
MIN_LIFETIME_USED = 0.9
"""... or once this fraction of its lifetime has passed, if that is later (short-lived tokens)."""
EARLIEST_REFRESH = 0.75
"""... and at the earliest once this fraction has passed: 45 to 55 minutes into Zoho's hour."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def refresh_due(token: AccessToken) -> datetime:
    """When a fresh token should be fetched instead of ``token``: at its own point between the
    earliest and the latest refresh (``refresh_point``)."""
    return refresh_point(token.issued_at, token.expires_at, refresh_spread(token.value))


def refresh_point(issued_at: datetime, expires_at: datetime, spread: float) -> datetime:
    """``spread`` (0 to 1) of the way from EARLIEST_REFRESH of the lifetime to the latest refresh
    (EARLY_REFRESH before expiry, or MIN_LIFETIME_USED of the lifetime if that is later)."""
    lifetime = expires_at - issued_at
    latest = max(expires_at - EARLY_REFRESH, issued_at + lifetime * MIN_LIFETIME_USED)
    earliest = issued_at + lifetime * EARLIEST_REFRESH
    return earliest + (latest - earliest) * spread


def refresh_spread(value: str) -> float:
    """A token's point in its refresh window, in [0, 1), drawn from a hash of its value: once per
    token, and the same in every process that reads it from the cache (a restarted daemon, another
    instance on the shared database), which therefore agree on when it is due."""
    digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


class TokenCache(Protocol):
    """Persistence for the access token (the store implements it), so restarts do not refresh."""

    def load(self) -> AccessToken | None: ...

    def save(self, token: AccessToken) -> None: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where and as whom an account refreshes its tokens; the secrets stay out of the repr."""

    accounts_url: str
    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)


class OAuth:
    """The refresh-token flow, single-flight: one refresh at a time, the result shared by all."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        http: httpx.Client,
        clock: Callable[[], datetime] = _utc_now,
        cache: TokenCache | None = None,
        on_refresh: Callable[[AccessToken], None] | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._url = check_base_url(credentials.accounts_url, "accounts_url") + REFRESH_PATH
        self._form = {
            "grant_type": "refresh_token",
            "refresh_token": credentials.refresh_token,
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
        }
        self._http = http
        self._limits = limits
        self._clock = clock
        self._cache = cache
        self._on_refresh = on_refresh
        self._lock = threading.Lock()
        self._current: AccessToken | None = None
        self._rejected: str | None = None
        """The last token Zoho refused: a cache still holding it is not believed."""
        self._blocked_until: datetime | None = None
        self.api_domain: str | None = None
        """The ``api_domain`` of the last refresh answer (the DC the token belongs to)."""

    def __repr__(self) -> str:
        return f"OAuth(accounts_url={self._url!r})"

    def token(self) -> str:
        """A valid access token: the cached one while it is fresh, else a new one.

        A refresh that fails transiently falls back on the cached token while it has not expired;
        that margin is what refreshing early is for. Before refreshing, the cache is read again:
        another process sharing it (an instance that held the account before this one) may have
        refreshed already, and its token serves as well as a new one.
        """
        with self._lock:
            now = self._clock()
            current = self._current
            if current is None or now >= refresh_due(current):
                current = self._current = self._cached(now) or current
            if current is not None and now < refresh_due(current):
                return current.value
            try:
                fresh = self._refresh(now)
            except TransientError as exc:
                if current is not None and self._clock() < current.expires_at:
                    return current.value
                if isinstance(exc, RateLimited):
                    raise
                raise RefreshFailed(str(exc), code=exc.code, status=exc.status) from exc
            self._current = fresh
            if self._cache is not None:
                self._cache.save(fresh)
            if self._on_refresh is not None:
                self._on_refresh(fresh)
            return fresh.value

    def _cached(self, now: datetime) -> AccessToken | None:
        cached = self._cache.load() if self._cache is not None else None
        if cached is None or cached.value == self._rejected or now >= cached.expires_at:
            return None
        return cached

    def invalidate(self, value: str) -> None:
        """Forget ``value`` (Zoho answered INVALID_TOKEN for it); a newer token is kept."""
        with self._lock:
            self._rejected = value
            if self._current is not None and self._current.value == value:
                self._current = None

    def clear_block(self) -> None:
        """Forget a "too many requests" hold (an operator's reload: new credentials, or patience)."""
        with self._lock:
            self._blocked_until = None

    def _refresh(self, now: datetime) -> AccessToken:
        if self._blocked_until is not None and now < self._blocked_until:
            wait = (self._blocked_until - now).total_seconds()
            raise RateLimited(
                f"token refresh held back {wait:.0f}s: Zoho accounts said too many requests",
                code="too_many_requests",
                retry_after=wait,
            )
        request = Request("POST", self._url, f"token refresh: POST {REFRESH_PATH}", {}, form=self._form)
        answer = exchange(self._http, request, self._limits)
        try:
            token = self._parse(answer, now)
        except RateLimited as exc:
            self._blocked_until = now + timedelta(seconds=exc.retry_after or 0.0)
            raise
        return token

    def _parse(self, answer: Answer, now: datetime) -> AccessToken:
        status = answer.status
        where = f"token refresh: POST {REFRESH_PATH}: HTTP {status}"
        if status == 429:
            raise RateLimited(
                f"{where} too many requests", status=status, retry_after=_block(answer, now)
            )
        if status >= 500:
            raise TransientError(f"{where} server error", status=status)
        body = json_object(answer.content, where, status)
        value = body.get("access_token")
        if isinstance(value, str) and value:
            self.api_domain = _str_or_none(body.get("api_domain"))
            return AccessToken(value=value, issued_at=now, expires_at=now + _lifetime(body, where))
        error = body.get("error")
        if isinstance(error, str) and error:
            description = str(body.get("error_description", "")).lower()
            if "too many requests" in description:
                raise RateLimited(
                    f"{where} too many requests (code {error!r})",
                    code=error,
                    status=status,
                    retry_after=_block(answer, now),
                )
            raise AuthError(f"{where} refused: {error}", code=error, status=status)
        raise TransientError(f"{where} answer has neither access_token nor error", status=status)


def _lifetime(body: dict[str, Any], where: str) -> timedelta:
    """``expires_in`` in seconds, or the older form: milliseconds plus ``expires_in_sec``.

    A number or a numeric string; anything else (a bool, NaN, Infinity, a 400-digit integer, zero
    or less) is a TransientError naming the field; more than MAX_TOKEN_LIFETIME is cut to it.
    """
    field = "expires_in_sec" if "expires_in_sec" in body else "expires_in"
    raw = body.get(field)
    if raw is None:
        return DEFAULT_TOKEN_LIFETIME
    seconds = _number(raw)
    if seconds is None:
        raise TransientError(f"{where} {field} is not a finite number")
    if field == "expires_in" and seconds > _MS_THRESHOLD:
        seconds /= 1000
    if seconds <= 0:
        raise TransientError(f"{where} {field} is not positive")
    return timedelta(seconds=min(seconds, MAX_TOKEN_LIFETIME.total_seconds()))


def _number(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        value = float(raw)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _block(answer: Answer, now: datetime) -> float:
    """How long a refresh answered "too many requests" holds further refreshes back."""
    delay = retry_after_seconds(answer.headers.get("Retry-After"), now)
    return REFRESH_BLOCK if delay is None else min(delay, REFRESH_BLOCK)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class StaticToken:
    """A fixed access token from the state file: nothing to refresh, so once Zoho rejects it the
    account stays failed until the operator supplies a new one."""

    def __init__(self, value: str) -> None:
        self._value = value
        self._dead = False

    def __repr__(self) -> str:
        return f"StaticToken(dead={self._dead})"

    def token(self) -> str:
        if self._dead:
            raise AuthError("the configured access_token was rejected by Zoho (expired or revoked)")
        return self._value

    def invalidate(self, value: str) -> None:
        if value == self._value:
            self._dead = True
