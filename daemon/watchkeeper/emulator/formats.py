"""Zoho's text formats as the emulator reads and writes them, written from zoho-api.md and the
recorded seeds, not shared with the daemon: an oracle that used the daemon's parsers would agree
with their mistakes.

- ``channel_expiry`` (zoho-api.md 2.2): "ISO-8601 with numeric offset, seconds precision, e.g.
  ``2023-02-02T10:30:00+05:30``". The emulator reads exactly that. ``Z`` is UNCONFIRMED there
  ("send ``+00:00``"), and fractions of a second, a space for the ``T`` or a missing ``+`` (the
  Chilkat sample's ``10:30:00 05:30``) are not what the docs show, so a plausible Zoho does not
  read them either.
- Events (1.2): ``<Module_API_name>.<op>``, op one of create, edit, delete, all; the listing
  expands ``all`` (2.3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

Product = Literal["crm", "bigin"]
PRODUCTS: tuple[Product, ...] = ("crm", "bigin")

Event = tuple[str, str]
"""(module API name, op), op one of OPS."""

OPS: tuple[str, ...] = ("create", "edit", "delete")
"""What ``Module.all`` stands for."""

_EVENT_RE = re.compile(r"([A-Za-z][A-Za-z0-9_ ]*)\.(create|edit|delete|all)")
_INSTANT_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})([+-])(\d{2}):(\d{2})", re.ASCII
)


class EventError(ValueError):
    """Not ``Module.op``."""


def parse_event(text: object) -> frozenset[Event]:
    """``"Deals.all"`` -> its three events; anything else that is not ``Module.op`` raises."""
    match = _EVENT_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise EventError(f"event {text!r} is not Module.op (op one of create, edit, delete, all)")
    module, op = match.groups()
    return frozenset((module, o) for o in OPS) if op == "all" else frozenset({(module, op)})


def parse_events(texts: Iterable[object]) -> frozenset[Event]:
    out: set[Event] = set()
    for text in texts:
        out |= parse_event(text)
    return frozenset(out)


def utc(dt: datetime) -> datetime:
    """An aware instant in UTC; a naive one is refused (it hides a time zone bug)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: every instant must carry its offset")
    return dt.astimezone(UTC)


def parse_expiry(text: object) -> datetime | None:
    """The instant a ``channel_expiry`` names, in UTC; None when Zoho could not read it."""
    match = _INSTANT_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second, sign, off_h, off_m = match.groups()
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        zone = timezone(-offset if sign == "-" else offset)
        local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:  # 2026-02-30, 25:00, an offset of 24 hours or more
        return None
    return local.replace(tzinfo=zone).astimezone(UTC)


def format_expiry(dt: datetime, offset: timedelta) -> str:
    """``2021-05-03T20:27:17+05:30``: whole seconds, in the org's offset, as Zoho answers."""
    local = utc(dt).astimezone(timezone(offset))
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{local:%Y-%m-%dT%H:%M:%S}{sign}{hours:02d}:{mins:02d}"
