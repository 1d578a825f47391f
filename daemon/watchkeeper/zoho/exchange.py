"""One HTTP exchange with Zoho, bounded in time and in size whatever the server does.

httpx's timeouts measure silence: a server sending one byte every few seconds never trips them, and
a 300 KB gzip body can inflate to gigabytes. So each exchange has a total deadline, checked as each
piece of the body arrives, and the body is decompressed here, piece by piece, never past a cap.

Limit: until the status line and headers are in, only httpx's per-phase timeouts apply (each cut
to the deadline); httpx has no hook there. A body, where a large or trickled answer spends its
time, is measured against the deadline.

Messages name the method, the path and the reason, never a header, a token or a body.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from watchkeeper.zoho.errors import TransientError

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=30.0, pool=10.0)
"""Explicit timeouts for every call to Zoho: httpx's 5 s default is too short for a 100-item PATCH."""
DEFAULT_DEADLINE = 60.0
"""Seconds one exchange may take in all, trickled body included."""
RETRIES = (0.5, 1.0, 2.0)
"""Seconds before each retry of a listing page or a write chunk that failed transiently: three
retries, 3.5 s in all. With 2 % of 5xx a page then fails four times in a row once in 6 million, so
a 500-page listing completes 99.99 % of the time instead of 0.004 %."""
DEFAULT_MAX_ANSWER = 16 * 1024 * 1024
"""Bytes of one answer (one listing page), decoded: 200 rows are a few hundred KB."""


MAX_ITEMS = 100
"""Channels per POST/PUT/PATCH/DELETE (Kaizen #14; the v8 OAS says 50, handled by halving)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """How long one exchange may take, how much it may bring back, how many channels one watch
    request may carry, and how a failed listing page or write chunk is retried in place (the OAuth
    exchange ignores ``max_items`` and ``retries``)."""

    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)
    deadline: float = DEFAULT_DEADLINE
    max_answer_bytes: int = DEFAULT_MAX_ANSWER
    max_items: int = MAX_ITEMS
    retries: tuple[float, ...] = RETRIES

    def __post_init__(self) -> None:
        if not self.deadline > 0 or self.max_answer_bytes < 1:
            raise ValueError("deadline and max_answer_bytes must be positive")
        if any(not delay >= 0 for delay in self.retries):
            raise ValueError("retries must be delays of zero seconds or more")
        if not 1 <= self.max_items <= MAX_ITEMS:
            raise ValueError(f"max_items must be between 1 and {MAX_ITEMS}, not {self.max_items}")

    def phase_timeout(self) -> httpx.Timeout:
        """Each phase's timeout, none longer than the whole deadline."""
        cut = self.deadline

        def within(value: float | None) -> float:
            return cut if value is None else min(value, cut)

        t = self.timeout
        return httpx.Timeout(
            connect=within(t.connect), read=within(t.read), write=within(t.write), pool=within(t.pool)
        )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: httpx.Headers
    content: bytes
    """Decoded (Content-Encoding undone), at most ``max_answer_bytes``."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str
    where: str
    """``"GET /crm/v8/actions/watch"``: what messages call this request."""
    headers: dict[str, str]
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    form: dict[str, str] | None = None


def exchange(
    http: httpx.Client,
    request: Request,
    limits: Limits,
    monotonic: Callable[[], float] = time.monotonic,
) -> Answer:
    """Send ``request`` and read its whole answer, or raise TransientError saying why not."""
    started = monotonic()
    where = request.where
    try:
        with http.stream(
            request.method,
            request.url,
            params=request.params,
            json=request.json,
            data=request.form,
            headers={**request.headers, "Accept-Encoding": "gzip"},  # only what _Body decodes
            timeout=limits.phase_timeout(),
        ) as response:
            body = _Body(response.headers.get("Content-Encoding", ""), limits.max_answer_bytes, where)
            for chunk in response.iter_raw():
                body.feed(chunk)
                _check_deadline(started, monotonic(), limits.deadline, where)
            _check_deadline(started, monotonic(), limits.deadline, where)
            return Answer(response.status_code, response.headers, body.finish())
    except httpx.TimeoutException as exc:
        _check_deadline(started, monotonic(), limits.deadline, where)
        raise TransientError(f"{where}: timed out ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:  # transport and protocol errors: all worth a retry
        raise TransientError(f"{where}: connection failed ({type(exc).__name__})") from None


def _check_deadline(started: float, now: float, deadline: float, where: str) -> None:
    if now - started > deadline:
        raise TransientError(f"{where}: deadline exceeded ({deadline:g}s for the whole exchange)")


class _Body:
    """An answer's body, decompressed as it arrives and never kept past ``cap`` bytes."""

    def __init__(self, encoding: str, cap: int, where: str) -> None:
        self._coding = encoding.strip().lower()
        self._cap = cap
        self._where = where
        self._parts: list[bytes] = []
        self._raw = 0
        self._size = 0
        if self._coding in ("", "identity"):
            self._inflate = None
        elif self._coding in ("gzip", "x-gzip"):
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
        else:
            raise TransientError(f"{where}: answer has an unsupported Content-Encoding")

    def feed(self, raw: bytes) -> None:
        self._raw += len(raw)  # bytes after the end of a gzip stream count too
        if self._raw > self._cap:
            self._too_large()
        if self._inflate is None:
            self._keep(raw)
            return
        data = raw
        while data:
            self._keep(self._decode(data, self._cap - self._size + 1))
            data = self._inflate.unconsumed_tail

    def finish(self) -> bytes:
        if self._inflate is not None:
            self._keep(self._decode(b"", None))
        return b"".join(self._parts)

    def _decode(self, data: bytes, limit: int | None) -> bytes:
        assert self._inflate is not None
        try:
            return self._inflate.decompress(data, limit) if limit else self._inflate.flush()
        except zlib.error:
            raise TransientError(f"{self._where}: answer cannot be decoded ({self._coding})") from None

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._cap:
            self._too_large()
        self._parts.append(data)

    def _too_large(self) -> None:
        raise TransientError(f"{self._where}: answer too large (over {self._cap} bytes)")
