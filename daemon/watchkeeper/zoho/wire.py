"""The actions/watch codec: request bodies out, Zoho's answers in, with no I/O and no clock.

Every value from Zoho is hostile until parsed here: a number is checked for type, finiteness and
range where it is read, so nothing downstream meets an OverflowError, a NaN or a year-9999 expiry.
An answer that cannot be trusted is a TransientError naming the field; per-item refusals are
ItemResult values. Times that a check needs (Zoho's "now") come in as arguments.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from watchkeeper.model import (
    NOT_FOUND_CODES,
    OPS,
    Event,
    EventError,
    ItemResult,
    ObservedChannel,
    WatchItem,
    canonical_json,
    format_events,
    format_instant,
    parse_event,
    parse_instant,
)
from watchkeeper.zoho.errors import RequestRefused, TransientError

MAX_TOKEN_LENGTH = 50
MAX_RETRY_AFTER = 86400.0
"""The longest ``Retry-After`` believed, in seconds; longer ones are clamped to it (the engine caps
pauses far shorter; this only keeps absurd values such as 1e14 out of datetime arithmetic)."""
MAX_EXPIRY_AHEAD = timedelta(days=31)
"""A ``channel_expiry`` further ahead of Zoho's clock than this is implausible (Zoho grants at most
a week). A write's success keeps no expiry then; a listing row makes the listing fail."""
MAX_EXPIRY_BEHIND = timedelta(days=1)
"""A listed channel expired longer ago than this is implausible: Zoho drops expired channels."""
MAX_MESSAGE = 200
"""Characters kept of a message from Zoho (they end up in logs and the store)."""
UNKNOWN_CHANNEL = "UNKNOWN_CHANNEL_IN_ANSWER"
_JSON_PATH_INDEX = re.compile(r"^\$\.watch\[(\d{1,6})\]")
_COUNT_WORDS = ("limit", "maximum", "exceed", "too many", "more than")


# -- generic answer parsing ----------------------------------------------------------------------


def json_object(content: bytes, where: str, status: int | None = None) -> dict[str, Any]:
    """The JSON object of an answer; anything else is transient (a proxy's page, a cut body)."""
    try:
        body: Any = json.loads(content)
    except json.JSONDecodeError as exc:  # says where it broke, never quotes the body
        reason = "empty" if not content.strip() else f"{exc.msg} at char {exc.pos}"
        raise TransientError(f"{where} answer is not JSON ({reason})", status=status) from None
    except (ValueError, RecursionError):  # undecodable bytes, 5,000-digit numbers, deep nesting
        raise TransientError(f"{where} answer is not readable JSON", status=status) from None
    if not isinstance(body, dict):
        raise TransientError(f"{where} answer is not a JSON object", status=status)
    return body


