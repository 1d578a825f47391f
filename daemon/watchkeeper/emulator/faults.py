"""Injected failures: the ways Zoho and the networks in front of it misbehave.

A fault matches a request when every filter it names matches; it then fires for ``fraction`` of
the matching calls (a seeded RNG, so a run is repeatable) until ``count`` hits are used up. A fault
with ``status=None`` only adds latency and lets the request through, which models a reply that
arrives late after Zoho already acted on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from watchkeeper.emulator.formats import utc
from watchkeeper.emulator.responses import (
    JSON_TYPE,
    MESSAGES,
    TOKEN_RATE_LIMITED,
    Response,
    code_for_status,
    error,
    json_response,
)

PathKind = Literal["watch", "records", "token", "any"]
BodyKind = Literal["json", "html", "garbage", "empty", "items"]

_PATHS = ("watch", "records", "token", "any")
_BODIES = ("json", "html", "garbage", "empty", "items")


@dataclass(slots=True)
class Fault:
    status: int | None = 500
    start: datetime | None = None
    end: datetime | None = None
    fraction: float = 1.0
    methods: frozenset[str] | None = None
    """HTTP methods to hit, upper case; ``"TOKEN"`` is the OAuth refresh."""
    paths: PathKind = "watch"
    retry_after: float | None = None
    body: BodyKind = "json"
    latency: float = 0.0
    count: int | None = None
    org: str | None = None
    code: str | None = None
    """The error code of a JSON body (e.g. OAUTH_SCOPE_MISMATCH, or invalid_code on the token path);
    by default one that fits the status."""
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must lie in [0, 1], not {self.fraction}")
        if self.paths not in _PATHS:
            raise ValueError(f"paths must be one of {_PATHS}, not {self.paths!r}")
        if self.body not in _BODIES:
            raise ValueError(f"body must be one of {_BODIES}, not {self.body!r}")
        if self.methods is not None:
            self.methods = frozenset(m.upper() for m in self.methods)
        self.start = None if self.start is None else utc(self.start)
        self.end = None if self.end is None else utc(self.end)

    def matches(
        self, method: str, kind: Literal["watch", "records", "token"], org: str | None, now: datetime
    ) -> bool:
        return (
            (self.count is None or self.hits < self.count)
            and self.paths in (kind, "any")
            and (self.methods is None or method in self.methods)
            and (self.org is None or self.org == org)
            and (self.start is None or now >= self.start)
            and (self.end is None or now < self.end)
        )

    def response(self, kind: Literal["watch", "records", "token"], items: int = 0) -> Response:
        """The answer instead of Zoho's. ``body="items"``: a well-formed answer whose every item
        is refused with ``code`` (INTERNAL_ERROR by default), as a 207 would carry it."""
        status = self.status if self.status is not None else 200
        if self.body == "items":
            code = self.code or "INTERNAL_ERROR"
            refused = error(code) if code in MESSAGES else {**error("BAD_REQUEST"), "code": code}
            return json_response(status, {"watch": [refused] * max(items, 1)})
        headers = {} if self.retry_after is None else {"Retry-After": _seconds(self.retry_after)}
        if self.body == "json":
            if kind == "token":
                if self.code is None and status in (400, 429):
                    return json_response(status, TOKEN_RATE_LIMITED, headers)
                return json_response(status, {"error": self.code or "internal_error"}, headers)
            code = self.code or code_for_status(status)
            payload = error(code) if code in MESSAGES else {**error("BAD_REQUEST"), "code": code}
            return json_response(status, payload, headers)
        if self.body == "html":
            page = f"<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>"
            return Response(status, page.encode(), "text/html;charset=utf-8", headers)
        if self.body == "garbage":
            return Response(status, b'\x00\xff{"watch": [ <<truncated', JSON_TYPE, headers)
        return Response(status, b"", JSON_TYPE, headers)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "start": None if self.start is None else self.start.isoformat(),
            "end": None if self.end is None else self.end.isoformat(),
            "fraction": self.fraction,
            "methods": None if self.methods is None else sorted(self.methods),
            "paths": self.paths,
            "retry_after": self.retry_after,
            "body": self.body,
            "latency": self.latency,
            "count": self.count,
            "org": self.org,
            "code": self.code,
            "hits": self.hits,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        args = dict(data)
        args.pop("hits", None)
        for key in ("start", "end"):
            if args.get(key) is not None:
                args[key] = datetime.fromisoformat(str(args[key]))
        if args.get("methods") is not None:
            args["methods"] = frozenset(args["methods"])
        return cls(**args)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class FaultPlan:
    """The active faults, in the order added; not thread-safe (the Emulator's lock guards it)."""

    def __init__(self, seed: int) -> None:
        self.faults: list[Fault] = []
        self._rng = random.Random(seed)

    def pick(
        self, method: str, kind: Literal["watch", "records", "token"], org: str | None, now: datetime
    ) -> tuple[float, Fault | None]:
        """(latency to add, the fault that answers instead of Zoho or None)."""
        latency = 0.0
        for fault in self.faults:
            if not fault.matches(method, kind, org, now):
                continue
            if fault.fraction < 1.0 and self._rng.random() >= fault.fraction:
                continue
            fault.hits += 1
            latency += fault.latency
            if fault.status is not None:
                return latency, fault
        return latency, None
