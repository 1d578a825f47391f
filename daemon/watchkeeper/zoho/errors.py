"""How a failed call to Zoho is classified, because the class decides what the engine does next.

- TransientError: try again later (timeouts, connection errors, 5xx, 429, bodies that are not the
  expected JSON). ``retry_after`` carries the server's ``Retry-After`` when it sent one.
- AuthError: the credentials are wrong (``invalid_client``, ``invalid_code``, scope mismatch);
  retrying burns the refresh allowance, so nothing retries it until a reload.
- TerminalError: Zoho refused the whole request for a reason retrying will not fix.
- RequestRefused: refused locally, before sending, because Zoho would reject it.

Per-item rejections inside a 2xx answer are not exceptions: they come back as ItemResult, and a
multi-request call returns the error that stopped it beside the earlier results (results.py).
Messages say the reason (timed out, deadline exceeded, answer too large, not JSON, no watch list)
and never carry tokens or secrets.
"""

from __future__ import annotations


class ZohoError(Exception):
    """Base of every error raised by watchkeeper.zoho."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class TransientError(ZohoError):
    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class RateLimited(TransientError):
    """HTTP 429 (Zoho's TOO_MANY_REQUESTS / RATE_LIMIT_EXCEEDED, or the accounts server's
    "too many requests" for token refreshes)."""


class RefreshFailed(TransientError):
    """The accounts server failed a token refresh (a 5xx, a timeout, an answer without a token).
    Not retried in place: each attempt may spend one of the refresh token's 10 in 10 minutes, so
    the account's backoff spaces them."""


class AuthError(ZohoError):
    """Credentials Zoho will not accept; terminal until the operator fixes them."""


class TerminalError(ZohoError):
    """A whole request Zoho refused for a reason retrying will not fix."""


class RequestRefused(ZohoError):
    """Refused locally: Zoho would reject it (token over 50 characters, bad event, >100 items)."""
