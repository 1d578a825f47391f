"""The one place that talks to Zoho's ``actions/watch``: list, enable, replace, update, delete.

Every write answers one ItemResult per requested channel, in request order, whatever the HTTP status
(Zoho reports per-item failures inside 200/201/202/207 and sometimes 400 envelopes). Whole-request
failures raise the errors.py class that tells the engine what to do next. Requests are batched
(at most ``max_items`` channels each); when Zoho refuses a batch as too large the size is halved and
remembered, because its documented limit is either 100 or 50.

Zoho's clock is what channel expiries are measured on, so every answer's ``Date`` header refines
the estimate of its skew to ours (``server_now``).

Messages and reprs never carry tokens, secrets or notify_url query values: they name the method,
the path, the status and Zoho's code.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from watchkeeper import __version__
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
from watchkeeper.zoho.answers import json_object, retry_after_seconds
from watchkeeper.zoho.auth import DEFAULT_TIMEOUT, OAuth, StaticToken
from watchkeeper.zoho.errors import (
    AuthError,
    RateLimited,
    RequestRefused,
    TerminalError,
    TransientError,
    ZohoError,
)
from watchkeeper.zoho.regions import Endpoint, check_base_url
from watchkeeper.zoho.results import CallResult

__all__ = ["DEFAULT_TIMEOUT", "MAX_ITEMS", "WatchClient"]

MAX_ITEMS = 100
"""Channels per POST/PUT/PATCH/DELETE (Kaizen #14; the v8 OAS says 50, handled by halving)."""
MAX_TOKEN_LENGTH = 50
MAX_CHANNEL_IDS_CHARS = 512
"""Longest ``channel_ids`` query value (the v8 OAS limit, UNCONFIRMED)."""
PER_PAGE = 200
MAX_PAGES = 1000
"""200,000 rows: a listing that claims more is a server bug, not a reason to loop forever."""
USER_AGENT = f"watchkeeper/{__version__}"
_SKEW_SAMPLES = 16
_JSON_PATH_INDEX = re.compile(r"^\$\.watch\[(\d+)\]")
_COUNT_WORDS = ("limit", "maximum", "exceed", "too many", "more than")

Results = list[ItemResult]
_Unit = TypeVar("_Unit")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _TooManyItems(TerminalError):
    """A whole-request 400 that complains about the number of items: the batch gets halved."""


class WatchClient:
    """actions/watch for one account. Thread-safe for concurrent calls."""

    def __init__(
        self,
        endpoint: Endpoint,
        auth: OAuth | StaticToken,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], datetime] = _utc_now,
        max_items: int = MAX_ITEMS,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        if not 1 <= max_items <= MAX_ITEMS:
            raise ValueError(f"max_items must be between 1 and {MAX_ITEMS}, not {max_items}")
        self._path = endpoint.watch_path
        self._url = check_base_url(endpoint.api_domain, "api_domain") + self._path
        self._auth = auth
        self._owns_http = http is None
        self._http = httpx.Client(timeout=timeout) if http is None else http
        self._clock = clock
        self._timeout = timeout
        self._batch = {"write": max_items, "delete": max_items}
        self._skew = _SkewEstimate()

    def __repr__(self) -> str:
        return f"WatchClient({self._url!r})"

    @property
    def skew(self) -> timedelta:
        """Zoho's clock minus ours (zero until an answer carried a Date header)."""
        return self._skew.value

    def server_now(self) -> datetime:
        return self._clock() + self._skew.value

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # -- listing ---------------------------------------------------------------------------------

    def list(self) -> dict[str, ObservedChannel]:
        """Every live channel, its per-module rows merged (events united, earliest expiry)."""
        rows: list[Any] = []
        page = 1
        while True:
            body = self._request("GET", params={"per_page": PER_PAGE, "page": page})
            if body is None:  # 204: nothing (more) subscribed
                break
            watch = body.get("watch")
            if not isinstance(watch, list):
                raise TransientError(f"GET {self._path}: answer has no watch list (page {page})")
            rows.extend(watch)
            info = body.get("info")
            if not watch or not (isinstance(info, dict) and info.get("more_records") is True):
                break
            if page == MAX_PAGES:
                raise TransientError(
                    f"GET {self._path}: listing still had more_records after {page} pages"
                )
            page += 1
        return merge_rows(rows)

    # -- writes ----------------------------------------------------------------------------------

    def write(self, method: str, items: Sequence[WatchItem], *, should_stop: Any = None) -> CallResult:
        try:
            return CallResult(tuple(self._write(method, items)))
        except ZohoError as exc:
            return CallResult(tuple(exc.completed), exc)

    def delete_ids(self, ids: Sequence[str], *, should_stop: Any = None) -> CallResult:
        try:
            return CallResult(tuple(self.delete(ids)))
        except ZohoError as exc:
            return CallResult(tuple(exc.completed), exc)

    def enable(self, items: Sequence[WatchItem]) -> Results:
        return self._write("POST", items)

    def replace(self, items: Sequence[WatchItem]) -> Results:
        return self._write("PUT", items)

    def update(self, items: Sequence[WatchItem]) -> Results:
        """PATCH with the full item: some versions null an omitted token or require every field."""
        return self._write("PATCH", items)

    def delete(self, channel_ids: Sequence[str]) -> Results:
        ids = [str(channel_id) for channel_id in channel_ids]
        for channel_id in ids:
            if not channel_id or "," in channel_id or len(channel_id) > MAX_CHANNEL_IDS_CHARS:
                raise RequestRefused(f"DELETE {self._path}: channel id {channel_id!r} is not usable")
        return self._batched("delete", ids, self._delete_chunk)

    def _write(self, method: str, items: Sequence[WatchItem]) -> Results:
        bodies = [item_body(item) for item in items]
        seen: set[str] = set()
        for body in bodies:
            if body["channel_id"] in seen:
                raise RequestRefused(f"channel {body['channel_id']}: listed twice in one {method}")
            seen.add(body["channel_id"])
        return self._batched("write", bodies, lambda chunk: self._write_chunk(method, chunk))

    def _batched(
        self, kind: str, units: Sequence[_Unit], send: Callable[[Sequence[_Unit]], Results]
    ) -> Results:
        """Send ``units`` in chunks; a later chunk's failure carries the earlier results along.

        A batch Zoho calls too large is halved and resent; the smaller size is remembered only once
        it has worked, so one odd whole-request error cannot shrink every later batch.
        """
        done: Results = []
        rest = units
        size = self._batch[kind]
        while rest:
            chunk = self._take(kind, rest, size)
            try:
                results = send(chunk)
            except ZohoError as exc:
                if isinstance(exc, _TooManyItems) and len(chunk) > 1:
                    size = len(chunk) // 2
                    continue
                exc.completed = list(done)
                raise
            self._batch[kind] = size
            done.extend(results)
            rest = rest[len(chunk) :]
        return done

    @staticmethod
    def _take(kind: str, rest: Sequence[_Unit], size: int) -> Sequence[_Unit]:
        chunk = rest[:size]
        if kind == "delete":  # keep the joined channel_ids value short too
            length = -1
            for n, channel_id in enumerate(chunk):
                length += len(str(channel_id)) + 1
                if length > MAX_CHANNEL_IDS_CHARS:
                    return chunk[:n]
        return chunk

    def _write_chunk(self, method: str, bodies: Sequence[dict[str, Any]]) -> Results:
        answer = self._request(method, json_body={"watch": list(bodies)})
        watch = None if answer is None else answer.get("watch")
        if not isinstance(watch, list):
            raise TransientError(f"{method} {self._path}: answer has no watch list")
        return map_write_results([body["channel_id"] for body in bodies], watch)

    def _delete_chunk(self, ids: Sequence[str]) -> Results:
        answer = self._request("DELETE", params={"channel_ids": ",".join(ids)})
        watch = None if answer is None else answer.get("watch")
        if not isinstance(watch, list):
            raise TransientError(f"DELETE {self._path}: answer has no watch list")
        return map_delete_results(ids, watch)

    # -- one HTTP exchange -----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """One call, retried once with a fresh token after a 401 (expired token). None for 204."""
        token = self._auth.token()
        response = self._send(method, token, params, json_body)
        if response.status_code == 401 and _whole_request_code(response) != "OAUTH_SCOPE_MISMATCH":
            self._auth.invalidate(token)
            response = self._send(method, self._auth.token(), params, json_body)
        if response.status_code == 401:
            code = _whole_request_code(response)
            raise AuthError(f"{method} {self._path}: HTTP 401 {code}", code=code, status=401)
        return self._classify(method, response, writing=json_body is not None or method == "DELETE")

    def _send(
        self, method: str, token: str, params: dict[str, Any] | None, json_body: dict[str, Any] | None
    ) -> httpx.Response:
        headers = {"Authorization": f"Zoho-oauthtoken {token}", "User-Agent": USER_AGENT}
        sent = self._clock()
        try:
            response = self._http.request(
                method, self._url, params=params, json=json_body, headers=headers, timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            raise TransientError(f"{method} {self._path}: timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:  # transport, decoding (a bad gzip body), protocol errors
            raise TransientError(f"{method} {self._path}: {type(exc).__name__}") from None
        self._skew.observe(response.headers.get("Date"), sent, self._clock())
        return response

    def _classify(
        self, method: str, response: httpx.Response, *, writing: bool
    ) -> dict[str, Any] | None:
        status = response.status_code
        where = f"{method} {self._path}: HTTP {status}"
        if status == 429:
            wait = retry_after_seconds(response, self.server_now())
            raise RateLimited(
                f"{where} too many requests",
                code=_whole_request_code(response),
                status=status,
                retry_after=wait,
            )
        if not 200 <= status < 500:
            wait = retry_after_seconds(response, self.server_now())
            trouble = "server error" if status >= 500 else "unexpected status"
            raise TransientError(f"{where} {trouble}", status=status, retry_after=wait)
        if status == 204:
            return None
        body = json_object(response, where)
        if status < 300 or (writing and isinstance(body.get("watch"), list)):
            return body  # per-item answers, even inside a 4xx envelope
        code = _str(body.get("code")) or "UNKNOWN"
        message = _str(body.get("message"))[:200]
        error = _TooManyItems if status == 400 and _complains_about_count(body) else TerminalError
        raise error(f"{where} {code}: {message}", code=code, status=status)


# -- pure helpers (no I/O) -------------------------------------------------------------------------


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
        if op not in OPS:
            raise RequestRefused(f"channel {channel_id}: event {module}.{op} is not Module.op")
        try:
            parse_event(f"{module}.{op}")
        except EventError:
            raise RequestRefused(f"channel {channel_id}: event {module}.{op} is not Module.op") from None
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


def map_write_results(channel_ids: Sequence[str], watch: list[Any]) -> Results:
    """Zoho's ``watch[]`` answer -> one result per requested channel, in request order.

    A success item names its channel (details.events[].channel_id); an error item is placed by its
    json_path ``$.watch[i]``, its details.channel_id, or else its position.
    """
    index = {channel_id: i for i, channel_id in enumerate(channel_ids)}
    slots: list[ItemResult | None] = [None] * len(channel_ids)
    for position, entry in enumerate(watch):
        if not isinstance(entry, dict):
            continue
        for i in (_named_index(entry, index), position):
            if i is not None and i < len(slots) and slots[i] is None:
                slots[i] = _item_result(channel_ids[i], entry)
                break
    return [slot if slot is not None else _missing(channel_ids[i]) for i, slot in enumerate(slots)]


def map_delete_results(channel_ids: Sequence[str], watch: list[Any]) -> Results:
    """DELETE answers one item per (channel, module); NOT_SUBSCRIBED items name no channel, so a
    requested id without its own item counts as already gone when they are present."""
    succeeded: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    anonymous: list[dict[str, Any]] = []
    for entry in watch:
        if not isinstance(entry, dict):
            continue
        channel_id = _str(_details(entry).get("channel_id"))
        if not channel_id:
            anonymous.append(entry)
        elif _is_success(entry):
            succeeded.setdefault(channel_id, entry)
        else:
            failed.setdefault(channel_id, entry)
    gone = [e for e in anonymous if _str(e.get("code")) in NOT_FOUND_CODES]
    refused = [e for e in anonymous if not _is_success(e) and _str(e.get("code")) not in NOT_FOUND_CODES]
    results: Results = []
    for channel_id in channel_ids:
        entry = succeeded.get(channel_id) or failed.get(channel_id)
        if entry is None and refused:
            entry = refused[0]  # cannot tell which id it was about: do not claim any as deleted
        if entry is None and gone:
            entry = gone[0]
        results.append(_missing(channel_id) if entry is None else _delete_result(channel_id, entry))
    return results


def _delete_result(channel_id: str, entry: dict[str, Any]) -> ItemResult:
    result = _item_result(channel_id, entry)
    if result.code in NOT_FOUND_CODES:  # already gone is what a delete wants
        return ItemResult(channel_id, ok=True, code=result.code, message=result.message)
    return result


def _item_result(channel_id: str, entry: dict[str, Any]) -> ItemResult:
    details = _details(entry)
    ok = _is_success(entry)
    code = _str(entry.get("code")) or ("SUCCESS" if ok else "UNKNOWN")
    message = _str(entry.get("message"))
    if ok:
        return ItemResult(channel_id, ok=True, code=code, message=message, expires_at=_earliest(details))
    return ItemResult(
        channel_id,
        ok=False,
        code=code,
        message=message,
        api_name=_str(details.get("api_name")) or None,
        json_path=_str(details.get("json_path")) or None,
        details=details,
    )


def _missing(channel_id: str) -> ItemResult:
    return ItemResult(channel_id, ok=False, code="NO_RESULT", message="Zoho's answer had no item for it")


def _named_index(entry: dict[str, Any], index: dict[str, int]) -> int | None:
    details = _details(entry)
    match = _JSON_PATH_INDEX.match(_str(details.get("json_path")))
    if match:
        return int(match.group(1))
    for named in _channel_ids_in(details):
        if named in index:
            return index[named]
    return None


def _channel_ids_in(details: dict[str, Any]) -> Iterator[str]:
    events = details.get("events")
    if isinstance(events, list):
        for event in events:
            if isinstance(event, dict):
                yield _str(event.get("channel_id"))
    yield _str(details.get("channel_id"))


def _earliest(details: dict[str, Any]) -> datetime | None:
    """The earliest ``channel_expiry`` over the modules of a success item."""
    events = details.get("events")
    expiries = []
    if isinstance(events, list):
        for event in events:
            text = event.get("channel_expiry") if isinstance(event, dict) else None
            if isinstance(text, str):
                try:
                    expiries.append(parse_instant(text))
                except ValueError:
                    continue
    return min(expiries, default=None)


def _details(entry: dict[str, Any]) -> dict[str, Any]:
    details = entry.get("details")
    return details if isinstance(details, dict) else {}


def _is_success(entry: dict[str, Any]) -> bool:
    return _str(entry.get("status")).lower() == "success"


def _str(value: object) -> str:
    """Zoho mixes strings and numbers for ids; None and other shapes become ""."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def _whole_request_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "UNKNOWN"
    return (_str(body.get("code")) if isinstance(body, dict) else "") or "UNKNOWN"


def _complains_about_count(body: dict[str, Any]) -> bool:
    """Whether a whole-request 400 is about the number of items (Zoho's wording is unknown)."""
    text = " ".join(
        (_str(body.get("code")), _str(body.get("message")), json.dumps(body.get("details"), default=str))
    ).lower()
    return any(word in text for word in _COUNT_WORDS)


class _Merged:
    """The rows of one channel seen so far in a listing."""

    __slots__ = ("events", "expires_at", "first")

    def __init__(self, first: dict[str, Any], expires_at: datetime) -> None:
        self.first = first
        self.events: set[Event] = set()
        self.expires_at = expires_at

    def freeze(self) -> ObservedChannel:
        row = self.first
        related = row.get("notify_on_related_action")
        affected = row.get("return_affected_field_values")
        token = row.get("token")
        return ObservedChannel(
            channel_id=_str(row.get("channel_id")),
            events=frozenset(self.events),
            notify_url=_str(row.get("notify_url")),
            expires_at=self.expires_at,
            token=token if isinstance(token, str) else None,
            notify_on_related_action=related if isinstance(related, bool) else None,
            return_affected_field_values=affected if isinstance(affected, bool) else None,
            notification_condition=canonical_json(row.get("notification_condition")),
        )


def merge_rows(rows: Iterable[Any]) -> dict[str, ObservedChannel]:
    """GET rows (one per channel and module) -> one ObservedChannel per channel id.

    Linear in the rows; expiry and event strings repeat across rows, so each distinct one is parsed
    once. Events this daemon cannot express (not Module.op) are left out of the channel.
    """
    merged: dict[str, _Merged] = {}
    instants: dict[str, datetime] = {}
    known_events: dict[str, frozenset[Event]] = {}
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TransientError(f"GET listing: row {n} is not an object")
        channel_id = _str(row.get("channel_id"))
        text = row.get("channel_expiry")
        if not channel_id or not isinstance(text, str):
            raise TransientError(f"GET listing: row {n} has no channel_id or channel_expiry")
        expires_at = instants.get(text)
        if expires_at is None:
            try:
                expires_at = instants[text] = parse_instant(text)
            except ValueError:
                raise TransientError(f"GET listing: row {n} has an unreadable channel_expiry") from None
        entry = merged.get(channel_id)
        if entry is None:
            entry = merged[channel_id] = _Merged(row, expires_at)
        elif expires_at < entry.expires_at:
            entry.expires_at = expires_at
        events = row.get("events")
        for event in events if isinstance(events, list) else ():
            parsed = known_events.get(event) if isinstance(event, str) else frozenset()
            if parsed is None:
                try:
                    parsed = parse_event(event)
                except EventError:
                    parsed = frozenset()
                known_events[event] = parsed
            entry.events |= parsed
    return {channel_id: entry.freeze() for channel_id, entry in merged.items()}


class _SkewEstimate:
    """Zoho's clock minus ours, from ``Date`` headers.

    A Date has one-second resolution and was stamped somewhere between our send and receive, so
    each answer only bounds the skew to [Date - received, Date + 1 s - sent]. Intersecting the
    bounds of recent answers narrows that well below a second; an answer that contradicts them
    (a clock was stepped) starts the estimate afresh from itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bounds: deque[tuple[float, float]] = deque(maxlen=_SKEW_SAMPLES)
        self.value = timedelta(0)

    def observe(self, date_header: str | None, sent: datetime, received: datetime) -> None:
        if not date_header:
            return
        try:
            date = parsedate_to_datetime(date_header)
        except (TypeError, ValueError):
            return
        if date.tzinfo is None:
            date = date.replace(tzinfo=UTC)
        low = (date - received).total_seconds()
        high = (date - sent).total_seconds() + 1.0
        with self._lock:
            self._bounds.append((low, high))
            for older_low, older_high in reversed(list(self._bounds)[:-1]):
                if max(low, older_low) > min(high, older_high):
                    break
                low, high = max(low, older_low), min(high, older_high)
            self.value = timedelta(seconds=(low + high) / 2)
