"""Reading Zoho's HTTP answers the same way in the OAuth and the watch client: a body that is not
the JSON object expected is a transient failure (an HTML error page from a proxy, a truncated
answer), never a crash."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from watchkeeper.zoho.errors import TransientError


def json_object(response: httpx.Response, where: str) -> dict[str, Any]:
    try:
        body: Any = response.json()
    except ValueError:
        raise TransientError(f"{where} answer is not JSON", status=response.status_code) from None
    if not isinstance(body, dict):
        raise TransientError(f"{where} answer is not a JSON object", status=response.status_code)
    return body


def retry_after_seconds(response: httpx.Response, now: datetime) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date, taken against ``now``)."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
