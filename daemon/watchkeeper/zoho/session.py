"""One account's connection to Zoho, shared by the watch and the records clients.

Both clients' calls count alike: one access token (refreshed once after a 401), one estimate of
Zoho's clock from every answer's ``Date`` header, one bounded exchange per call. What a session
decides for every API is the status classes that mean the same everywhere: 401 (credentials),
429 (rate limit), 5xx and anything outside 2xx-4xx (transient). A 2xx, 3xx or other 4xx answer is
handed back for the API's own client to read.

Messages name the method, the path, the status and Zoho's code, never a token.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from watchkeeper import __version__
from watchkeeper.logs import get_logger
from watchkeeper.zoho.auth import OAuth, StaticToken
from watchkeeper.zoho.errors import AuthError, RateLimited, TransientError
from watchkeeper.zoho.exchange import DEFAULT_LIMITS, Answer, Limits, Request, exchange
from watchkeeper.zoho.regions import Endpoint, check_base_url
from watchkeeper.zoho.skew import SkewEstimate
from watchkeeper.zoho.wire import retry_after_seconds, whole_request_code

USER_AGENT = f"watchkeeper/{__version__}"
SCOPE_MISMATCH = "OAUTH_SCOPE_MISMATCH"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Session:
    """Thread-safe for concurrent calls."""

    def __init__(
        self,
        endpoint: Endpoint,
        auth: OAuth | StaticToken,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], datetime] = utc_now,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.endpoint = endpoint
        self.user_agent = USER_AGENT
        """Several instances name themselves in it, so Zoho's (or the emulator's) record of calls
        tells them apart."""
        self.base_url = check_base_url(endpoint.api_domain, "api_domain")
        self.limits = limits
        self._auth = auth
        self._owns_http = http is None
        self._http = httpx.Client(timeout=limits.timeout) if http is None else http
        self._clock = clock
        self._skew = SkewEstimate()

    @property
    def skew(self) -> timedelta:
        """Zoho's clock minus ours (zero until an answer carried a plausible Date header)."""
        return self._skew.value

    def server_now(self) -> datetime:
        return self._clock() + self._skew.value

    def clear_block(self) -> None:
        """A reload lifts the token server's "too many requests" hold (see OAuth.clear_block)."""
        if isinstance(self._auth, OAuth):
            self._auth.clear_block()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One call, retried once with a fresh token after a 401 (expired token); raises for the
        statuses whose meaning is the same on every API (1xx and 5xx are transient)."""
        token = self._auth.token()
        answer = self._send(method, path, token, params, json_body, headers)
        if answer.status == 401 and whole_request_code(answer.content) != SCOPE_MISMATCH:
            self._auth.invalidate(token)
            answer = self._send(method, path, self._auth.token(), params, json_body, headers)
        where = f"{method} {path}: HTTP {answer.status}"
        if answer.status == 401:
            code = whole_request_code(answer.content)
            raise AuthError(f"{where} {code}", code=code, status=401)
        if answer.status == 429:
            raise RateLimited(
                f"{where} too many requests",
                code=whole_request_code(answer.content),
                status=429,
                retry_after=self.retry_after(answer),
            )
        if not 200 <= answer.status < 500:
            trouble = "server error" if answer.status >= 500 else "unexpected status"
            raise TransientError(
                f"{where} {trouble}", status=answer.status, retry_after=self.retry_after(answer)
            )
        return answer

    def retry_after(self, answer: Answer) -> float | None:
        return retry_after_seconds(answer.headers.get("Retry-After"), self.server_now())

    def _send(
        self,
        method: str,
        path: str,
        token: str,
        params: dict[str, Any] | None,
        json_body: dict[str, Any] | None,
        extra: dict[str, str] | None,
    ) -> Answer:
        headers = {"Authorization": f"Zoho-oauthtoken {token}", "User-Agent": self.user_agent}
        headers.update(extra or {})
        url = self.base_url + path
        request = Request(method, url, f"{method} {path}", headers, params, json_body)
        sent = self._clock()
        answer = exchange(self._http, request, self.limits)
        implausible = self._skew.observe(answer.headers.get("Date"), sent, self._clock())
        if implausible is not None:
            get_logger().warning("clock.skew_implausible", url=path, skew_seconds=round(implausible, 1))
        return answer