def whole_request_code(content: bytes) -> str:
    """Zoho's ``code`` of a whole-request error, "UNKNOWN" when the body has none."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return "UNKNOWN"
    return (text(body.get("code")) if isinstance(body, dict) else "") or "UNKNOWN"


def complains_about_count(body: dict[str, Any]) -> bool:
    """Whether a whole-request 400 is about the number of items (Zoho's wording is unknown)."""
    words = (
        text(body.get("code")),
        text(body.get("message")),
        json.dumps(body.get("details"), default=str),
    )
    return any(word in " ".join(words).lower() for word in _COUNT_WORDS)


def parse_http_date(raw: str | None) -> datetime | None:
    """An RFC 9110 date (``Date``, ``Retry-After``) as aware UTC, None when unreadable."""
    if not raw:
        return None
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def retry_after_seconds(raw: str | None, now: datetime) -> float | None:
    """``Retry-After`` in seconds, delta-seconds or an HTTP date taken against ``now``.

    Clamped to [0, MAX_RETRY_AFTER]; a value that is not a finite number or a date is ignored.
    """
    if raw is None:
        return None
    try:
        seconds = float(raw.strip())
    except ValueError:
        when = parse_http_date(raw)
        if when is None:
            return None
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def text(value: object) -> str:
    """Zoho mixes strings and numbers for ids; None and other shapes become ""."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def plausible_instant(value: object, now: datetime) -> datetime | None:
    """A ``channel_expiry`` as aware UTC when it is readable and within reach of ``now``."""
    if not isinstance(value, str):
        return None
    try:
        instant = parse_instant(value)
    except (ValueError, OverflowError):  # OverflowError: year 9999 at a negative offset
        return None
    if not now - MAX_EXPIRY_BEHIND <= instant <= now + MAX_EXPIRY_AHEAD:
        return None
    return instant


# -- request bodies ------------------------------------------------------------------------------


def item_body(item: WatchItem) -> dict[str, Any]:
    """The JSON object for one channel in a POST/PUT/PATCH, refused locally if Zoho would reject it."""
    spec = item.spec
    channel_id = spec.channel_id
    if not channel_id:
        raise RequestRefused("a channel without channel_id")
    if spec.token is not None and len(spec.token) > MAX_TOKEN_LENGTH:
        raise RequestRefused(
            f"channel {channel_id}: token is {len(spec.token)} characters, over {MAX_TOKEN_LENGTH}"
        )
    if not spec.events:
        raise RequestRefused(f"channel {channel_id}: no events")
    for module, op in spec.events:
        if op not in OPS or not _expressible(f"{module}.{op}"):
            raise RequestRefused(f"channel {channel_id}: event {module}.{op} is not Module.op")
    if item.expires_at.tzinfo is None or item.expires_at.utcoffset() is None:
        raise RequestRefused(f"channel {channel_id}: expiry {item.expires_at} has no timezone")
    body: dict[str, Any] = {
        "channel_id": channel_id,
        "events": format_events(spec.events),
        "notify_url": spec.notify_url,
        "channel_expiry": format_instant(item.expires_at),
        "notify_on_related_action": spec.notify_on_related_action,
        "return_affected_field_values": spec.return_affected_field_values,
    }
    if spec.token is not None:
        body["token"] = spec.token
    if spec.notification_condition is not None:
        body["notification_condition"] = json.loads(spec.notification_condition)
    return body


def _expressible(event: str) -> bool:
    try:
        parse_event(event)
    except EventError:
        return False
    return True


def watch_list(body: dict[str, Any] | None, where: str) -> list[Any]:
    """The ``watch`` array every actions/watch answer carries; its absence is transient."""
    watch = None if body is None else body.get("watch")
    if not isinstance(watch, list):
        raise TransientError(f"{where}: answer has no watch list")
    return watch


# -- write answers -------------------------------------------------------------------------------


def map_write_results(channel_ids: Sequence[str], watch: list[Any], now: datetime) -> list[ItemResult]:
    """Zoho's ``watch[]`` answer -> one result per requested channel, in request order.

    An item that names a channel (details.events[].channel_id, details.channel_id) belongs to that
    channel; one naming none is placed by its json_path ``$.watch[i]``, or else its position. An
    item naming a channel that was not in the request proves the answer is about some other
    request: every channel of this one gets an UNKNOWN_CHANNEL_IN_ANSWER failure, never another
    channel's success. ``now`` is Zoho's clock, which granted expiries must be near.
    """
    index = {channel_id: i for i, channel_id in enumerate(channel_ids)}
    slots: list[ItemResult | None] = [None] * len(channel_ids)
    for position, entry in enumerate(watch):
        if not isinstance(entry, dict):
            continue
        named = list(filter(None, _channel_ids_in(_details(entry))))
        stranger = next((n for n in named if n not in index), None)
        if stranger is not None:
            return [_unknown_channel(channel_id, stranger) for channel_id in channel_ids]
        i = index[named[0]] if named else _path_index(entry, position)
        if i is not None and i < len(slots) and slots[i] is None:
            slots[i] = _item_result(channel_ids[i], entry, now)
    return [slot if slot is not None else _missing(channel_ids[i]) for i, slot in enumerate(slots)]


def _path_index(entry: dict[str, Any], position: int) -> int | None:
    match = _JSON_PATH_INDEX.match(text(_details(entry).get("json_path")))
    return int(match.group(1)) if match else position


def _unknown_channel(channel_id: str, stranger: str) -> ItemResult:
    shown = stranger if len(stranger) <= 64 and stranger.isprintable() else repr(stranger[:64])
    return ItemResult(
        channel_id,
        ok=False,
        code=UNKNOWN_CHANNEL,
        message=f"Zoho's answer named channel {shown}, which this request did not send",
    )


def _channel_ids_in(details: dict[str, Any]) -> Iterator[str]:
    events = details.get("events")
    if isinstance(events, list):
        for event in events:
            if isinstance(event, dict):
                yield text(event.get("channel_id"))
    yield text(details.get("channel_id"))


# -- delete answers ------------------------------------------------------------------------------


def map_delete_results(channel_ids: Sequence[str], watch: list[Any], now: datetime) -> list[ItemResult]:
    """DELETE answers one item per (channel, module); NOT_SUBSCRIBED items name no channel, so a
    requested id without its own item counts as already gone when they are present. An item
    naming an id outside the request makes the answer untrustworthy, as for writes."""
    requested = set(channel_ids)
    succeeded: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    anonymous: list[dict[str, Any]] = []
    for entry in watch:
        if not isinstance(entry, dict):
            continue
        channel_id = text(_details(entry).get("channel_id"))
        if channel_id and channel_id not in requested:
            return [_unknown_channel(asked, channel_id) for asked in channel_ids]
        if not channel_id:
            anonymous.append(entry)
        elif _is_success(entry):
            succeeded.setdefault(channel_id, entry)
        else:
            failed.setdefault(channel_id, entry)
    gone = next((e for e in anonymous if text(e.get("code")) in NOT_FOUND_CODES), None)
    refused = next(
        (e for e in anonymous if not _is_success(e) and text(e.get("code")) not in NOT_FOUND_CODES),
        None,
    )
    results: list[ItemResult] = []
    for channel_id in channel_ids:
        # an anonymous refusal cannot be placed: it must not let any id pass as already gone
        entry = succeeded.get(channel_id) or failed.get(channel_id) or refused or gone
        results.append(_missing(channel_id) if entry is None else _delete_result(channel_id, entry, now))
    return results


def _delete_result(channel_id: str, entry: dict[str, Any], now: datetime) -> ItemResult:
    result = _item_result(channel_id, entry, now)
    if result.code in NOT_FOUND_CODES:  # already gone is what a delete wants
        return ItemResult(channel_id, ok=True, code=result.code, message=result.message)
    return result


# -- one answer item -----------------------------------------------------------------------------


def _item_result(channel_id: str, entry: dict[str, Any], now: datetime) -> ItemResult:
    details = _details(entry)
    ok = _is_success(entry)
    code = text(entry.get("code"))[:MAX_MESSAGE] or ("SUCCESS" if ok else "UNKNOWN")
    message = text(entry.get("message"))[:MAX_MESSAGE]
    if ok:
        return ItemResult(
            channel_id, ok=True, code=code, message=message, expires_at=_earliest(details, now)
        )
    return ItemResult(
        channel_id,
        ok=False,
        code=code,
        message=message,
        api_name=text(details.get("api_name"))[:MAX_MESSAGE] or None,
        json_path=text(details.get("json_path"))[:MAX_MESSAGE] or None,
        details=details,
    )


def _missing(channel_id: str) -> ItemResult:
    return ItemResult(channel_id, ok=False, code="NO_RESULT", message="Zoho's answer had no item for it")


def _earliest(details: dict[str, Any], now: datetime) -> datetime | None:
    """The earliest plausible ``channel_expiry`` over the modules of a success item."""
    events = details.get("events")
    expiries = (
        plausible_instant(event.get("channel_expiry"), now)
        for event in (events if isinstance(events, list) else ())
        if isinstance(event, dict)
    )
    return min(filter(None, expiries), default=None)


def _details(entry: dict[str, Any]) -> dict[str, Any]:
    details = entry.get("details")
    return details if isinstance(details, dict) else {}


def _is_success(entry: dict[str, Any]) -> bool:
    return text(entry.get("status")).lower() == "success"


# -- listing -------------------------------------------------------------------------------------


def listing_page(body: dict[str, Any] | None, where: str) -> tuple[list[Any], bool]:
    """One GET page -> (its rows, whether Zoho says more follow). None (a 204) is an empty end."""
    if body is None:
        return [], False
    rows = watch_list(body, where)
    _, more = page_info(body, where)
    return rows, more and bool(rows)


def page_info(body: dict[str, Any], where: str) -> tuple[dict[str, Any], bool]:
    """A page's ``info`` object and its ``more_records`` (absent: no more), type-checked: a page
    of the watch listing and of the records APIs alike."""
    info = body.get("info", {})
    if not isinstance(info, dict):
        raise TransientError(f"{where}: info is not an object")
    more = info.get("more_records", False)
    if not isinstance(more, bool):
        raise TransientError(f"{where}: info.more_records is not true or false")
    return info, more


class _Merged:
    """What one channel's rows seen so far in a listing make: the first row's fields (not the row,
    whose other keys a listing would otherwise keep for every channel until its last page)."""

    __slots__ = (
        "affected", "channel_id", "condition", "events", "expires_at", "notify_url", "related",
        "token",
    )  # fmt: skip

    def __init__(self, channel_id: str, first: dict[str, Any], expires_at: datetime) -> None:
        self.channel_id = channel_id
        self.notify_url = text(first.get("notify_url"))
        self.token = _str_or_none(first.get("token"))
        self.related = _bool_or_none(first.get("notify_on_related_action"))
        self.affected = _bool_or_none(first.get("return_affected_field_values"))
        self.condition = canonical_json(first.get("notification_condition"))
        self.events: set[Event] = set()
        self.expires_at = expires_at

    def freeze(self) -> ObservedChannel:
        return ObservedChannel(
            channel_id=self.channel_id,
            events=frozenset(self.events),
            notify_url=self.notify_url,
            expires_at=self.expires_at,
            token=self.token,
            notify_on_related_action=self.related,
            return_affected_field_values=self.affected,
            notification_condition=self.condition,
        )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _bool_or_none(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


class _RowReader:
    """Parses each distinct expiry and event string once: they repeat across a listing's rows."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._instants: dict[str, datetime | None] = {}
        self._events: dict[str, frozenset[Event]] = {}

    def expiry(self, value: object) -> datetime | None:
        if not isinstance(value, str):
            return None
        if value not in self._instants:
            self._instants[value] = plausible_instant(value, self._now)
        return self._instants[value]

    def events(self, value: object) -> frozenset[Event]:
        """The events this daemon can express (Module.op); others are left out of the channel."""
        found: set[Event] = set()
        for event in value if isinstance(value, list) else ():
            if not isinstance(event, str):
                continue
            parsed = self._events.get(event)
            if parsed is None:
                parsed = self._events[event] = _events_of(event)
            found |= parsed
        return frozenset(found)


def _events_of(event: str) -> frozenset[Event]:
    try:
        return parse_event(event)
    except EventError:
        return frozenset()


class RowMerger:
    """A listing's rows merged a page at a time, so that a listing holds one small record per
    channel rather than every row of every page (20,000 rows of 10,000 channels were 30 MB at
    their peak, and the heap stayed that size).

    Linear in the rows: events united, the earliest expiry kept. A row without a channel id or a
    plausible expiry (against ``now``, Zoho's clock) makes the whole listing transient: a listing
    decides which channels vanished, so it is used whole or not at all.
    """

    def __init__(self, now: datetime) -> None:
        self._merged: dict[str, _Merged] = {}
        self._reader = _RowReader(now)
        self.rows = 0
        """Rows merged so far (one per channel and module): what a tally compares."""

    def add(self, rows: Iterable[Any]) -> None:
        merged, reader = self._merged, self._reader
        for n, row in enumerate(rows, self.rows):
            if not isinstance(row, dict):
                raise TransientError(f"GET listing: row {n} is not an object")
            channel_id = text(row.get("channel_id"))
            if not channel_id or "channel_expiry" not in row:
                raise TransientError(f"GET listing: row {n} has no channel_id or channel_expiry")
            expires_at = reader.expiry(row["channel_expiry"])
            if expires_at is None:
                raise TransientError(
                    f"GET listing: row {n} has an unreadable or implausible channel_expiry"
                )
            entry = merged.get(channel_id)
            if entry is None:
                entry = merged[channel_id] = _Merged(channel_id, row, expires_at)
            entry.expires_at = min(entry.expires_at, expires_at)
            entry.events |= reader.events(row.get("events"))
            self.rows = n + 1

    def result(self) -> dict[str, ObservedChannel]:
        return {channel_id: entry.freeze() for channel_id, entry in self._merged.items()}
